"""Plain mode (the subprocess backend without bubblewrap): a SIGKILLed worker or ``run-job`` leaves nothing of
its job running, not even a daemon the job double-forked into a session of its own that ignores SIGTERM/SIGHUP.

Real parts: ``sandbox-runner worker`` as ``srunner`` on RabbitMQ and Redis, ``sandbox-runner run-job``, real
SIGKILLs of their process groups.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.celery_helpers import WorkerProc, client, job_docs, statuses, wait_for
from support.jobs import make_job, write_job
from support.machine import USER, VENV_BIN, Worker

pytestmark = [pytest.mark.slow]

#: $1 marks every process of the job; $2 is a dir where the first run leaves a flag, so the redelivered run
#: (a job-offline job runs again) ends at once.
JOB_SCRIPT = """#!/bin/sh
if [ -e "$2/ran" ]; then echo rerun; exit 0; fi
: > "$2/ran"
(setsid sh -c 'trap "" TERM HUP; : > daemon-ready; sleep "$0"; sleep "$0"' "$1" &)
sh -c 'trap "" TERM HUP; : > child-ready; sleep "$0"' "$1" &
echo started
wait
"""


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _session(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[3])


def _killpg(pid: int) -> None:
    """SIGKILL the process group ``pid`` is in (just ``pid`` when that group is this test's own)."""
    pgid = os.getpgid(pid)
    if pgid == os.getpgrp():
        os.kill(pid, signal.SIGKILL)
    else:
        os.killpg(pgid, signal.SIGKILL)


def _setup(shared_dir: Path) -> tuple[str, Path, Path]:
    """The job's script, its flag dir (writable by the worker user) and a fresh marker."""
    script = shared_dir / "forking-job.sh"
    script.write_text(JOB_SCRIPT)
    script.chmod(0o755)
    flags = shared_dir / "flags"
    flags.mkdir()
    pw = pwd.getpwnam(USER)
    os.chown(flags, pw.pw_uid, pw.pw_gid)
    return f"97{uuid.uuid4().int % 10**6}", script, flags


def _forked(job_dir: Path, marker: str) -> list[int]:
    ready = lambda: (job_dir / "daemon-ready").exists() and (job_dir / "child-ready").exists()  # noqa: E731
    wait_for(ready, 30, what="the job's daemon and child set up")
    found = processes_with(marker)
    assert len({_session(p) for p in found}) > 1, "the daemon did not leave the job's session"
    return found


def _reap(marker: str) -> None:
    for pid in processes_with(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _plain_job_forked(start_worker: Callable[..., WorkerProc], rabbit_url: str, redis_url: str, status_key: str,
                      command: str, marker: str) -> tuple[WorkerProc, dict[str, Any], Path, list[int]]:
    """A plain-mode worker running ``command``, once its job started and forked: (worker, job, job dir, forks)."""
    w = start_worker(rabbit_url, SANDBOX_RUNNER_BACKEND="subprocess", SANDBOX_RUNNER_BWRAP="off")
    job = make_job(command, image=None)
    client(rabbit_url, redis_url).send_task("hysds.job_worker.run_job", args=[job], queue=w.queue,
                                            task_id=job["task_id"])
    started = wait_for(lambda: next((d for d in job_docs(redis_url, status_key, job["task_id"])
                                     if d["status"] == "job-started"), None), 60, what="job-started")
    jd = Path(started["job"]["job_info"]["job_dir"])
    return w, job, jd, _forked(jd, marker)


def test_a_sigkilled_worker_leaves_nothing_of_its_plain_job(start_worker, worker: Worker, rabbit_url: str,
                                                           redis_url: str, status_key: str,
                                                           shared_dir: Path) -> None:
    marker, script, flags = _setup(shared_dir)
    try:
        w, job, jd, found = _plain_job_forked(start_worker, rabbit_url, redis_url, status_key,
                                              f"{script} {marker} {flags}", marker)
        _killpg(w.pid)
        w.wait(timeout=30)
        # gone with the worker, before any restart: no reconcile needed for this
        wait_for(lambda: not processes_with(marker), 10, what=f"no process of the job left (had {found})")
        w.start()  # reconcile closes the dead run; the redelivered message runs it again, and it ends at once
        wait_for(lambda: statuses(redis_url, status_key, job["task_id"])[-1:] == ["job-completed"], 60,
                 what="the rerun completed")
        time.sleep(1)
        seen = statuses(redis_url, status_key, job["task_id"])
        assert seen == ["job-started", "job-offline", "job-started", "job-completed"], seen
        assert (jd / ".done").exists() and not (jd / ".running").exists()
        assert not processes_with(marker)
    finally:
        _reap(marker)


def test_a_sigkilled_run_job_leaves_nothing_of_its_plain_job(worker: Worker, shared_dir: Path,
                                                             work_root: Path) -> None:
    marker, script, flags = _setup(shared_dir)
    path = write_job(shared_dir, make_job(f"{script} {marker} {flags}", image=None))
    env = worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_BWRAP="off")
    cmd = ["runuser", "-u", worker.name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
           str(VENV_BIN / "sandbox-runner"), "run-job", str(path), "--backend", "subprocess"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                            start_new_session=True)  # a group of its own, as a shell gives a command
    try:
        jd = wait_for(lambda: next(iter(work_root.glob("jobs/*/*/*/*/*/*/daemon-ready")), None), 60,
                      what="the job's daemon set up").parent
        found = _forked(jd, marker)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not processes_with(marker), 10, what=f"no process of the job left (had {found})")
    finally:
        if proc.poll() is None:
            proc.kill()
        _reap(marker)


def test_a_restarted_worker_sweeps_the_session_a_killed_supervisor_left(start_worker, worker: Worker,
                                                                        rabbit_url: str, redis_url: str,
                                                                        status_key: str, shared_dir: Path) -> None:
    """Worker and supervisor SIGKILLed together (an OOM kill, ``kill -9`` of both): what is left of the job, the
    daemon in another session too, is killed by the next worker's reconcile, and the job ends job-offline once."""
    marker, script, flags = _setup(shared_dir)
    try:
        w, job, jd, _ = _plain_job_forked(start_worker, rabbit_url, redis_url, status_key,
                                          f"{script} {marker} {flags}", marker)
        supervisor = int((jd / "_pid").read_text())
        os.kill(supervisor, signal.SIGSTOP)  # so it cannot act on the worker's death before it dies too
        _killpg(w.pid)
        w.wait(timeout=30)
        os.kill(supervisor, signal.SIGKILL)
        time.sleep(0.5)
        left = processes_with(marker)
        assert len({_session(p) for p in left}) > 1, f"daemon and group child should outlive both: {left}"
        w.start()
        try:
            wait_for(lambda: not processes_with(marker), 30, what="what was left of the job killed by reconcile")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {processes_with(marker)}\n{w.text()[-3000:]}") from None
        wait_for(lambda: statuses(redis_url, status_key, job["task_id"])[-1:] == ["job-completed"], 60,
                 what="the rerun completed")
        time.sleep(1)
        assert statuses(redis_url, status_key, job["task_id"]).count("job-offline") == 1
        assert "orphan-processes-killed" in w.text()
    finally:
        _reap(marker)


def test_bwrap_setting_chooses_plain_mode() -> None:
    from sandbox_runner.backends.base import ContainerSpec
    from sandbox_runner.backends.factory import default_backend_for
    from sandbox_runner.errors import ConfigError
    from sandbox_runner.settings import load_settings

    spec = ContainerSpec(name="s", image=None, argv=("true",), workdir="/")
    plain = default_backend_for(load_settings({"SANDBOX_RUNNER_BWRAP": "off"}), spec)
    assert getattr(plain, "bwrap", "?") is None
    with pytest.raises(ConfigError) as err:
        load_settings({"SANDBOX_RUNNER_BWRAP": "maybe"})
    assert "bwrap" in str(err.value) and "maybe" in str(err.value)
