"""The redelivery lease on a real Redis: a live owner keeps its job, a dead one is taken over and fenced out, a
finished job never runs twice, a job-offline one runs again once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from support.celery_helpers import free_port

from sandbox_runner.worker.lease import LeaseGuard


@pytest.fixture
def task_id(redis_url: str) -> Iterator[str]:
    tid = f"sr-test-{uuid.uuid4()}"
    yield tid
    r = redis.Redis.from_url(redis_url)
    r.delete(f"sandbox-runner-lease-{tid}", f"sandbox-runner-fence-{tid}", f"hysds-job-status-{tid}",
             f"hysds-revoked-task-{tid}", f"hysds-task-worker-{tid}")


def test_a_live_owner_keeps_its_job(redis_url: str, task_id: str) -> None:
    owner = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.5).admit(task_id)
    assert owner.run and owner.reason == "new" and owner.lease is not None and owner.lease.token == 1
    assert redis.Redis.from_url(redis_url).get(f"hysds-task-worker-{task_id}") == b"celery@a.01.h"  # as HySDS
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.5):
            assert owner.lease is not None and owner.lease.renew()

    threading.Thread(target=renew, daemon=True).start()
    try:
        t0 = time.monotonic()
        other = LeaseGuard(redis_url, "celery@b.01.h", ttl=1.5).admit(task_id)
        assert not other.run and other.reason == "running-elsewhere" and other.holder == "celery@a.01.h"
        assert time.monotonic() - t0 < 1.5  # it saw a renewal; no fixed sleep
    finally:
        stop.set()


def test_a_dead_owner_is_taken_over_and_fenced_out(redis_url: str, task_id: str) -> None:
    redis.Redis.from_url(redis_url).set(f"hysds-job-status-{task_id}", "job-started")
    dead = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.0).admit(task_id)
    assert dead.lease is not None
    t0 = time.monotonic()
    new = LeaseGuard(redis_url, "celery@b.01.h", ttl=1.0).admit(task_id)  # nobody renews: it expires
    assert new.run and new.reason == "taken-over" and new.lease is not None and new.lease.token == 2
    assert time.monotonic() - t0 <= 2.5
    assert not dead.lease.holds() and dead.lease.renew() is False  # the fencing token says: not yours any more
    assert new.lease.holds()
    dead.lease.release()  # a stale release must not free the new owner's lease
    assert new.lease.holds()


def test_finished_or_revoked_jobs_are_not_run(redis_url: str, task_id: str) -> None:
    r = redis.Redis.from_url(redis_url)
    guard = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.0)
    r.set(f"hysds-job-status-{task_id}", "job-completed")
    assert guard.admit(task_id).reason == "finished"
    r.set(f"hysds-job-status-{task_id}", "job-queued")
    r.set(f"hysds-revoked-task-{task_id}", "1")
    assert guard.admit(task_id).reason == "revoked"


@pytest.mark.parametrize("status", ["job-completed", "job-failed", "job-revoked", "job-deduped"])
def test_a_truly_finished_job_is_never_run_again(redis_url: str, task_id: str, status: str) -> None:
    redis.Redis.from_url(redis_url).set(f"hysds-job-status-{task_id}", status)
    admission = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.0).admit(task_id)
    assert not admission.run and admission.reason == "finished" and admission.status == status


def test_a_job_offline_runs_again_once_fenced(redis_url: str, task_id: str) -> None:
    """job-offline: reconcile closed a run whose worker died; the redelivered message runs it again, under a
    newer token (the dead run, should it wake, is fenced out), and a second delivery meanwhile is not run."""
    r = redis.Redis.from_url(redis_url)
    dead = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.0).admit(task_id)
    assert dead.lease is not None and dead.lease.token == 1
    r.delete(f"sandbox-runner-lease-{task_id}")  # reconcile clears its dead predecessor's lease
    r.set(f"hysds-job-status-{task_id}", "job-offline")
    guard = LeaseGuard(redis_url, "celery@a.01.h", ttl=1.0)
    again = guard.admit(task_id)
    assert again.run and again.reason == "taken-over" and again.lease is not None and again.lease.token == 2
    assert not dead.lease.holds() and not guard.finished(task_id)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            assert again.lease is not None and again.lease.renew()

    threading.Thread(target=renew, daemon=True).start()
    try:
        twice = LeaseGuard(redis_url, "celery@b.01.h", ttl=1.0).admit(task_id)
        assert not twice.run and twice.reason == "running-elsewhere"
    finally:
        stop.set()


def test_no_redis_fails_open() -> None:
    admission = LeaseGuard(f"redis://127.0.0.1:{free_port()}/0", "celery@a.01.h", ttl=1.0).admit("x")
    assert admission.run and admission.reason == "unguarded" and admission.lease is None
