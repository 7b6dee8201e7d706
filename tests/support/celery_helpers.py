"""Helpers for the Celery worker tests (the fixtures are in celery_fixtures.py): a redis-server of a test's own,
a ``sandbox-runner worker`` process run as ``srunner`` in the background, a producer app, podman look-ups.

A worker's pid comes from ``--pidfile``: runuser forks, and a signal must reach the worker, not runuser.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.jobs import read_status_list
from support.machine import Worker


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


@dataclass
class WorkerProc:
    user: Worker
    queue: str
    env: dict[str, str]
    run_dir: Path
    instance: int = 1
    concurrency: int = 1
    plain_celery: bool = False
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
        if self.plain_celery:  # what an operator may run instead: Celery's own command line, our app
            argv = ["celery", "-A", "sandbox_runner.celery_app", "worker", "-Q", self.queue, "-c",
                    str(self.concurrency), "-n", f"{self.queue}.{self.instance:02d}.%h", "--pidfile", str(self.pidfile),
                    "--loglevel", "INFO"]
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
