"""The event spool in front of Redis (a redis-server of the test's own, stopped and started): order kept through
an outage, a dead process's spool adopted and replayed first, a live one's left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import redis
from support.celery_helpers import OwnRedis, free_port
from support.machine import REPO

from sandbox_runner.events.sinks import RedisSink
from sandbox_runner.events.spool import SpoolSink


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


def test_spool_dir_unwritable_still_numbers_events(tmp_path: Path, own_redis: OwnRedis) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a dir")
    sink = SpoolSink(RedisSink(own_redis.url), blocked / "spool", source="x")
    for n in range(3):
        sink.push("k", {"n": n})
    seqs = [d["event_seq"] for d in _list(own_redis.url, "k")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert os.path.isfile(blocked)
