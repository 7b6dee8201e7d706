"""The job path's logic, in process, with the shipped FakeBackend and an in-memory sink (no podman, no Redis).

The same behaviour is exercised for real (rootless podman, bubblewrap, Redis, the CLI as srunner) in
test_job_path.py; these tests pin the runner's contract cheaply: one terminal status, the work dir files, errors.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from support.jobs import make_job

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.policy.network import node_network, this_node
from sandbox_runner.testing import fake_runner

#: in the runner's environment, so tests can check it never reaches the work dir or a status document
SECRETS = {"SECRET_TOKEN": "hunter2"}


def test_completed_job_writes_the_hysds_work_dir(tmp_path: Path) -> None:
    backend = FakeBackend(stdout="hello world\n")
    runner, sink = fake_runner(tmp_path / "work", backend, env=SECRETS)
    job = make_job("/bin/echo hello world")
    outcome = runner.run(job)
    assert outcome.status == "job-completed" and outcome.exit_code == 0
    jd = outcome.job_dir
    assert jd is not None and jd.parent.parent.parent.parent.parent.parent.name == "jobs"
    assert jd.name == job["job_id"]
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    assert (jd / "_stdout.txt").read_text() == "hello world\n"
    assert (jd / "_exit_code").read_text().strip() == "0"
    info = json.loads((jd / "_job.json").read_text())["job_info"]
    for key in ("job_dir", "time_start", "cmd_start", "cmd_end", "cmd_duration", "time_end", "duration",
                "metrics", "pid"):
        assert key in info, key
    assert info["status"] == 0
    context = json.loads((jd / "_context.json").read_text())
    assert context["_prov"] == {"wasGeneratedBy": f"task_id:{job['task_id']}"}
    assert context["_command"] == "/bin/echo hello world"
    run_sh = (jd / "_run.sh").read_text()
    assert os.stat(jd / "_run.sh").st_mode & stat.S_IXUSR
    assert "hunter2" not in run_sh and "SECRET_TOKEN" not in run_sh
    assert backend.calls[0].argv == ("/bin/echo", "hello", "world")
    assert sink.status_history() == ["job-started", "job-completed"]
    assert [d.get("type") for d in sink.docs()] == ["sr_test", "job_info", "sr_test"]
    assert sink.statuses[job["task_id"]] == "job-completed"


def test_nonzero_exit_fails_once_and_keeps_exit_code(tmp_path: Path) -> None:
    runner, sink = fake_runner(tmp_path / "work", FakeBackend(exit_code=3), env=SECRETS)
    outcome = runner.run(make_job("/bin/false"))
    doc = sink.terminal()
    assert outcome.status == doc["status"] == "job-failed"
    assert doc["error"] == "Got non-zero exit code: 3"
    assert doc["short_error"] == "Got non-zero exit code: 3"
    assert outcome.job_dir is not None and (outcome.job_dir / "_exit_code").read_text().strip() == "3"
    assert json.loads((outcome.job_dir / "_job.json").read_text())["job_info"]["status"] == 3


def test_alt_error_written_by_the_job_overrides_the_error(tmp_path: Path) -> None:
    def pge(spec: ContainerSpec, io: JobIO) -> int:
        Path(spec.workdir, "_alt_error.txt").write_text("PGE: granule has no valid pixels\n")
        Path(spec.workdir, "_alt_traceback.txt").write_text("Traceback: pge.py line 3\n")
        return 2

    runner, sink = fake_runner(tmp_path / "work", FakeBackend(script=pge), env=SECRETS)
    runner.run(make_job("/run_pge.sh"))
    doc = sink.terminal()
    assert doc["error"] == "PGE: granule has no valid pixels"
    assert doc["traceback"] == "Traceback: pge.py line 3"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (make_job("/bin/true") | {"job_info": {"dedup": False}}, "payload_hash"),
        (make_job("/bin/true", params={"_command": "/bin/true", "_disk_usage": "1.5XB"}), "1.5XB"),
        (make_job("/bin/true", params={"localize_urls": []}), "HYSDS_WORKER_CFG"),
    ],
    ids=["malformed-json", "not-an-object", "missing-field", "bad-disk-usage", "no-command"],
)
def test_bad_input_ends_as_exactly_one_job_failed(tmp_path: Path, raw: Any, needle: str) -> None:
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend, env=SECRETS)
    outcome = runner.run(json.dumps(raw) if not isinstance(raw, str) else raw)
    doc = sink.terminal()
    assert doc["status"] == outcome.status == "job-failed"
    assert needle in doc["error"], doc["error"]
    assert "Traceback" not in doc["error"]
    assert backend.calls == []


def test_unknown_job_type_in_worker_config(tmp_path: Path) -> None:
    cfg = tmp_path / "worker.json"
    cfg.write_text(json.dumps({"configs": [{"type": "other", "command": {"path": "/bin/true"}}]}))
    runner, sink = fake_runner(tmp_path / "work", FakeBackend(), env={**SECRETS, "HYSDS_WORKER_CFG": str(cfg)})
    runner.run(make_job("/bin/true"))
    assert "sr_test" in sink.terminal()["error"]


def test_worker_config_wins_and_substitutes_params(tmp_path: Path) -> None:
    cfg = tmp_path / "worker.json"
    cfg.write_text(json.dumps({"configs": [{"type": "sr_test", "command": {
        "path": "/bin/echo", "options": ["-n"], "arguments": ["$echo_var", "$files"],
        "env": [{"key": "MODE", "value": "fast"}]}}]}))
    backend = FakeBackend()
    runner, _ = fake_runner(tmp_path / "work", backend, env={**SECRETS, "HYSDS_WORKER_CFG": str(cfg)})
    job = make_job("/bin/ignored")
    job["params"].update({"echo_var": "hi there", "files": ["a", "b"]})
    assert runner.run(job).ok
    spec = backend.calls[0]
    assert spec.argv == ("/bin/echo", "-n", "hi there", "a", "b")
    assert dict(spec.env) == {"MODE": "fast"}


def test_unknown_pre_step_fails_before_anything_runs(tmp_path: Path) -> None:
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend, env=SECRETS)
    job = make_job("/bin/true")
    job["params"]["job_specification"]["pre"] = ["some.python.preprocessor.function"]
    outcome = runner.run(job)
    assert "some.python.preprocessor.function" in sink.terminal()["error"]
    assert outcome.job_dir is None and backend.calls == []


def test_hysds_step_names_resolve_to_ours(tmp_path: Path) -> None:
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env=SECRETS)
    job = make_job("/bin/true")
    job["params"]["job_specification"].update({
        "disable_pre_builtins": True, "pre": ["hysds.localize.localize_urls_parallel"],
        "disable_post_builtins": True, "post": ["hysds.dataset_ingest_bulk.publish_datasets_parallel"]})
    assert runner.run(job).ok


def test_step_bug_still_closes_the_job(tmp_path: Path) -> None:
    def crash(spec: ContainerSpec, io: JobIO) -> int:
        raise ZeroDivisionError("boom")

    runner, sink = fake_runner(tmp_path / "work", FakeBackend(script=crash), env=SECRETS)
    outcome = runner.run(make_job("/bin/true"))
    doc = sink.terminal()
    assert doc["error"].startswith("internal error: ZeroDivisionError")
    assert "Traceback" in doc["traceback"]
    assert outcome.job_dir is not None and (outcome.job_dir / ".done").exists()
    assert (outcome.job_dir / "_exit_code").read_text().strip() == "1"


def test_interrupt_from_another_thread_gives_its_own_status(tmp_path: Path) -> None:
    holder: dict[str, JobRunner] = {}

    def sleeper(spec: ContainerSpec, io: JobIO) -> int:
        assert holder["runner"].interrupt("job-terminated", "caught signal 15", 15)
        io.cancel.wait(5)
        return 143

    runner, sink = fake_runner(tmp_path / "work", FakeBackend(script=sleeper), env=SECRETS)
    holder["runner"] = runner
    outcome = runner.run(make_job("/bin/sleep 600"))
    doc = sink.terminal()
    assert outcome.status == doc["status"] == "job-terminated" and doc["signum"] == 15
    assert outcome.job_dir is not None and (outcome.job_dir / ".done").exists()


def test_dry_run_plans_without_side_effects(tmp_path: Path) -> None:
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend, env=SECRETS)
    spec = runner.plan(make_job("/bin/echo hi"))
    assert spec.argv == ("/bin/echo", "hi") and spec.network == node_network(*this_node())[0]
    assert spec.labels["sandbox_runner.network"].startswith(f"{spec.network}: ")
    assert spec.labels["sandbox_runner.job_id"].startswith("sr_test-")
    assert sink.docs() == [] and backend.calls == [] and not (tmp_path / "work" / "jobs").exists()


def test_vars_expand_from_the_settings_environment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_IN_OS_ENVIRON", "leaked")
    cfg = tmp_path / "worker.json"
    env = [{"key": "A", "value": "$SITE_DIR/x"}, {"key": "B", "value": "$ONLY_IN_OS_ENVIRON"}]
    cfg.write_text(json.dumps({"configs": [{"type": "sr_test", "command": {"path": "/bin/true", "env": env}}]}))
    backend = FakeBackend()
    runner_env = {**SECRETS, "HYSDS_WORKER_CFG": str(cfg), "SITE_DIR": "/site"}
    runner, _ = fake_runner(tmp_path / "work", backend, env=runner_env)
    job = make_job("/bin/true", runtime_options={"shm_size": "${SITE_DIR}"})
    assert runner.run(job).ok
    spec = backend.calls[0]
    assert dict(spec.env) == {"A": "/site/x", "B": "$ONLY_IN_OS_ENVIRON"}
    assert spec.runtime_options["shm_size"] == "/site"


def test_failed_documents_carry_dedup_job_null_and_expected_failures_keep_their_message(tmp_path: Path) -> None:
    runner, sink = fake_runner(tmp_path / "work", FakeBackend(exit_code=3), env=SECRETS)
    runner.run(make_job("/bin/false"))
    doc = sink.terminal()
    assert "dedup_job" in doc and doc["dedup_job"] is None
    assert doc["traceback"] == "Got non-zero exit code: 3"  # expected: the message, as HySDS's expected failures


def test_translated_foreign_error_sends_its_real_traceback(tmp_path: Path) -> None:
    from sandbox_runner.errors import BackendError

    def engine_breaks(spec: ContainerSpec, io: JobIO) -> int:
        try:
            os.stat(Path(spec.workdir, "no-such-file"))
        except OSError as exc:
            raise BackendError(f"engine failed: {exc.strerror}") from None
        return 0

    runner, sink = fake_runner(tmp_path / "work", FakeBackend(script=engine_breaks), env=SECRETS)
    runner.run(make_job("/bin/true"))
    doc = sink.terminal()
    assert doc["error"] == "engine failed: No such file or directory" and doc["dedup_job"] is None
    assert doc["traceback"].startswith("Traceback (most recent call last)")
    assert "FileNotFoundError" in doc["traceback"] and "BackendError: engine failed" in doc["traceback"]
    assert sink.docs()[0]["status"] == "job-started" and "dedup_job" not in sink.docs()[0]


def test_documents_carry_the_whole_context_and_host_facts(tmp_path: Path) -> None:
    def pge(spec: ContainerSpec, io: JobIO) -> int:  # a PGE adds to its context, as HySDS re-reads it after
        path = Path(spec.workdir, "_context.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), "pge_added": 7}))
        return 0

    runner, sink = fake_runner(tmp_path / "work", FakeBackend(script=pge), env=SECRETS)
    job = make_job("/run_pge.sh")
    job["context"] = {"site": "x"}
    outcome = runner.run(job)
    assert outcome.job_dir is not None
    started, done = [d for d in sink.docs() if d.get("resource") == "job"]
    written = json.loads((outcome.job_dir / "_context.json").read_text())
    assert started["job"]["context"]["_prov"] == written["_prov"] and started["job"]["context"]["context"] == {
        "site": "x"}
    assert written["pge_added"] == 7 and {k: done["job"]["context"].get(k) for k in written} == written
    assert "context" not in done  # HySDS drops the top-level copy (HC-598)
    info = done["job"]["job_info"]
    assert isinstance(info["facts"], dict) and info["facts"]["hysds_execute_node"] == info["execute_node"]
    assert info["public_ip"] == info["facts"]["hysds_public_ip"] and isinstance(info["public_ip"], str)
    assert info["facts"]["processorcount"] == os.cpu_count()
    job_info_doc = next(d for d in sink.docs() if d.get("type") == "job_info")
    assert job_info_doc["job"]["job_info"]["facts"] == info["facts"]
