"""Real brokers and real worker processes for the Celery worker tests.

* ``rabbit_url``: a RabbitMQ vhost of the session's own (``rabbitmqctl``), so nothing else sees our queues.
* ``own_redis``: a ``redis-server`` of the test's own on a free port, which the test may stop and start again.
* ``start_worker``: ``sandbox-runner worker`` as the unprivileged user ``srunner`` (runuser), in the background,
  with its log in a file and its pid from ``--pidfile`` (runuser forks: signals must go to the worker itself).
  Every worker still running at the end of a test is stopped, and its containers removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import USER, Worker, read_status_list, require


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    ctl = shutil.which("rabbitmqctl")
    require(ctl is not None, "rabbitmqctl not found (RabbitMQ is set up by `make setup`)")
    assert ctl is not None
    vhost = f"sr-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, text=True, timeout=60)
    require(made.returncode == 0, f"cannot add a RabbitMQ vhost: {made.stderr.strip()}")
    subprocess.run([ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=60)
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


@dataclass
class OwnRedis:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: _pings(redis.Redis(port=self.port)), 10, what="redis-server up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    require(shutil.which("redis-server") is not None, "redis-server not installed")
    server = OwnRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class WorkerProc:
    user: Worker
    queue: str
    env: dict[str, str]
    run_dir: Path
    instance: int = 1
    concurrency: int = 1
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    pidfile: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.log = self.run_dir / f"worker-{self.queue}.log"
        self.pidfile = self.run_dir / f"worker-{self.queue}.pid"

    @property
    def name(self) -> str:
        return f"celery@{self.queue}.{self.instance:02d}.{socket.gethostname()}"

    def start(self, wait: bool = True) -> WorkerProc:
        self.starts += 1
        self.pidfile.unlink(missing_ok=True)
        out = self.log.open("ab")
        out.write(f"\n===== start {self.starts} =====\n".encode())
        out.flush()
        argv = ["sandbox-runner", "worker", "-Q", self.queue, "-c", str(self.concurrency), "-i", str(self.instance),
                "--pidfile", str(self.pidfile)]
        cmd = ["runuser", "-u", self.user.name, "--", "env", "-i", *[f"{k}={v}" for k, v in self.env.items()], *argv]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd="/")
        out.close()
        if wait:
            self.wait_ready()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        marker = f"===== start {self.starts} ====="

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.text()[-4000:]}")
            return " ready." in self.text().split(marker)[-1]

        wait_for(ready, timeout, what=f"worker {self.name} ready")

    @property
    def pid(self) -> int:
        return int(wait_for(lambda: self.pidfile.exists() and self.pidfile.read_text().strip(), 10, what="pidfile"))

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, AssertionError, ValueError):
            self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, AssertionError, ValueError):
                self.signal(signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=10)


def containers(user: Worker, label: str) -> list[dict[str, Any]]:
    """Containers (any state) with ``label`` (k=v) in srunner's rootless podman."""
    import json

    proc = user.run(["podman", "--remote", "--url", f"unix://{user.socket}", "ps", "-a", "--format", "json",
                     "--filter", f"label={label}"])
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout or "[]"))


def remove_containers(user: Worker, label: str) -> None:
    for c in containers(user, label):
        user.run(["podman", "--remote", "--url", f"unix://{user.socket}", "rm", "-f", "-t", "0", c["Id"]])


@pytest.fixture
def run_dir(shared_dir: Path) -> Path:
    path = shared_dir / "run"
    path.mkdir()
    pw = pwd.getpwnam(USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@pytest.fixture
def start_worker(podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str,
                 status_key: str) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def start(broker_url: str, *, queue: str | None = None, concurrency: int = 1, instance: int = 1,
              events_redis: str | None = None, wait: bool = True, **extra: str) -> WorkerProc:
        env = podman_ready.env(
            SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=events_redis or redis_url,
            SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
            SANDBOX_RUNNER_BROKER_URL=broker_url, SANDBOX_RUNNER_RESULT_BACKEND=redis_url,
            SANDBOX_RUNNER_HEARTBEAT_INTERVAL="1", SANDBOX_RUNNER_STOP_GRACE="2", SANDBOX_RUNNER_LEASE_TTL="3",
            SANDBOX_RUNNER_MIN_FREE_PERCENT="0", **extra)
        proc = WorkerProc(podman_ready, queue or f"srq-{uuid.uuid4().hex[:8]}", env, run_dir,
                          instance=instance, concurrency=concurrency)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()
        remove_containers(podman_ready, f"sandbox_runner.worker={proc.name}")


def client(broker_url: str, backend: str) -> Any:
    """A producer app, as a HySDS orchestrator would have: msgpack, the same queue priority cap."""
    from celery import Celery

    app = Celery("sr-test-client", broker=broker_url, backend=backend, set_as_current=False)
    app.conf.update(task_serializer="msgpack", result_serializer="msgpack", accept_content=["msgpack", "json"],
                    task_queue_max_priority=10, broker_connection_retry_on_startup=True)
    return app


def job_docs(redis_url: str, key: str, task_id: str | None = None) -> list[dict[str, Any]]:
    docs = [d for d in read_status_list(redis_url, key) if d.get("resource") == "job"]
    return [d for d in docs if task_id is None or d.get("uuid") == task_id]


def statuses(redis_url: str, key: str, task_id: str) -> list[str]:
    return [d["status"] for d in job_docs(redis_url, key, task_id)]
