"""`sandbox-runner worker` as root (issue 8, section 1): a real Celery worker on RabbitMQ, started as root, runs a
job in rootful podman (no user namespace, rlimits within the host's) and reports it completed; a job-spec's
uid/gid are honoured there too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.celery_helpers import WorkerProc, client, job_docs, statuses
from support.jobs import make_job
from support.machine import BUSYBOX_TAR, VENV_BIN, Worker, require

pytestmark = [pytest.mark.podman, pytest.mark.slow]

ROOT = Worker("root", 0, 0, "/root")


@pytest.fixture
def root_worker(shared_dir: Path, rabbit_url: str, redis_url: str, status_key: str) -> Iterator[WorkerProc]:
    require(os.getuid() == 0, "starts the worker as root")
    require(shutil.which("podman") is not None and BUSYBOX_TAR.exists(), "podman or the busybox tarball missing")
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing")
    run_dir, work = shared_dir / "run", shared_dir / "work"
    run_dir.mkdir()
    work.mkdir()
    env = ROOT.env(XDG_RUNTIME_DIR="/run", SANDBOX_RUNNER_WORK_ROOT=str(work), SANDBOX_RUNNER_REDIS_URL=redis_url,
                   SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
                   SANDBOX_RUNNER_BROKER_URL=rabbit_url, SANDBOX_RUNNER_RESULT_BACKEND=redis_url,
                   SANDBOX_RUNNER_HEARTBEAT_INTERVAL="1", SANDBOX_RUNNER_MIN_FREE_PERCENT="0")
    proc = WorkerProc(ROOT, f"srq-root-{os.urandom(4).hex()}", env, run_dir).start()
    try:
        yield proc
    finally:
        proc.stop()
        found = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=sandbox_runner.worker={proc.name}"],
                               capture_output=True, text=True, check=False).stdout.split()
        if found:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *found], capture_output=True, check=False)


def test_worker_as_root_runs_jobs_in_rootful_podman(root_worker: WorkerProc, rabbit_url: str, redis_url: str,
                                                    status_key: str) -> None:
    w = root_worker
    jobs = []
    for ids in ({}, {"uid": 2000, "gid": 2001}):
        job = make_job("sh -c 'id -u; id -g; ulimit -n; cat /proc/self/uid_map; touch made'",
                       container_image_url=f"file://{BUSYBOX_TAR}")
        job["params"]["job_specification"].update(ids)
        jobs.append((job, ids))
    app = client(rabbit_url, redis_url)
    for (job, ids), result in zip(jobs, [app.send_task("hysds.job_worker.run_job", args=[j], queue=w.queue,
                                                       task_id=j["task_id"]) for j, _ in jobs], strict=True):
        done = result.get(timeout=120)
        assert done["status"] == "job-completed", (done, w.text()[-3000:])
        assert done["celery_hostname"] == w.name
        assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]
        doc = next(d for d in job_docs(redis_url, status_key, job["task_id"]) if d["status"] == "job-completed")
        job_dir = Path(doc["job"]["job_info"]["job_dir"])
        out = (job_dir / "_stdout.txt").read_text().split()
        uid, gid = ids.get("uid", 0), ids.get("gid", 0)
        assert out[:2] == [str(uid), str(gid)], out
        assert int(out[2]) <= _hard_nofile(), out  # rlimits fitted to what the host grants
        assert out[3:6] == ["0", "0", "4294967295"], out  # rootful: no user namespace
        made = (job_dir / "made").stat()
        assert (made.st_uid, made.st_gid) == (uid, gid)
        assert (job_dir / "_job.json").stat().st_uid == 0
        params = json.loads((job_dir / "_docker_params.json").read_text())
        assert params  # written by the root worker as for any job


def _hard_nofile() -> int:
    """The rootful service's own hard nofile limit (what a container may be given)."""
    from sandbox_runner.backends.podman.spec import service_rlimits

    return service_rlimits("/run/podman/podman.sock")["nofile"]
