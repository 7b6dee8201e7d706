"""A work root mounted after the podman service started (issue 8, section 3), for real.

Each test gets a rootless podman of its own for ``srunner``: its own runtime dir (so its own pause process and
user + mount namespace), its own storage (CONTAINERS_STORAGE_CONF) and socket. The shared service at
/run/user/1001/podman/podman.sock, which other tests use at the same time, is never touched. A real tmpfs is
mounted (as root) under the test's dir *after* that service is up, and a job is run there with `sandbox-runner
run-job` as srunner: a service sandbox-runner started is restarted and the job completes; a service started by
someone else (here: this test, outside our code) is left alone and the job fails naming the cause and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fsjobs import tmpfs
from support.jobs import make_job
from support.machine import BUSYBOX_TAR, Worker, require
from test_job_path import job_docs, run_job, terminal

from sandbox_runner.backends.podman.mountns import peer_pid, start_ticks

pytestmark = pytest.mark.podman


@dataclass
class OwnPodman:
    """A rootless podman for srunner that shares nothing with the machine's: runtime dir, storage, socket."""

    worker: Worker
    base: Path

    @property
    def runtime_dir(self) -> Path:
        return self.base / "rt"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "podman" / "podman.sock"

    def env(self, **extra: str) -> dict[str, str]:
        return self.worker.env(XDG_RUNTIME_DIR=str(self.runtime_dir),
                               CONTAINERS_STORAGE_CONF=str(self.base / "storage.conf"),
                               SANDBOX_RUNNER_PODMAN_SOCKET=f"unix://{self.socket}", **extra)

    def mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        path.chmod(mode)
        os.chown(path, self.worker.uid, self.worker.gid)
        return path

    def start_foreign_service(self) -> subprocess.Popen[bytes]:
        """A service started the way an operator would, not by sandbox-runner (so it leaves no owner record)."""
        argv = ["runuser", "-u", self.worker.name, "--", "env", "-i",
                *[f"{k}={v}" for k, v in self.env().items()],
                "podman", "--runtime", "runc", "system", "service", "--time=0", f"unix://{self.socket}"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while peer_pid(str(self.socket)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the test's podman service did not start"
            time.sleep(0.1)
        return proc

    def pause_pid(self) -> int | None:
        try:
            return int((self.runtime_dir / "libpod" / "tmp" / "pause.pid").read_text())
        except (OSError, ValueError):
            return None

    def processes(self) -> list[int]:
        """Every process of this podman: those started with its runtime dir in their environment."""
        marker = f"XDG_RUNTIME_DIR={self.runtime_dir}".encode()
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    pids.append(int(environ.parent.name))
            except OSError:
                continue
        return pids


@pytest.fixture
def own_podman(podman_ready: Worker, shared_dir: Path) -> Iterator[OwnPodman]:
    require(shutil.which("podman") is not None and BUSYBOX_TAR.exists(), "podman or the busybox tarball missing")
    pod = OwnPodman(podman_ready, shared_dir / "podman")
    pod.mkdir(pod.base)
    pod.mkdir(pod.runtime_dir, 0o700)  # podman insists its runtime dir is the user's own
    pod.mkdir(pod.runtime_dir / "podman", 0o700)
    store = pod.mkdir(pod.base / "store", 0o700)
    (pod.base / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}"\nrootless_storage_path = "{store}"\n'
        f'runroot = "{pod.runtime_dir}/containers"\n')
    (pod.base / "storage.conf").chmod(0o644)
    try:
        yield pod
    finally:
        pids = pod.processes()  # by pid, only this test's podman (the pause process is among them)
        for pid in pids:
            with_kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            with_kill(pid, signal.SIGKILL)


def dead(pid: int) -> bool:
    """Gone, or a zombie (PID 1 here may be slow to reap the orphans it inherits)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def with_kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def late_job(pod: OwnPodman, shared_dir: Path, work_root: Path, redis_url: str, status_key: str,
             script: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    job = make_job(f"sh -c '{script}'", container_image_url=f"file://{BUSYBOX_TAR}")
    proc, docs = run_job(pod.worker, job, shared_dir, work_root, redis_url, status_key, "podman",
                         XDG_RUNTIME_DIR=str(pod.runtime_dir), CONTAINERS_STORAGE_CONF=str(pod.base / "storage.conf"),
                         SANDBOX_RUNNER_PODMAN_SOCKET=f"unix://{pod.socket}")
    return proc, docs


def test_own_service_is_restarted_and_the_job_completes(own_podman: OwnPodman, shared_dir: Path, redis_url: str,
                                                        status_key: str) -> None:
    pod = own_podman
    early = pod.mkdir(pod.base / "early")
    # no service answers: sandbox-runner starts one (and records that it did), then runs the job
    proc, docs = late_job(pod, shared_dir, early, redis_url, status_key + "-a", "echo early")
    assert proc.returncode == 0 and terminal(docs)["status"] == "job-completed", proc.stderr[-3000:]
    assert (pod.socket.parent / "podman.sock.owner.json").exists()
    first = peer_pid(str(pod.socket))
    assert first is not None
    with tmpfs(pod.base / "scratch", size="20m") as scratch:  # mounted after the service is up
        os.chown(scratch, pod.worker.uid, pod.worker.gid)
        assert not Path(f"/proc/{first}/root{scratch}/.").exists() or \
            os.stat(f"/proc/{first}/root{scratch}").st_dev != os.stat(scratch).st_dev  # the service cannot see it
        proc, docs = late_job(pod, shared_dir, scratch, redis_url, status_key, "echo late; id -u")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        done = terminal(docs)
        assert done["status"] == "job-completed" and [d["status"] for d in job_docs(docs)] == [
            "job-started", "job-completed"]  # the retry happened before the job began: one start, one end
        job_dir = Path(done["job"]["job_info"]["job_dir"])
        assert job_dir.is_relative_to(scratch)
        assert (job_dir / "_stdout.txt").read_text().split() == ["late", str(pod.worker.uid)]
        assert (job_dir / "_stdout.txt").stat().st_uid == pod.worker.uid
        assert "podman-service-restarting" in proc.stderr and "podman-service-restarted" in proc.stderr
        second = peer_pid(str(pod.socket))
        assert second is not None and second != first
        assert dead(first)  # the old service, idle once this job ended, was killed (reaped)
        assert not (pod.socket.parent / "podman.sock.retired.json").exists()
        assert os.stat(f"/proc/{second}/root{scratch}").st_dev == os.stat(scratch).st_dev
        # the next job on the late mount needs no restart
        proc, docs = late_job(pod, shared_dir, scratch, redis_url, status_key + "-c", "echo again")
        assert proc.returncode == 0 and "podman-service-restart" not in proc.stderr, proc.stderr[-3000:]
        assert peer_pid(str(pod.socket)) == second


def test_foreign_service_is_left_alone_and_the_job_fails_naming_cause_and_fix(
        own_podman: OwnPodman, shared_dir: Path, redis_url: str, status_key: str) -> None:
    pod = own_podman
    service = pod.start_foreign_service()
    listener = peer_pid(str(pod.socket))
    assert listener is not None
    ticks = start_ticks(listener)
    with tmpfs(pod.base / "scratch", size="20m") as scratch:
        os.chown(scratch, pod.worker.uid, pod.worker.gid)
        proc, docs = late_job(pod, shared_dir, scratch, redis_url, status_key, "echo never")
        assert proc.returncode != 0
        failed = terminal(docs)
        assert failed["status"] == "job-failed"
        assert [d["status"] for d in job_docs(docs)] == ["job-started", "job-failed"]
        error = str(failed.get("error", "")) + str(failed.get("short_error", ""))
        assert "mounted after the podman service" in error, failed
        assert "podman system migrate" in error and "restart that service" in error, error
        assert str(scratch) in error
        # not restarted, not killed: the same process still serves the socket
        assert service.poll() is None and peer_pid(str(pod.socket)) == listener and start_ticks(listener) == ticks
        assert "podman-service-restart" not in proc.stderr


def test_running_jobs_defer_the_restart_and_are_not_disturbed(own_podman: OwnPodman, shared_dir: Path,
                                                               redis_url: str, status_key: str) -> None:
    """With a container of the user running, no new service can get a fresh namespace (podman joins the running
    container's): the late job fails saying so, the running job is left alone and completes with all its output,
    and the first late job after it restarts the service and completes."""
    pod = own_podman
    early = pod.mkdir(pod.base / "early")
    proc, docs = late_job(pod, shared_dir, early, redis_url, status_key + "-a", "echo warm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = make_job("sh -c 'echo before; sleep 3; echo after'", container_image_url=f"file://{BUSYBOX_TAR}")
    path = shared_dir / "long.json"
    path.write_text(json.dumps(job))
    path.chmod(0o644)
    env = pod.env(SANDBOX_RUNNER_WORK_ROOT=str(early), SANDBOX_RUNNER_REDIS_URL=redis_url,
                  SANDBOX_RUNNER_STATUS_KEY=status_key + "-long", SANDBOX_RUNNER_JOB_INFO_KEY=status_key + "-long")
    argv = ["runuser", "-u", pod.worker.name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            "sandbox-runner", "run-job", str(path), "--backend", "podman"]
    long = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(early.glob(f"jobs/*/*/*/*/*/{job['job_id']}/_pid")):
            assert long.poll() is None and time.monotonic() < deadline, long.communicate()
            time.sleep(0.1)
        with tmpfs(pod.base / "scratch", size="20m") as scratch:
            os.chown(scratch, pod.worker.uid, pod.worker.gid)
            proc, docs = late_job(pod, shared_dir, scratch, redis_url, status_key, "echo late")
            assert proc.returncode != 0 and "podman-service-restarted" not in proc.stderr
            error = str(terminal(docs).get("error"))
            assert "mounted after the podman service" in error and "1 container(s) of this user run" in error, error
            out, err = long.communicate(timeout=120)
            assert long.returncode == 0, out[-2000:] + err[-3000:]
            proc, docs = late_job(pod, shared_dir, scratch, redis_url, status_key + "-b", "echo late")
            assert proc.returncode == 0 and "podman-service-restarted" in proc.stderr, proc.stderr[-3000:]
    finally:
        if long.poll() is None:
            long.kill()
    job_dir = next(early.glob(f"jobs/*/*/*/*/*/{job['job_id']}"))
    assert (job_dir / "_stdout.txt").read_text() == "before\nafter\n"
    assert (job_dir / "_exit_code").read_text().strip() == "0"
