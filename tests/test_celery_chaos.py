"""Chaos: a worker SIGKILLed mid-job, again and again, loses no job and runs none twice.

A real RabbitMQ, ``sandbox-runner worker`` as ``srunner`` with its rootless Podman, real SIGKILLs. The broker
redelivers the unacked message at once; the restarted worker's reconcile closes the dead run (``job-offline``) and
the redelivery guard runs the job again under a newer fencing token.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from support.celery_helpers import OwnRedis, client, containers, job_docs, statuses, wait_for
from support.jobs import make_job
from support.machine import Worker

pytestmark = [pytest.mark.podman, pytest.mark.slow]

JOBS, KILLS = 30, 3


def _latest(docs: list[dict[str, Any]]) -> dict[str, str]:
    last: dict[str, str] = {}
    for d in docs:
        last[d["uuid"]] = d["status"]
    return last


def test_a_worker_killed_three_times_completes_every_job_exactly_once(
        start_worker, podman_ready: Worker, rabbit_url: str, redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url)
    jobs = [make_job("sleep 2") for _ in range(JOBS)]
    producer = client(rabbit_url, redis_url)
    for job in jobs:
        producer.send_task("hysds.job_worker.run_job", args=[job], queue=w.queue, task_id=job["task_id"])
    killed: list[str] = []
    for _ in range(KILLS):
        def running() -> str | None:
            # a job started (and not yet done) since the last restart, with its container up
            last = _latest(job_docs(redis_url, status_key))
            tid = next((t for t, s in last.items() if s == "job-started" and t not in killed), None)
            label = f"sandbox_runner.task_id={tid}"
            return tid if tid and any(c["State"] == "running" for c in containers(podman_ready, label)) else None

        killed.append(wait_for(running, 120, interval=0.2, what="a running job to kill the worker under"))
        w.signal(signal.SIGKILL)
        w.wait(timeout=30)
        w.start()

    def all_done() -> bool:
        last = _latest(job_docs(redis_url, status_key))
        return all(last.get(j["task_id"]) == "job-completed" for j in jobs)

    wait_for(all_done, 300, interval=1, what=f"all {JOBS} jobs completed")
    docs = job_docs(redis_url, status_key)
    for job in jobs:
        seen = [d["status"] for d in docs if d["uuid"] == job["task_id"]]
        assert seen.count("job-completed") == 1, (job["task_id"], seen)
        if job["task_id"] in killed:  # the dead run was closed once, and the job ran again to the end
            assert seen == ["job-started", "job-offline", "job-started", "job-completed"], seen
        else:
            assert seen == ["job-started", "job-completed"], seen
    wait_for(lambda: containers(podman_ready, f"sandbox_runner.worker={w.name}") == [], 30,
             what="no container left")


def test_on_the_redis_broker_the_visibility_timeout_brings_a_killed_job_back(
        start_worker, podman_ready: Worker, own_redis: OwnRedis, redis_url: str, status_key: str) -> None:
    """Redis keeps a dead worker's unacked message aside until the visibility timeout has passed (kombu's
    default: an hour; here 5 s), then any worker polling the queue puts it back; then the same as on RabbitMQ."""
    w = start_worker(own_redis.url, SANDBOX_RUNNER_BROKER_VISIBILITY_TIMEOUT="5")
    job = make_job("sleep 3")
    client(own_redis.url, redis_url).send_task("hysds.job_worker.run_job", args=[job], queue=w.queue,
                                               task_id=job["task_id"])
    label = f"sandbox_runner.task_id={job['task_id']}"
    wait_for(lambda: any(c["State"] == "running" for c in containers(podman_ready, label)), 60, what="container")
    w.signal(signal.SIGKILL)
    w.wait(timeout=30)
    killed_at = time.monotonic()
    w.start()

    def seen() -> list[str]:
        return statuses(redis_url, status_key, job["task_id"])

    try:
        wait_for(lambda: seen()[-1:] == ["job-completed"], 60, interval=0.5, what="the job completed after the kill")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen()}\n{w.text()[-3000:]}") from None
    assert time.monotonic() - killed_at >= 5  # not before the visibility timeout
    assert seen() == ["job-started", "job-offline", "job-started", "job-completed"]
    wait_for(lambda: containers(podman_ready, label) == [], 30, what="no container left")
