"""Where msgpack documents go: Redis (as HySDS), a local msgpack file, or memory (tests).

Each meets :class:`sandbox_runner.events.base.EventSink`. Redis errors are translated to EventSinkError here.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from sandbox_runner.errors import EventSinkError
from sandbox_runner.events.base import EventSink, pack
from sandbox_runner.workroot import WorkRoot

STATUS_KEY_PREFIX = "hysds-job-status-"


class RedisSink:
    def __init__(self, url: str) -> None:
        import redis  # imported here: the file sink path should not pay for it

        self.description = f"redis {url}"
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._error = redis.RedisError

    def push(self, key: str, doc: dict[str, Any], *, status: tuple[str, str, int] | None = None) -> None:
        try:
            pipe = self._redis.pipeline(transaction=True)
            if status is not None:
                task_id, value, ttl = status
                pipe.set(f"{STATUS_KEY_PREFIX}{task_id}", value, ex=ttl)
            pipe.rpush(key, pack(doc))
            pipe.execute()
        except self._error as exc:
            raise EventSinkError(f"cannot deliver event to {self.description}: {exc}") from None

    def close(self) -> None:
        self._redis.close()


class FileSink:
    """Appends ``{"key": ..., "doc": ...}`` records as a msgpack stream; one ``write`` per record, under flock,
    so concurrent jobs on one node can share the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EventSinkError(f"cannot create event file dir {path.parent}: {exc.strerror}") from None

    def push(self, key: str, doc: dict[str, Any], *, status: tuple[str, str, int] | None = None) -> None:
        record = pack({"key": key, "doc": doc})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, record)
            finally:
                os.close(fd)
        except OSError as exc:
            raise EventSinkError(f"cannot write event to {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps documents in a list: for unit tests of the runner logic."""

    description = "memory"

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.statuses: dict[str, str] = {}

    def push(self, key: str, doc: dict[str, Any], *, status: tuple[str, str, int] | None = None) -> None:
        # round-trip through msgpack so tests see exactly what a consumer would
        self.records.append((key, msgpack.unpackb(pack(doc), raw=False)))
        if status is not None:
            self.statuses[status[0]] = status[1]

    def docs(self) -> list[dict[str, Any]]:
        return [doc for _, doc in self.records]

    def close(self) -> None:
        pass


def open_sink(redis_url: str | None, work_root: Path, *, spool_dir: Path | None = None,
              source: str | None = None) -> EventSink:
    """Redis behind a local spool (events are never lost while it is unreachable), else the local file."""
    if redis_url:
        import socket

        from sandbox_runner.events.spool import SpoolSink

        return SpoolSink(RedisSink(redis_url), spool_dir or WorkRoot(work_root).event_spool,
                         source=source or f"sandbox-runner@{socket.gethostname()}")
    return FileSink(WorkRoot(work_root).event_file)


def read_file_events(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a FileSink file, in order."""
    with path.open("rb") as fh:
        yield from msgpack.Unpacker(fh, raw=False)


def read_redis_events(url: str, key: str, start: int = 0, end: int = -1) -> Iterator[dict[str, Any]]:
    import redis

    try:
        items = redis.Redis.from_url(url, socket_connect_timeout=2).lrange(key, start, end)
    except redis.RedisError as exc:
        raise EventSinkError(f"cannot read {key} from redis {url}: {exc}") from None
    for raw in items:
        yield {"key": key, "doc": msgpack.unpackb(raw, raw=False)}
