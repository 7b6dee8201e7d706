"""Messages that are not jobs, on a real Celery worker with RabbitMQ and with the Redis broker (issue 8 section 5).

A message with no job, a list, a string or a damaged job is acked and reported once (one ``job-failed`` under
the message's task id), never redelivered forever; the worker goes on to the next job. A message whose body is
not even a Celery task body is rejected without requeue and reported once (``job-failed`` under its header id,
or a ``worker_anomaly/invalid_message`` event when it has none), and the worker lives on to run the next job.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from support.celery_helpers import OwnRedis, client, job_docs, wait_for
from support.jobs import make_job, read_status_list

from sandbox_runner.events.documents import TERMINAL_STATUSES

pytestmark = [pytest.mark.podman, pytest.mark.slow]
TASK = "hysds.job_worker.run_job"


def _damaged_job() -> dict[str, Any]:
    job = make_job("echo never runs")
    job["job_info"] = 1.5
    return job


def _surrogate_job() -> dict[str, Any]:
    """JSON's ``"\\udfff"`` decodes to a lone surrogate, which no document can carry: before, no status at all."""
    job = make_job("echo never runs")
    job["tag"] = "x\udfff"
    return job


BAD_ARGS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("no-args", [], {}, "got nothing (null)"),
    ("a-list", [[1, 2]], {}, "not an array"),
    ("a-string", ["not a job"], {}, "not valid JSON"),
    ("a-json-list", ['["x"]'], {}, "not an array"),
    ("damaged", [_damaged_job()], {}, "job_info: expected object, got float"),
    ("surrogate", [_surrogate_job()], {}, "tag: holds a lone UTF-16 surrogate"),
    ("extra-args", [make_job("echo extra args"), True, "surplus"], {"surplus": 1}, ""),
]
#: bodies that are not Celery's [args, kwargs, embed]: before, each crashed the worker ("Unrecoverable error")
#: with the message unacked, so every worker that took it died in turn
BAD_BODIES: list[tuple[str, Any, str]] = [
    ("body-string", "a string", "body is not [args, kwargs, embed] (got str)"),
    ("body-pair", [1, 2], "(got 2 items)"),
    ("body-object", {"x": 1}, "(got dict)"),
    ("body-number", 5, "(got int)"),
    ("body-args-number", [5, {}, {}], "args are not an array (got int)"),
]
#: bodies no serializer can read: Celery logged "Can't decode message body" and acked them, reporting nothing
UNDECODABLE: list[tuple[str, bytes, str, str]] = [
    ("bad-msgpack", b"\xc1\xc1", "application/x-msgpack", "cannot be decoded (application/x-msgpack)"),
    ("bad-json", b"{not json", "application/json", "cannot be decoded (application/json)"),
]


def _terminal(redis_url: str, key: str, task_id: str) -> list[dict[str, Any]]:
    return [d for d in job_docs(redis_url, key, task_id) if d["status"] in TERMINAL_STATUSES]


def _send_all_and_check(broker: str, redis_url: str, status_key: str, queue: str) -> None:
    app = client(broker, redis_url)
    sent: list[tuple[str, str]] = []
    for name, args, kwargs, says in BAD_ARGS:
        task_id = f"{name}-{uuid.uuid4()}"
        app.send_task(TASK, args=args, kwargs=kwargs, queue=queue, task_id=task_id,
                      serializer="json" if name == "surrogate" else None)  # msgpack cannot even send it
        sent.append((task_id, says))
    with app.producer_or_acquire() as producer:
        for name, body, says in BAD_BODIES:
            task_id = f"{name}-{uuid.uuid4()}"
            producer.publish(body, routing_key=queue, serializer="json",
                             headers={"task": TASK, "id": task_id, "lang": "py"})
            sent.append((task_id, says))
        for name, raw, content_type, says in UNDECODABLE:
            task_id = f"{name}-{uuid.uuid4()}"
            producer.publish(raw, routing_key=queue, content_type=content_type, content_encoding="binary",
                             headers={"task": TASK, "id": task_id, "lang": "py"})
            sent.append((task_id, says))
        producer.publish("no headers", routing_key=queue, serializer="json")  # not a task at all: an event
    good = make_job("echo after the bad ones")
    result = app.send_task(TASK, args=[good], queue=queue, task_id=good["task_id"])
    assert result.get(timeout=120)["status"] == "job-completed"  # the worker was not stuck on them
    for task_id, says in sent:
        docs = wait_for(lambda t=task_id: _terminal(redis_url, status_key, t), 30, what=f"status of {task_id}")
        if task_id.startswith("extra-args"):
            assert [d["status"] for d in docs] == ["job-completed"]
            continue
        assert [d["status"] for d in docs] == ["job-failed"], task_id
        assert says in docs[0]["error"] and "Traceback" not in docs[0]["error"]
        assert docs[0]["uuid"] == task_id
        state = wait_for(lambda t=task_id: app.AsyncResult(t).state != "PENDING" and app.AsyncResult(t).state,
                         30, what=f"Celery state of {task_id}")
        assert state == "FAILURE", (task_id, state)  # as Flower and mozart see a failed job
    time.sleep(3)  # a message not acked would come back (RabbitMQ at once; Redis after its visibility timeout)
    for task_id, _ in sent:
        assert len(_terminal(redis_url, status_key, task_id)) == 1, task_id
    anomalies = [d for d in read_status_list(redis_url, status_key)
                 if d.get("type") == "worker_anomaly" and d.get("status") == "invalid_message"]
    assert len(anomalies) == 1 and "not a Celery task" in anomalies[0]["event"]["error"]


def test_messages_that_are_not_jobs_fail_once_rabbitmq(start_worker, rabbit_url: str, redis_url: str,
                                                       status_key: str) -> None:
    w = start_worker(rabbit_url)
    _send_all_and_check(rabbit_url, redis_url, status_key, w.queue)


def test_messages_that_are_not_jobs_fail_once_redis_broker(start_worker, own_redis: OwnRedis, redis_url: str,
                                                           status_key: str) -> None:
    w = start_worker(own_redis.url)
    _send_all_and_check(own_redis.url, redis_url, status_key, w.queue)
