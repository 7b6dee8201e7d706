"""Events that are never lost: a sink wrapper that spools to a local, fsync'd file while its sink is unreachable.

:class:`SpoolSink` wraps the real sink (Redis). Every document it is given is first stamped with ``event_id`` (a
uuid4, unique) and ``event_seq`` (per source -- the worker's name -- consecutive within a process and increasing
across restarts), so a consumer can drop duplicates and notice gaps. Then:

* no backlog: the document goes straight to the inner sink; if that fails it is appended to this process's spool
  segment instead (one ``write`` + ``fsync`` per record) and a replay thread starts;
* backlog: it is appended behind what is already waiting, never sent ahead of it, so order is kept;
* the replay thread resends the segment in order with a growing back-off; once it has caught up (checked under
  the same lock ``push`` takes) documents go straight to the sink again.

A segment belongs to the process holding its ``flock``. Segments left by a process that died (lock free) are
adopted when a sink opens the spool dir and replayed *before* anything the new process sends. Delivery progress is
kept in a sidecar offset file (``pwrite``, not fsync'd): a crash can resend a few records, never lose one --
at-least-once, and ``event_id`` makes duplicates harmless.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.errors import EventSinkError
from sandbox_runner.events.base import EventSink, pack
from sandbox_runner.events.spoolfile import SUFFIX, Segment, Sequence, orphans, safe_name

log = structlog.get_logger("sandbox_runner.events")

Status = tuple[str, str, int] | None


class SpoolSink:
    def __init__(self, inner: EventSink, directory: Path, *, source: str,
                 retry_min: float = 0.2, retry_max: float = 5.0) -> None:
        self.inner, self.directory, self.source = inner, directory, source
        self.description = f"{inner.description} (spool {directory})"
        self.retry_min, self.retry_max = retry_min, retry_max
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._own: Segment | None = None
        self._seq = Sequence(directory, source)
        self._adopted: list[Segment] = []
        for seg in orphans(directory):
            if seg.offset < seg.size():
                self._adopted.append(seg)
            else:
                seg.remove()  # fully delivered before its process died
        self._backlog = bool(self._adopted)
        if self._adopted:
            log.info("event-spool-adopted", segments=[str(s.path) for s in self._adopted], backlog=self._backlog)
            self._start_replay()

    # -- the sink ---------------------------------------------------------------------------------------------------
    def push(self, key: str, doc: dict[str, Any], *, status: Status = None) -> None:
        with self._lock:
            doc["event_id"] = uuid.uuid4().hex
            doc["event_seq"] = self._seq.next()
            if not self._backlog:
                try:
                    self.inner.push(key, doc, status=status)
                    return
                except EventSinkError as exc:
                    log.warning("event-sink-down-spooling", error=str(exc), spool=str(self.directory))
                    self._backlog = True
            self._spool({"k": key, "d": doc, "s": list(status) if status else None})
        self._start_replay()

    @property
    def pending(self) -> bool:
        return self._backlog

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the backlog to drain. True when nothing is left waiting."""
        if self._backlog:
            self._start_replay()
            self._wake.set()
        deadline = time.monotonic() + timeout
        while self._backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._backlog

    def close(self, flush_timeout: float = 2.0) -> None:
        self.flush(flush_timeout)
        with self._lock:
            self._closed = True
            self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_timeout + 1)
        with self._lock:
            for seg in self._adopted:
                os.close(seg.fd)  # left for the next process to adopt
            if self._own is not None:
                if self._own.offset >= self._own.size():
                    self._own.remove()
                else:
                    os.close(self._own.fd)
                    log.warning("event-spool-left", path=str(self._own.path))
            self._adopted, self._own = [], None
        self.inner.close()

    # -- spooling and replay ----------------------------------------------------------------------------------------
    def _spool(self, record: dict[str, Any]) -> None:
        try:
            if self._own is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / f"{safe_name(self.source)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{SUFFIX}"
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._own = Segment(path, fd)
            self._own.append(pack(record))
        except OSError as exc:
            raise EventSinkError(f"event sink down and cannot spool to {self.directory}: {exc.strerror}") from None

    def _start_replay(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()) or not self._backlog:
                return
            self._thread = threading.Thread(target=self._replay, name="event-spool-replay", daemon=True)
            self._thread.start()

    def _replay(self) -> None:
        delay = self.retry_min
        while True:
            if self._drain_once():
                log.info("event-spool-replayed")
                return
            with self._lock:
                if self._closed:
                    return
            self._wake.wait(delay)
            self._wake.clear()
            delay = min(delay * 2, self.retry_max)

    def _drain_once(self) -> bool:
        while self._adopted:
            seg = self._adopted[0]
            if not seg.deliver(self.inner, final=True):
                return False
            with self._lock:
                seg.remove()
                self._adopted.pop(0)
        while True:
            own = self._own
            if own is not None and not own.deliver(self.inner, final=False):
                return False
            with self._lock:
                if own is None or own.offset >= own.size():
                    if own is not None:
                        own.reset()
                    self._backlog = False
                    return True
            # more was appended while we were sending: go round again, still behind the lock-free read
