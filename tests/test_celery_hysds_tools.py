"""Celery as HySDS's tools see it (issue 9), against a real RabbitMQ, Redis, podman and ``sandbox-runner worker``:
a revoked job frees its slot only once its container is gone; worker documents in mozart's process_events shape
(or none); Flower 2.2 reading our msgpack events."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

import pytest
from celery_helpers import client, containers, statuses, wait_for
from conftest import Worker, make_job
from test_celery_worker import send, wait_status

pytest_plugins = ["celery_fixtures"]  # rabbit_url, own_redis, run_dir, start_worker
pytestmark = [pytest.mark.podman, pytest.mark.slow]


class PodmanEvents:
    """``podman events`` for containers, as srunner, streamed from now on: (status, task id label, time)."""

    def __init__(self, user: Worker) -> None:
        argv = ["runuser", "-u", user.name, "--", "env", "-i", *[f"{k}={v}" for k, v in user.env().items()],
                "podman", "--remote", "--url", f"unix://{user.socket}", "events", "--format", "json",
                "--filter", "type=container"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.seen: list[tuple[str, str | None, float]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(1.0)  # the stream is open before anything happens

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            e = json.loads(line)
            task_id = (e.get("Attributes") or {}).get("sandbox_runner.task_id")
            self.seen.append((e["Status"], task_id, _podman_time(e["Time"])))

    def first(self, status: str, task_id: str) -> float | None:
        return next((t for s, tid, t in list(self.seen) if s == status and tid == task_id), None)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _podman_time(text: str) -> float:
    """``2026-12-03T11:53:34.916029641Z`` (nanoseconds) -> epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def _doc_time(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00")).timestamp()


def test_a_revoked_job_frees_its_slot_only_when_its_container_is_gone(start_worker, podman_ready: Worker,
                                                                      rabbit_url: str, redis_url: str,
                                                                      status_key: str) -> None:
    """``-c 1``: the revoked job's container ignores SIGTERM and dies only at the grace's SIGKILL, 4 s later; the
    job queued behind it must not start (no create, no job-started) before that container is removed."""
    from kombu import Connection

    w = start_worker(rabbit_url, SANDBOX_RUNNER_STOP_GRACE="4")
    events = PodmanEvents(podman_ready)
    try:
        first = make_job("sh -c 'trap \"\" TERM; while true; do sleep 1; done'")
        send(rabbit_url, redis_url, w.queue, first)
        wait_status(redis_url, status_key, first["task_id"], "job-started")
        label = f"sandbox_runner.task_id={first['task_id']}"
        wait_for(lambda: any(c["State"] == "running" for c in containers(podman_ready, label)), 30,
                 what="the first job's container running")
        second = make_job("echo next")
        r_second = send(rabbit_url, redis_url, w.queue, second)
        time.sleep(0.5)  # queued on the broker behind the running job
        t_revoke = time.time()
        client(rabbit_url, redis_url).control.revoke(first["task_id"], terminate=True)
        time.sleep(1.5)
        # still stopping (it ignores SIGTERM): the slot is busy, so the next message stays on the broker, ready
        # for any idle worker, instead of being delivered to this one
        assert [c["State"] for c in containers(podman_ready, label)] in (["running"], ["stopping"])
        with Connection(rabbit_url) as conn:
            assert conn.default_channel.queue_declare(queue=w.queue, passive=True).message_count == 1
        assert r_second.get(timeout=90)["status"] == "job-completed"
        removed = wait_for(lambda: events.first("remove", first["task_id"]), 10, what="first container removed")
        created = wait_for(lambda: events.first("create", second["task_id"]), 10, what="second container created")
        started = wait_status(redis_url, status_key, second["task_id"], "job-started")
        assert removed - t_revoke >= 3.0, "the first container was meant to outlive SIGTERM by the grace"
        assert created > removed, f"second job's container created {removed - created:.3f}s before the first's removal"
        assert _doc_time(started) > removed
        # the revoke itself is as before: REVOKED, one job-revoked; its message was acked in the end (else prefetch 1
        # would have kept the second job from this worker for good)
        assert client(rabbit_url, redis_url).AsyncResult(first["task_id"]).state == "REVOKED"
        assert statuses(redis_url, status_key, first["task_id"]) == ["job-started", "job-revoked"]
        with Connection(rabbit_url) as conn:
            assert conn.default_channel.queue_declare(queue=w.queue, passive=True).message_count == 0
        assert "container-not-removed" not in w.text() and "Traceback" not in w.text()
    finally:
        events.close()
