"""The Celery worker for real: a real broker (RabbitMQ on loopback, or Redis), ``sandbox-runner worker`` running
as the unprivileged user ``srunner`` in the background, its rootless Podman, and the status documents on Redis."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery_fixtures import (  # noqa: F401  (fixtures)
    OwnRedis,
    client,
    containers,
    job_docs,
    own_redis,
    rabbit_url,
    run_dir,
    start_worker,
    statuses,
    wait_for,
)
from conftest import Worker, make_job, read_status_list

from sandbox_runner.events.documents import TERMINAL_STATUSES

pytestmark = [pytest.mark.podman, pytest.mark.slow]
TASK_NAMES = ["sandbox_runner.run_job", "hysds.job_worker.run_job"]


def send(broker: str, backend: str, queue: str, job: dict[str, Any], name: str = "hysds.job_worker.run_job",
         **opts: Any) -> Any:
    return client(broker, backend).send_task(name, args=[job], queue=queue, task_id=job["task_id"], **opts)


def terminal_docs(redis_url: str, key: str, task_id: str) -> list[dict[str, Any]]:
    return [d for d in job_docs(redis_url, key, task_id) if d["status"] in TERMINAL_STATUSES]


def wait_status(redis_url: str, key: str, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((d for d in job_docs(redis_url, key, task_id) if d["status"] == status), None)

    return dict(wait_for(found, timeout, what=f"{status} for {task_id}"))


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_jobs_run_under_both_task_names_rabbitmq(start_worker, rabbit_url: str, redis_url: str,
                                                 status_key: str, task_name: str) -> None:
    w = start_worker(rabbit_url)
    job = make_job("echo hello from celery")
    result = send(rabbit_url, redis_url, w.queue, job, task_name).get(timeout=90)
    assert result["status"] == "job-completed" and result["uuid"] == job["task_id"]
    assert result["celery_hostname"] == w.name and result["exit_code"] == 0
    assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]
    done = terminal_docs(redis_url, status_key, job["task_id"])[0]
    assert done["celery_hostname"] == w.name
    assert done["worker_program"] == w.queue and done["worker_instance"] == 1
    assert done["job"]["delivery_info"]["routing_key"] == w.queue
    assert isinstance(done["event_id"], str) and isinstance(done["event_seq"], int)
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert (jd / "_stdout.txt").read_text() == "hello from celery\n" and (jd / ".done").exists()

