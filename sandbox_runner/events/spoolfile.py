"""The spool's files: per-source sequence numbers, and segments (one append-only msgpack file per process).

A segment belongs to the process holding its ``flock``; its delivery progress is a sidecar offset file. See
:mod:`sandbox_runner.events.spool` for how the sink uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

import msgpack
import structlog

from sandbox_runner.errors import EventSinkError
from sandbox_runner.events.base import EventSink

log = structlog.get_logger("sandbox_runner.events")

SEQ_BLOCK = 1000  # sequence numbers reserved (and fsync'd) at a time
SUFFIX = ".spool"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:100] or "events"


class Sequence:
    """Per-source sequence numbers: a block of ``SEQ_BLOCK`` is reserved in ``<dir>/<source>.seq`` under flock
    (one fsync per block), so numbers are consecutive within a process and only ever grow across restarts."""

    def __init__(self, directory: Path, source: str) -> None:
        self.path = directory / f"{safe_name(source)}.seq"
        self._next = self._end = 0

    def _reserve(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            # no spool dir: still unique and increasing per process, from the clock (gaps mean nothing then)
            log.warning("event-seq-unpersisted", path=str(self.path), error=exc.strerror)
            self._next = max(self._next, time.time_ns() // 1000)
            self._end = self._next + SEQ_BLOCK
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0).strip()
            start = max(int(raw) if raw.isdigit() else 1, self._next)  # never backwards, even after a fallback
            os.pwrite(fd, f"{start + SEQ_BLOCK:<20d}\n".encode(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._next, self._end = start, start + SEQ_BLOCK

    def next(self) -> int:
        if self._next >= self._end:
            self._reserve()
        value = self._next
        self._next += 1
        return value


class Segment:
    """One spool file plus its offset sidecar; the instance holds the file's flock while it exists."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        self.off_path = path.with_name(path.name + ".off")
        raw = b""
        with contextlib.suppress(OSError):
            raw = self.off_path.read_bytes()
        self.offset = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0

    @classmethod
    def adopt(cls, path: Path) -> Segment | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its process still lives (or another sink adopted it first)
            os.close(fd)
            return None
        return cls(path, fd)

    def append(self, record: bytes) -> None:
        os.write(self.fd, record)  # O_APPEND: one write per record
        os.fsync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def _save_offset(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.off_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, self.offset.to_bytes(8, "little"), 0)
            finally:
                os.close(fd)

    def deliver(self, sink: EventSink, *, final: bool) -> bool:
        """Send every complete record after the offset, in order. False when the sink failed (retry later).

        ``final``: nobody appends any more (an adopted segment), so bytes that do not form a record are a record
        torn by a crash mid-write and are dropped, loudly."""
        size = self.size()
        if self.offset >= size:
            return True
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(os.pread(self.fd, size - self.offset, self.offset))
        start = self.offset
        try:
            for record in unpacker:
                status = tuple(record["s"]) if record.get("s") else None
                sink.push(record["k"], record["d"], status=status)
                self.offset = start + unpacker.tell()
                self._save_offset()
        except EventSinkError:
            return False
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            log.error("event-spool-corrupt", path=str(self.path), offset=self.offset, error=str(exc))
            self.offset = size
            self._save_offset()
        if final and self.offset < size:
            log.error("event-spool-torn-record", path=str(self.path), bytes=size - self.offset)
            self.offset = size
        return True

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.offset = 0
        with contextlib.suppress(FileNotFoundError):
            self.off_path.unlink()

    def remove(self) -> None:
        for p in (self.off_path, self.path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        os.close(self.fd)


def orphans(directory: Path) -> list[Segment]:
    """Segments whose process is gone, oldest last write first (each process appends in order)."""
    found: list[tuple[float, Segment]] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in directory.glob(f"*{SUFFIX}"):
            seg = Segment.adopt(path)
            if seg is not None:
                found.append((os.fstat(seg.fd).st_mtime, seg))
    return [seg for _, seg in sorted(found, key=lambda pair: pair[0])]
