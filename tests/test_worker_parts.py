"""The worker's parts on their own, against real services where they have one: names, the drain guard, the
redelivery lease (real Redis), the event spool (a redis-server of the test's own, stopped and started), the
``workers`` states."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis
from celery_helpers import OwnRedis, free_port
from conftest import REPO

from sandbox_runner.events.sinks import RedisSink
from sandbox_runner.events.spool import SpoolSink
from sandbox_runner.worker.commands import worker_states
from sandbox_runner.worker.drain import DrainGuard
from sandbox_runner.worker.lease import LeaseGuard
from sandbox_runner.worker.naming import first_free_name, make_name, parse_name

pytest_plugins = ["celery_fixtures"]


# -- names -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("queue", "instance", "host"), [
    ("factotum-job_worker-small", 3, "node-7"), ("system.jobs.queue", 12, "ip-10-0-0-1.ec2.internal"),
    ("q", 0, "h"), ("jobs.10.x", 1, "a.b.c")])
def test_names_parse_back(queue: str, instance: int, host: str) -> None:
    name = make_name(queue, instance, host)
    text = str(name)
    assert text.startswith("celery@") and f".{instance:02d}." in text
    assert parse_name(text) == name and "." not in name.program
    assert name.fields() == {"worker_program": name.program, "worker_instance": instance, "worker_host": host}


@pytest.mark.parametrize("text", ["celery@localhost", "worker1@host", "celery@q.x.host", ""])
def test_unconventional_names_do_not_parse(text: str) -> None:
    assert parse_name(text) is None


def test_first_free_name_skips_names_held_by_live_workers(tmp_path: Path) -> None:
    held = make_name("q", 1, "h")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(tmp_path / f"{held}.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert first_free_name("q", tmp_path, host="h").instance == 2
    finally:
        holder.kill()
        holder.wait()


# -- drain -----------------------------------------------------------------------------------------------------------
def test_drain_trips_once_on_more_than_threshold_failures_at_the_rate() -> None:
    guard = DrainGuard(threshold=10, window=5.0)
    trips = [guard.record(True, now=100 + 0.1 * i) for i in range(15)]
    assert trips.index(True) == 10 and trips.count(True) == 1  # the 11th failure, once


def test_slow_failures_or_a_success_are_not_a_drain() -> None:
    slow = DrainGuard(threshold=10, window=5.0)
    assert not any(slow.record(True, now=100 + 1.0 * i) for i in range(30))  # 1/s < 2/s
    broken = DrainGuard(threshold=10, window=5.0)
    for i in range(10):
        broken.record(True, now=100 + 0.1 * i)
    broken.record(False, now=101.05)
    assert not any(broken.record(True, now=101.1 + 0.1 * i) for i in range(10))
    assert broken.record(True, now=102.2)  # the new streak's 11th


# -- the redelivery lease ----------------------------------------------------------------------------------------------
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


# -- the event spool -----------------------------------------------------------------------------------------------
def _list(url: str, key: str) -> list[dict]:
    return [msgpack.unpackb(raw, raw=False) for raw in redis.Redis.from_url(url).lrange(key, 0, -1)]


def test_spool_keeps_order_through_an_outage(own_redis: OwnRedis, tmp_path: Path) -> None:
    sink = SpoolSink(RedisSink(own_redis.url), tmp_path / "spool", source="celery@q.01.h", retry_max=0.5)
    sink.push("k", {"n": 0}, status=("t1", "job-started", 60))
    redis.Redis.from_url(own_redis.url).shutdown(save=True)
    own_redis.proc.wait(timeout=10)  # type: ignore[union-attr]
    for n in range(1, 6):
        sink.push("k", {"n": n}, status=("t1", f"s{n}", 60))  # spooled, fsync'd
    assert sink.pending and list((tmp_path / "spool").glob("*.spool"))
    own_redis.start()
    sink.push("k", {"n": 6})  # must queue behind the backlog, not overtake it
    assert sink.flush(timeout=10)
    docs = _list(own_redis.url, "k")
    assert [d["n"] for d in docs] == list(range(7))
    assert [d["event_seq"] for d in docs] == list(range(docs[0]["event_seq"], docs[0]["event_seq"] + 7))
    assert len({d["event_id"] for d in docs}) == 7
    assert redis.Redis.from_url(own_redis.url).get("hysds-job-status-t1") == b"s5"
    sink.close()
    assert not list((tmp_path / "spool").glob("*.spool"))


_CRASHER = """
import os, signal, sys
from pathlib import Path
from sandbox_runner.events.sinks import RedisSink
from sandbox_runner.events.spool import SpoolSink
sink = SpoolSink(RedisSink(sys.argv[1]), Path(sys.argv[2]), source="celery@q.01.h")
for n in range(5):
    sink.push("k", {"n": n, "from": "dead"})
with open(sink._own.path, "ab") as fh:
    fh.write(b"\\x85\\xa1")  # a record torn by the crash
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_process_spool_is_adopted_and_replayed_first(own_redis: OwnRedis, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    crashed = subprocess.run([sys.executable, "-c", _CRASHER, f"redis://127.0.0.1:{free_port()}/0", str(spool)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert len(list(spool.glob("*.spool"))) == 1
    sink = SpoolSink(RedisSink(own_redis.url), spool, source="celery@q.01.h")
    sink.push("k", {"n": 5, "from": "alive"})
    assert sink.flush(timeout=10)
    docs = _list(own_redis.url, "k")
    assert [(d["n"], d["from"]) for d in docs] == [(n, "dead") for n in range(5)] + [(5, "alive")]
    assert docs[-1]["event_seq"] > docs[-2]["event_seq"]  # sequence numbers only grow across processes
    sink.close()
    assert not list(spool.glob("*.spool*"))


def test_a_live_process_spool_is_not_adopted(own_redis: OwnRedis, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = SpoolSink(RedisSink(f"redis://127.0.0.1:{free_port()}/0"), spool, source="a")
    down.push("k", {"n": 1})
    other = SpoolSink(RedisSink(own_redis.url), spool, source="b")
    assert not other.pending and _list(own_redis.url, "k") == []
    other.close()
    assert len(list(spool.glob("*.spool"))) == 1
    down.close(flush_timeout=0.2)


# -- workers ---------------------------------------------------------------------------------------------------------
def test_worker_states() -> None:
    def doc(host: str, status: str, ts: float) -> dict:
        return {"resource": "worker", "celery_hostname": host, "status": status,
                "event": {"timestamp": ts, "freq": 2.0, "active": 1, "processed": 3}}

    now = 1000.0
    docs = [doc("a", "worker-online", 990), doc("a", "worker-heartbeat", 998), doc("b", "worker-heartbeat", 995),
            doc("c", "worker-heartbeat", 999), doc("c", "worker-offline", 999.5), {"resource": "job"}]
    states = {r["hostname"]: (r["state"], r["reason"]) for r in worker_states(docs, now=now)}
    assert states == {"a": ("online", "worker-heartbeat"), "b": ("offline", "missed beats"),
                      "c": ("offline", "worker-offline")}


def test_spool_dir_unwritable_still_numbers_events(tmp_path: Path, own_redis: OwnRedis) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a dir")
    sink = SpoolSink(RedisSink(own_redis.url), blocked / "spool", source="x")
    for n in range(3):
        sink.push("k", {"n": n})
    seqs = [d["event_seq"] for d in _list(own_redis.url, "k")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert os.path.isfile(blocked)
