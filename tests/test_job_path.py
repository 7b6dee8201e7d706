"""The job path end to end, for real: the CLI running as the unprivileged user ``srunner``, its rootless
Podman service (or bubblewrap), and a real Redis receiving the msgpack status documents."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from support.jobs import make_job, read_status_list, write_job
from support.machine import BUSYBOX, Worker

from sandbox_runner.events.documents import TERMINAL_STATUSES

BACKENDS = ["podman", "subprocess"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, worker: Worker) -> str:
    if request.param == "podman":
        request.getfixturevalue("podman_ready")
    return str(request.param)


def run_job(worker: Worker, job: dict[str, Any] | str, shared_dir: Path, work_root: Path, redis_url: str,
            status_key: str, backend: str, **env: str) -> tuple[Any, list[dict[str, Any]]]:
    path = write_job(shared_dir, job)
    proc = worker.run(
        ["sandbox-runner", "run-job", str(path), "--backend", backend],
        env=worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
                       SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
                       SECRET_TOKEN="hunter2", **env),
    )
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    return proc, read_status_list(redis_url, status_key)


def job_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("resource") == "job"]


def terminal(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in job_docs(docs) if d["status"] in TERMINAL_STATUSES]
    assert len(found) == 1, [d["status"] for d in job_docs(docs)]
    return found[0]


def job_dir_of(docs: list[dict[str, Any]]) -> Path:
    return Path(terminal(docs)["job"]["job_info"]["job_dir"])


def image_for(backend: str) -> str | None:
    return BUSYBOX if backend == "podman" else None


def test_echo_job(worker: Worker, backend: str, shared_dir: Path, work_root: Path, redis_url: str,
                  status_key: str) -> None:
    job = make_job("echo hello world", image=image_for(backend))
    proc, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [d["status"] for d in job_docs(docs)] == ["job-started", "job-completed"]
    assert [d["type"] for d in docs] == ["sr_test", "job_info", "sr_test"]
    done = terminal(docs)
    for field in ("uuid", "job_id", "payload_id", "payload_hash", "dedup", "status", "job", "celery_hostname",
                  "@timestamp", "resource", "type"):
        assert field in done, field
    assert done["uuid"] == job["task_id"] and done["payload_id"] == job["job_info"]["job_payload"]["payload_task_id"]
    r = redis.Redis.from_url(redis_url)
    key = f"hysds-job-status-{job['task_id']}"
    assert r.get(key) == b"job-completed" and 0 < r.ttl(key) <= 86400
    r.delete(key)
    jd = job_dir_of(docs)
    assert jd.is_relative_to(work_root / "jobs") and jd.name == job["job_id"]
    assert (jd / "_stdout.txt").read_text() == "hello world\n"
    assert (jd / "_stderr.txt").read_text() == ""
    assert (jd / "_exit_code").read_text().strip() == "0"
    assert int((jd / "_pid").read_text()) > 0
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    for name in ("_context.json", "_job.json", "_docker_params.json", "_run.sh"):
        assert (jd / name).exists(), name
        assert "hunter2" not in (jd / name).read_text(), f"secret leaked into {name}"
    params = json.loads((jd / "_docker_params.json").read_text())
    if backend == "podman":
        assert params[BUSYBOX]["network"] == "host"  # rootless: the worker user's network (netpolicy)
        assert params[BUSYBOX]["labels"]["sandbox_runner.task_id"] == job["task_id"]
    info = json.loads((jd / "_job.json").read_text())["job_info"]
    assert info["status"] == 0 and info["cmd_duration"] >= 0 and info["job_dir"] == str(jd)
    assert os.stat(jd / "_stdout.txt").st_uid == worker.uid


def test_exit_3_fails_the_job(worker: Worker, backend: str, shared_dir: Path, work_root: Path,
                              redis_url: str, status_key: str) -> None:
    job = make_job("sh -c 'echo oops >&2; exit 3'", image=image_for(backend))
    proc, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    assert proc.returncode == 1
    doc = terminal(docs)
    assert doc["status"] == "job-failed" and doc["error"] == "Got non-zero exit code: 3"
    jd = job_dir_of(docs)
    assert (jd / "_exit_code").read_text().strip() == "3"
    assert (jd / "_stderr.txt").read_text() == "oops\n"


def test_output_files_belong_to_the_worker_user(worker: Worker, backend: str, shared_dir: Path,
                                                work_root: Path, redis_url: str, status_key: str) -> None:
    job = make_job("sh -c 'mkdir -p out && echo data > out/product.txt'", image=image_for(backend))
    proc, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    assert proc.returncode == 0, proc.stdout
    product = job_dir_of(docs) / "out" / "product.txt"
    assert product.read_text() == "data\n"
    st = os.stat(product)
    assert (st.st_uid, st.st_gid) == (worker.uid, worker.gid)


def test_read_only_mount_cannot_be_written(worker: Worker, backend: str, shared_dir: Path, work_root: Path,
                                           redis_url: str, status_key: str) -> None:
    ro, rw = shared_dir / "ancillary", shared_dir / "scratch"
    for d in (ro, rw):
        d.mkdir()
        os.chown(d, worker.uid, worker.gid)
    (ro / "input.txt").write_text("ancillary\n")
    job = make_job("sh -c 'cat /data/ro/input.txt > copy.txt; echo w > /data/rw/ok.txt; echo x > /data/ro/x'",
                   image=image_for(backend),
                   container_mappings={str(ro): ["/data/ro"], str(rw): ["/data/rw", "rw"]})
    _, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    doc = terminal(docs)
    assert doc["status"] == "job-failed"  # the write to the ro mount failed the shell
    jd = job_dir_of(docs)
    assert (jd / "copy.txt").read_text() == "ancillary\n"
    assert (rw / "ok.txt").read_text() == "w\n"
    assert not (ro / "x").exists()
    assert "Read-only file system" in (jd / "_stderr.txt").read_text()


def test_alt_error_reaches_the_event(worker: Worker, backend: str, shared_dir: Path, work_root: Path,
                                     redis_url: str, status_key: str) -> None:
    job = make_job("sh -c 'echo PGE could not open granule > _alt_error.txt; exit 5'", image=image_for(backend))
    proc, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    doc = terminal(docs)
    assert doc["error"] == "PGE could not open granule"
    assert "PGE could not open granule" in proc.stdout


BAD_INPUTS = {
    "malformed-json": ('{"job_id": "x", ', "not valid JSON"),
    "bad-disk-usage": ("disk", "1.5XB"),
    "mount-outside-allow-list": ("mount", "/etc"),
    "unknown-job-type": ("type", "no entry for job type"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_readable_job_failed(case: str, worker: Worker, backend: str, shared_dir: Path,
                                              work_root: Path, redis_url: str, status_key: str) -> None:
    what, needle = BAD_INPUTS[case]
    env: dict[str, str] = {}
    job: dict[str, Any] | str
    if case == "malformed-json":
        job = what
    else:
        job = make_job("echo hi", image=image_for(backend))
        if what == "disk":
            job["params"]["_disk_usage"] = "1.5XB"
        elif what == "mount":
            job["container_mappings"] = {"/etc": "/host-etc"}
        elif what == "type":
            cfg = write_job(shared_dir, {"configs": [{"type": "other", "command": {"path": "/bin/true"}}]},
                            "worker.json")
            env["HYSDS_WORKER_CFG"] = str(cfg)
    proc, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend, **env)
    assert proc.returncode != 0
    doc = terminal(docs)
    assert doc["status"] == "job-failed" and needle in doc["error"], doc["error"]
    assert needle in proc.stdout
    assert [d["status"] for d in job_docs(docs)] == ["job-failed"]


def test_missing_image_fails_clearly(podman_ready: Worker, shared_dir: Path, work_root: Path, redis_url: str,
                                     status_key: str) -> None:
    job = make_job("echo hi", image="localhost/sandbox-runner/does-not-exist:1")
    proc, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman")
    assert proc.returncode == 1
    doc = terminal(docs)
    assert doc["status"] == "job-failed" and "does-not-exist" in doc["error"]
    jd = job_dir_of(docs)
    assert (jd / ".done").exists() and (jd / "_exit_code").read_text().strip() != "0"


def test_image_loaded_from_container_image_url(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                               redis_url: str, status_key: str) -> None:
    from support.machine import BUSYBOX_TAR

    assert BUSYBOX_TAR.exists(), "make setup writes the busybox tarball"
    name = f"localhost/sandbox-runner/loaded-{os.urandom(3).hex()}:1"
    job = make_job("echo loaded", image=name, container_image_url=f"file://{BUSYBOX_TAR}")
    try:
        proc, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman")
        assert proc.returncode == 0, proc.stdout
        assert (job_dir_of(docs) / "_stdout.txt").read_text() == "loaded\n"
    finally:
        podman_ready.run(["podman", "--remote", "--url", f"unix://{podman_ready.socket}", "rmi", "-f", name])


def test_no_container_left_behind(podman_ready: Worker, shared_dir: Path, work_root: Path, redis_url: str,
                                  status_key: str) -> None:
    job = make_job("echo bye", image=BUSYBOX)
    run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman")
    deadline = time.monotonic() + 10  # podman removes it (remove: true) ~0.1-0.2 s after the job exits
    while True:
        ps = podman_ready.run(["podman", "--remote", "--url", f"unix://{podman_ready.socket}", "ps", "-a",
                               "--filter", f"label=sandbox_runner.task_id={job['task_id']}", "-q"])
        assert ps.returncode == 0
        if ps.stdout.strip() == "" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ps.stdout.strip() == ""


def test_dry_run_prints_spec_and_runs_nothing(worker: Worker, shared_dir: Path, work_root: Path) -> None:
    job = make_job("echo hi", container_mappings={str(shared_dir): "/data/in"})
    path = write_job(shared_dir, job)
    proc = worker.run(["sandbox-runner", "run-job", str(path), "--dry-run"],
                      env=worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root)))
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["image"] == BUSYBOX and spec["argv"] == ["echo", "hi"]
    assert spec["mounts"] == [{"host": str(shared_dir), "container": "/data/in", "mode": "ro"}]
    assert not (work_root / "jobs").exists()


def test_events_file_when_no_redis(worker: Worker, shared_dir: Path, work_root: Path) -> None:
    job = make_job("echo hi", image=None)
    path = write_job(shared_dir, job)
    env = worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root))
    proc = worker.run(["sandbox-runner", "run-job", str(path), "--backend", "subprocess"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work_root / "events" / "events.msgpack").exists()
    show = worker.run(["sandbox-runner", "events", "show"], env=env)
    assert show.returncode == 0
    lines = [line for line in show.stdout.splitlines() if job["job_id"] in line]
    assert len(lines) == 3 and "job-started" in lines[0] and "job-completed" in lines[2]


def test_stand_alone_script_with_hysds_env(worker: Worker, shared_dir: Path, work_root: Path) -> None:
    from support.machine import REPO

    cfg = write_job(shared_dir, {"root_work_dir": str(work_root), "configs": [
        {"type": "sr_test", "command": {"path": "echo", "options": [], "arguments": ["$echo_var"], "env": []}}]},
        "worker.json")
    job = make_job("/bin/ignored", image=None)
    job["params"]["echo_var"] = "from the worker config"
    path = write_job(shared_dir, job)
    proc = worker.run([str(REPO / ".venv/bin/python"), str(REPO / "scripts/run_job.py"), str(path),
                       "--backend", "subprocess"], env=worker.env(HYSDS_WORKER_CFG=str(cfg)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = list((work_root / "jobs").rglob("_stdout.txt"))
    assert len(out) == 1 and out[0].read_text() == "from the worker config\n"


def test_doctor_reports_a_healthy_rootless_node_and_what_to_fix(podman_ready: Worker) -> None:
    ok = podman_ready.run(["sandbox-runner", "doctor"])
    assert ok.returncode == 0, ok.stdout
    assert "ok   podman API socket" in ok.stdout and "ok   subuid/subgid" in ok.stdout
    bad = podman_ready.run(["sandbox-runner", "doctor"],
                           env=podman_ready.env(SANDBOX_RUNNER_PODMAN_SOCKET="unix:///tmp/sr-no-such.sock"))
    assert "warn podman API socket  unix:///tmp/sr-no-such.sock: no podman service answers" in bad.stdout
    assert "fix: podman --runtime runc system service" in bad.stdout and "Traceback" not in bad.stderr
