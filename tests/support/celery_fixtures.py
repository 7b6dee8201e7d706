"""Fixtures for the Celery worker tests: real brokers and real worker processes (helpers: celery_helpers.py).

* ``rabbit_url``: a RabbitMQ vhost of the session's own (``rabbitmqctl``), so nothing else sees our queues.
* ``own_redis``: a ``redis-server`` of the test's own on a free port, which the test may stop and start again.
* ``start_worker``: ``sandbox-runner worker`` as the unprivileged user ``srunner`` (runuser), in the background.
  Every worker still running at the end of a test is stopped, and its containers removed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.celery_helpers import OwnRedis, WorkerProc, free_port, remove_containers
from support.machine import USER, Worker, require


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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    require(shutil.which("redis-server") is not None, "redis-server not installed")
    server = OwnRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


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
              events_redis: str | None = None, wait: bool = True, plain_celery: bool = False,
              **extra: str) -> WorkerProc:
        env = podman_ready.env(**{  # extra may override any of these (an empty value unsets it)
            "SANDBOX_RUNNER_WORK_ROOT": str(work_root), "SANDBOX_RUNNER_REDIS_URL": events_redis or redis_url,
            "SANDBOX_RUNNER_STATUS_KEY": status_key, "SANDBOX_RUNNER_JOB_INFO_KEY": status_key,
            "SANDBOX_RUNNER_BROKER_URL": broker_url, "SANDBOX_RUNNER_RESULT_BACKEND": redis_url,
            "SANDBOX_RUNNER_HEARTBEAT_INTERVAL": "1", "SANDBOX_RUNNER_STOP_GRACE": "2",
            "SANDBOX_RUNNER_LEASE_TTL": "3", "SANDBOX_RUNNER_MIN_FREE_PERCENT": "0", **extra})
        proc = WorkerProc(podman_ready, queue or f"srq-{uuid.uuid4().hex[:8]}", env, run_dir,
                          instance=instance, concurrency=concurrency, plain_celery=plain_celery)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()
        remove_containers(podman_ready, f"sandbox_runner.worker={proc.name}")


