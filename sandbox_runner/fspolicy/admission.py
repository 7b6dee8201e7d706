"""Admission: a job starts only if its disk need fits in what is free minus what running jobs already reserved.

Check-and-reserve happens under one ``flock`` on the work root directory itself (it needs no inode, so it works on
a disk with none left), shared by every worker process on the node and by the scrubbers. A reservation is a file
``<root>/reservations/<pid>-<id>.json`` whose own ``flock`` its holder keeps for the job's life: when the process
dies the kernel drops the lock, and the next admission sees a free lock, ignores the reservation and deletes it.
No PID checks (PIDs are reused), no timestamps.

The accounting is deliberately the simple one: free bytes minus every live reservation. It double-counts what a
running job has already written (that is no longer free *and* still reserved), which errs towards refusing; the
other way round would let two jobs pass on the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_runner.errors import DiskSpaceError
from sandbox_runner.fspolicy.policy import FsPolicy
from sandbox_runner.fspolicy.report import Space
from sandbox_runner.units import format_size
from sandbox_runner.workroot import WorkRoot

if TYPE_CHECKING:
    from sandbox_runner.events.emitter import Emitter

@contextlib.contextmanager
def root_lock(root: str) -> Iterator[None]:
    """Exclusive lock on the work root dir: admissions and scrubs on this root happen one at a time."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Reservation:
    path: str
    bytes: int
    inodes: int
    _fd: int | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the reservation back (idempotent). Unlink before closing: a reader never sees a free lock first."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


@dataclass(frozen=True)
class Reserved:
    bytes: int = 0
    inodes: int = 0
    jobs: int = 0


def live_reservations(root: str, *, clean: bool = True) -> Reserved:
    """Sum the reservations whose holder is alive; delete those whose holder died (``clean``).

    Call under :func:`root_lock`, so no reservation is being written while it is read."""
    rdir = os.fspath(WorkRoot(Path(root)).reservations)
    total = Reserved()
    try:
        it = os.scandir(rdir)
    except (FileNotFoundError, NotADirectoryError):
        return total
    with it:
        for entry in it:
            if not entry.name.endswith(".json"):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # held: a live job's reservation
                    doc = json.loads(os.read(fd, 4096) or b"{}")
                    total = Reserved(total.bytes + int(doc.get("bytes", 0)),
                                     total.inodes + int(doc.get("inodes", 0)), total.jobs + 1)
                else:  # its process is gone: the reservation went with it
                    with contextlib.suppress(FileNotFoundError):
                        if clean:
                            os.unlink(entry.path)
            except (ValueError, TypeError, AttributeError):
                continue  # unreadable content: not one of ours, ignore rather than guess
            finally:
                os.close(fd)
    return total


def _reserve(root: str, need_bytes: int, need_inodes: int, job_id: str) -> Reservation:
    rdir = os.fspath(WorkRoot(Path(root)).reservations)
    with contextlib.suppress(FileExistsError):
        os.mkdir(rdir, 0o755)
    path = os.path.join(rdir, f"{os.getpid()}-{uuid.uuid4().hex}.json")
    # O_CLOEXEC: the job's command must not inherit the fd, or an orphaned child would keep the reservation alive
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"bytes": need_bytes, "inodes": need_inodes, "job_id": job_id,
                             "pid": os.getpid()}).encode())
    return Reservation(path, need_bytes, need_inodes, fd)


def _wants(space: Space, policy: FsPolicy, reserved: Reserved, need_bytes: int, need_inodes: int) -> tuple[int, int]:
    keep_bytes, keep_inodes = policy.keep_free(space.capacity, space.files)
    return keep_bytes + reserved.bytes + need_bytes, keep_inodes + reserved.inodes + need_inodes


def admit(root: str | Path, policy: FsPolicy, *, need_bytes: int, job_id: str, emitter: Emitter | None = None,
          need_inodes: int | None = None, protect: Iterable[str | Path] = ()) -> Reservation:
    """Reserve ``need_bytes`` (and the policy's ``job_inodes``) under ``root``, scrubbing if short.

    Raises :class:`DiskSpaceError` saying what was needed and what is free when even the ladder cannot make room.
    """
    real = os.path.realpath(root)
    inodes = policy.job_inodes if need_inodes is None else need_inodes
    with root_lock(real):
        reserved = live_reservations(real)
        space = Space.of(real)
        want_b, want_i = _wants(space, policy, reserved, need_bytes, inodes)
        freed = 0
        if space.free < want_b or (space.files and space.ffree < want_i):
            from sandbox_runner.fspolicy.ladder import Scrubber  # only when space is short

            scrubber = Scrubber(real, policy, emitter, protect=protect)
            scrubber.ladder(want_b, want_i)
            freed = scrubber.report.freed
            space = Space.of(real)
        short_b = space.free < want_b
        short_i = bool(space.files) and space.ffree < want_i
        if not (short_b or short_i):
            try:
                return _reserve(real, need_bytes, inodes, job_id)
            except OSError as exc:  # e.g. ENOSPC for the reservation file itself
                message = f"cannot record the disk reservation under {real}: {exc.strerror}"
                _refused(emitter, real, job_id, message, need_bytes, space, freed)
                raise DiskSpaceError(message) from None
        message = _refusal(real, policy, space, reserved, need_bytes, inodes, freed, short_b)
        _refused(emitter, real, job_id, message, need_bytes, space, freed)
        raise DiskSpaceError(message)


def _refusal(root: str, policy: FsPolicy, space: Space, reserved: Reserved, need_b: int, need_i: int, freed: int,
             bytes_short: bool) -> str:
    keep_b, keep_i = policy.keep_free(space.capacity, space.files)
    running = f" reserved by {reserved.jobs} running job(s)"
    after = f" after scrubbing freed {format_size(freed)}" if freed else " and nothing more could be scrubbed"
    if bytes_short:
        held = f", {format_size(reserved.bytes)}{running}" if reserved.jobs else ""
        return (f"not enough disk space under {root}: the job needs {format_size(need_b)} plus "
                f"{format_size(keep_b)} that must stay free ({policy.space_percent:g}% of "
                f"{format_size(space.capacity)}){held}, but only {format_size(space.free)} is free{after}")
    held = f", {reserved.inodes} inodes{running}" if reserved.jobs else ""
    return (f"not enough inodes under {root}: the job needs {need_i} inodes plus {keep_i} that must stay free "
            f"({policy.inodes_percent:g}% of {space.files}){held}, but only {space.ffree} are free{after}")


def _refused(emitter: Emitter | None, root: str, job_id: str, message: str, need: int, space: Space,
             freed: int) -> None:
    if emitter is not None:
        from sandbox_runner.fspolicy.ladder import EVENT_TYPE

        emitter.event(EVENT_TYPE, "refused", {"root": root, "job_id": job_id, "need_bytes": need,
                                              "free_bytes": space.free, "free_inodes": space.ffree,
                                              "bytes_freed": freed, "message": message})
