"""triage, and the data steps through the whole runner: localize -> command (fake backend) -> publish / triage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from support.corpus import corpus_file
from support.data_fixtures import events
from support.jobs import make_job
from support.servers import FileServer

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.data.localize import steps as localize
from sandbox_runner.data.publish import steps as publish
from sandbox_runner.data.triage import bundle
from sandbox_runner.data.triage import steps as triage_step
from sandbox_runner.data.triage.steps import triage
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.job.steps import registry
from sandbox_runner.models import load_job_spec
from sandbox_runner.redact import redact_text, redact_url
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, fake_runner

OPERA_SPEC = "nasa__opera-sds-pcm__job-spec.json.SCIFLO_L3_DSWx_HLS"  # in the reference corpus
SECRETS = ("hunter2", "s3cr3t-value-42", "deadbeefsig", "AKIAEXAMPLEKEY")


def _datasets(pub: Path) -> dict[str, Any]:
    return {"datasets": [
        {"ipath": "hysds::data/hello", "level": "l0", "type": "hello",
         "match_pattern": r"/(?P<id>HELLO_\d+)$", "publish": {"location": f"file://{pub}/hello/{{id}}"}},
        {"ipath": "hysds::data/triaged_job", "level": "NA", "type": "triaged_job",
         "match_pattern": r"/(?P<id>triaged_job-.+)$", "publish": {"location": f"file://{pub}/triage/{{id}}"}},
    ]}


def _runner(tmp_path: Path, backend: FakeBackend, *, datasets: bool = True,
            worker_env: list[dict[str, str]] | None = None) -> tuple[JobRunner, CapturedEvents]:
    env = {"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "SANDBOX_RUNNER_TRANSFER_BACKOFF": "0.05",
           "SANDBOX_RUNNER_PROGRESS": "never", "SECRET_TOKEN": "hunter2", "MY_KEY": "s3cr3t-value-42",
           "HOME": str(tmp_path)}
    if datasets:
        (tmp_path / "datasets.json").write_text(json.dumps(_datasets(tmp_path / "pub")))
        env["HYSDS_DATASETS_CFG"] = str(tmp_path / "datasets.json")
    if worker_env is not None:
        cfg = {"configs": [{"type": "sr_test", "command": {"path": "/bin/pge", "options": [], "arguments": [],
                                                            "env": worker_env}}]}
        (tmp_path / "worker.json").write_text(json.dumps(cfg))
        env["HYSDS_WORKER_CFG"] = str(tmp_path / "worker.json")
    settings = load_settings(env, min_free_percent=0.0, backend="fake")
    return fake_runner(backend=backend, settings=settings)


def _all_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


def test_job_localizes_runs_and_publishes_its_dataset(tmp_path: Path, http: FileServer) -> None:
    data = b"granule bytes\n" * 1000
    url = http.put_file("granule.txt", data, sidecars=("sha256",))

    def pge(spec: ContainerSpec, io: JobIO) -> int:
        wd = Path(spec.workdir)
        out = wd / "HELLO_1"
        out.mkdir()
        (out / "HELLO_1.dataset.json").write_text('{"version": "v1"}')
        (out / "summary.txt").write_text(str(len((wd / "in" / "granule.txt").read_bytes())))
        return 0

    runner, sink = _runner(tmp_path, FakeBackend(script=pge))
    job = make_job("/bin/pge", image=None, localize_urls=[{"url": url, "local_path": "in/"},
                                                          {"url": url + ".sha256", "local_path": "in/"}])
    outcome = runner.run(job)
    assert outcome.ok, outcome.error
    assert (tmp_path / "pub" / "hello" / "HELLO_1" / "summary.txt").read_text() == str(len(data))
    info = json.loads((outcome.job_dir / "_job.json").read_text())["job_info"]
    sidecar = (http.root / "granule.txt.sha256").stat().st_size
    assert [m["disk_usage"] for m in info["metrics"]["inputs_localized"]] == [len(data), sidecar]
    assert [m["id"] for m in info["metrics"]["products_staged"]] == ["HELLO_1"]
    assert [d["id"] for d in json.loads((outcome.job_dir / "_datasets.json").read_text())] == ["HELLO_1"]
    assert [d["event"]["id"] for d in sink.docs() if d.get("type") == "dataset-published"] == ["HELLO_1"]
    assert not (tmp_path / "pub" / "triage").exists()  # a job that worked is not triaged


def test_failed_job_is_triaged_without_secrets(tmp_path: Path, http: FileServer) -> None:
    url = http.put_file("in.txt", b"input")
    authed = url.replace("http://", "http://alice:hunter2@") + "?X-Amz-Signature=deadbeefsig"

    def pge(spec: ContainerSpec, io: JobIO) -> int:
        with open(io.stdout, "a") as fh:  # a careless PGE echoing its environment and inputs
            fh.write(f"key={spec.env['MY_KEY']} url={authed}\naws_secret_access_key = AKIAEXAMPLEKEY\n")
        Path(spec.workdir, "pge.log").write_text("traceback: it broke\n")
        return 3

    runner, sink = _runner(tmp_path, FakeBackend(script=pge),
                           worker_env=[{"key": "MY_KEY", "value": "s3cr3t-value-42"}])
    job = make_job("/bin/pge", localize_urls=[{"url": authed, "local_path": "in.txt"}])  # with an image
    outcome = runner.run(job)
    assert outcome.status == "job-failed" and outcome.exit_code == 3
    tid = f"triaged_job-{job['job_id']}_task-{job['task_id']}"
    published = tmp_path / "pub" / "triage" / tid
    names = {p.name for p in published.iterdir()}
    assert {"_stdout.txt", "_stderr.txt", "_job.json", "_context.json", "_exit_code", "_run.sh", "pge.log",
            f"{tid}.dataset.json", f"{tid}.met.json", "_failure.txt"} <= names
    assert "it broke" in (published / "pge.log").read_text()
    assert "non-zero exit code: 3" in (published / "_failure.txt").read_text()
    text = _all_text(published) + _all_text(outcome.job_dir / tid)
    for secret in SECRETS:
        assert secret not in text, secret
    # the keys stay, the values do not
    assert "MY_KEY" in (published / "_docker_params.json").read_text()
    assert "MY_KEY=" in (published / "_run.sh").read_text()
    triaged = json.loads((outcome.job_dir / "_triaged.json").read_text())
    assert triaged["id"] == tid and triaged["dataset_type"] == "triaged_job"
    assert [d["event"]["id"] for d in sink.docs() if d.get("type") == "dataset-published"] == [tid]


def test_pre_step_failure_is_triaged_with_its_reason(tmp_path: Path, http: FileServer) -> None:
    url = http.put_file("bad.bin", b"x" * 4096, sidecars=("md5",), wrong=True)
    runner, _ = _runner(tmp_path, FakeBackend())
    job = make_job("/bin/pge", image=None, localize_urls=[{"url": url}, {"url": url + ".md5"}])
    outcome = runner.run(job)
    assert outcome.status == "job-failed" and "checksum mismatch for bad.bin" in (outcome.error or "")
    (bundle_dir,) = (tmp_path / "pub" / "triage").iterdir()
    assert "checksum mismatch for bad.bin" in (bundle_dir / "_failure.txt").read_text()


def test_triage_disabled_per_job_and_default_off_for_success(make_ctx, tmp_path: Path) -> None:
    ctx = make_ctx(datasets=_datasets(tmp_path / "pub"), context={"_triage_disabled": True})
    ctx.job_info["status"] = 1
    triage(ctx)
    assert not (tmp_path / "pub").exists() and not list(ctx.job_dir.glob("triaged_job-*"))
    ok = make_ctx(datasets=_datasets(tmp_path / "pub"))
    ok.job_info["status"] = 0
    triage(ok)
    assert not (ok.job_dir / "_triaged.json").exists()


def test_triage_without_a_datasets_entry_stays_local(make_ctx) -> None:
    ctx = make_ctx(datasets={"datasets": [{"ipath": "a/b", "level": "l", "type": "t", "match_pattern": "/X$"}]})
    ctx.job_info["status"] = 2
    (ctx.job_dir / "_stderr.txt").write_text("boom\n")
    triage(ctx)
    (ev,) = events(ctx, "triage")
    assert ev["status"] == "unpublished" and "no datasets.json entry matches" in ev["event"]["reason"]
    bundle_dir = Path(ev["event"]["path"])
    assert (bundle_dir / "_stderr.txt").read_text() == "boom\n"
    assert json.loads((ctx.job_dir / "_triaged.json").read_text())["published"] is False


def test_triage_id_format_globs_and_huge_logs(make_ctx, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bundle, "MAX_FILE", 64 * 1024)
    ctx = make_ctx(datasets=_datasets(tmp_path / "pub"), job_id="myjob", type="../evil",
                   context={"_triage_id_format": "triaged_job-{job_id}-{job[type]}_task-x",
                            "_triage_additional_globs": ["work/*.txt", "../../*"]})
    ctx.job_info["status"] = 1
    (ctx.job_dir / "work").mkdir()
    (ctx.job_dir / "work" / "note.txt").write_text("extra")
    (ctx.job_dir / "_stdout.txt").write_bytes(b"HEAD\n" + b"x" * 500_000 + b"\nTAIL\n")
    (ctx.job_dir / "_link").symlink_to("/etc/hostname")
    triage(ctx)
    tid = "triaged_job-myjob-.._evil_task-x"  # one path component, whatever the job holds
    out = tmp_path / "pub" / "triage" / tid
    stdout = (out / "_stdout.txt").read_bytes()
    assert stdout.startswith(b"HEAD\n") and stdout.endswith(b"TAIL\n") and len(stdout) < 70 * 1024
    assert b"bytes omitted by sandbox-runner triage" in stdout
    assert (out / "work" / "note.txt").read_text() == "extra"
    assert not (out / "_link").exists() and "_link" in (out / "_triage_skipped.txt").read_text()


def test_redactor_by_structure_pattern_and_value() -> None:
    r = bundle.Redactor(["supersecretvalue", "1"])
    doc = {"env": {"A": "x"}, "command": {"env": [{"key": "B", "value": "y"}]}, "e": {"env": ["C=z"]},
           "url": "https://u:p@h/x?token=t&a=1", "note": "has supersecretvalue inside", "n": "1"}
    out = r.obj(doc)
    assert out["env"] == {"A": "REDACTED"} and out["command"]["env"] == [{"key": "B", "value": "REDACTED"}]
    assert out["e"]["env"] == ["C=REDACTED"] and out["url"] == "https://u:REDACTED@h/x?token=REDACTED&a=1"
    assert out["note"] == "has REDACTED inside" and out["n"] == "1"  # short values are not hunted


def test_opera_job_spec_resolves_to_our_steps() -> None:
    path = corpus_file(OPERA_SPEC)  # names HySDS's *_parallel localize/publish steps
    spec = load_job_spec(path.read_bytes(), source=path.name)
    pre, post = registry.plan_steps(spec, kind="pre"), registry.plan_steps(spec, kind="post")
    assert pre == ["localize_urls", "mark_localized_datasets", "validate_checksum_files"]
    assert post == ["publish_datasets", "triage"]
    funcs = [registry.load(n) for n in pre + post]
    assert funcs == [localize.localize_urls, localize.mark_localized_datasets, localize.validate_checksum_files,
                     publish.publish_datasets, triage_step.triage]


def test_default_post_steps_include_triage() -> None:
    assert registry.plan_steps(None, kind="post") == ["publish_datasets", "triage"]


def test_sha256_of_sidecar_matches_servers_helper(http: FileServer) -> None:
    http.put_file("s.bin", b"abc", sidecars=("sha256",))
    assert (http.root / "s.bin.sha256").read_text().split()[0] == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://alice:hunter2@h/x", "https://alice:REDACTED@h/x"),
    ("https://ghp_token123@github.com/o/r", "https://REDACTED@github.com/o/r"),
    ("s3://b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA%2F1&part=2",
     "s3://b/k?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&part=2"),
    ("http://h/plain?x=1", "http://h/plain?x=1"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"fetching {url} now") == f"fetching {shown} now"
