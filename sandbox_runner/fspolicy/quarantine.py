"""``<root>/quarantine/``: where condemned job dirs wait to be purged.

A job dir leaves ``jobs/`` by one atomic rename on the same filesystem: nobody ever sees a half-deleted job dir,
and a purge interrupted by a crash is simply resumed later. An entry's name carries everything the purge needs,
so listing the quarantine never has to walk inside it::

    <ns since epoch, 20 digits>.<bytes>.<inodes>.<YYYYMMDDHHMI start minute>.<job dir name>

The leading timestamp makes name order the order of quarantine, so "oldest first" is a name sort. The sort is
done in bounded batches (``heapq.nsmallest``), so a quarantine of a million entries costs time, not memory.
"""

from __future__ import annotations

import errno
import heapq
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox_runner.workroot import WorkRoot

BATCH = 256


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    bytes: int
    inodes: int
    quarantined_at: float  # seconds since the epoch

    @property
    def job_id(self) -> str:
        parts = self.name.split(".", 4)
        return parts[4] if len(parts) == 5 else self.name


def entry_name(size: int, inodes: int, stamp: str, job_dir_name: str, now_ns: int | None = None) -> str:
    return f"{now_ns if now_ns is not None else time.time_ns():020d}.{size}.{inodes}.{stamp}.{job_dir_name}"


def _entry(qdir: str, name: str, measure: Callable[[str], tuple[int, int]]) -> Entry:
    path = os.path.join(qdir, name)
    parts = name.split(".", 4)
    try:
        ns, size, inodes = int(parts[0]), int(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        # put there by hand (or an older layout): measure it, and treat it as the oldest
        size, inodes = measure(path)
        ns = 0
    return Entry(name, path, size, inodes, ns / 1e9)


def _names(qdir: str, after: str | None) -> Iterator[str]:
    try:
        with os.scandir(qdir) as it:
            for entry in it:
                if (after is None or entry.name > after) and not entry.name.startswith(".tmp"):
                    yield entry.name
    except (FileNotFoundError, NotADirectoryError):
        return


def oldest_first(qdir: str, measure: Callable[[str], tuple[int, int]], batch: int = BATCH,
                 after: str | None = None) -> Iterator[Entry]:
    """Quarantine entries (named after ``after``) in quarantine order, listing the directory once per ``batch``."""
    while True:
        names = heapq.nsmallest(batch, _names(qdir, after))
        if not names:
            return
        for name in names:
            yield _entry(qdir, name, measure)
        after = names[-1]
        if len(names) < batch:
            return


def totals(qdir: str, measure: Callable[[str], tuple[int, int]], after: str | None = None,
           skip: Container[str] = ()) -> tuple[int, int]:
    """(bytes, inodes) that purging the whole quarantine would give back, streamed; entries in ``skip`` (whose
    purge already failed) give nothing back and are not counted."""
    size = inodes = 0
    for name in _names(qdir, after):
        if name in skip:
            continue
        e = _entry(qdir, name, measure)
        size, inodes = size + e.bytes, inodes + e.inodes
    return size, inodes


def ensure_dir(root: str) -> str | None:
    """``<root>/quarantine`` (created if need be), or None when it cannot be used: then dirs are purged in place.

    A symlinked quarantine would make the rename carry a job dir out of the root, so it is refused.
    """
    qdir = os.fspath(WorkRoot(Path(root)).quarantine)
    try:
        os.mkdir(qdir, 0o755)
    except FileExistsError:
        pass
    except OSError:  # out of inodes, read-only parent: fall back to deleting in place
        return None
    if os.path.islink(qdir) or not os.path.isdir(qdir):
        return None
    return qdir


def move_in(qdir: str, job_path: str, name: str) -> str | None:
    """Rename ``job_path`` to ``qdir/name``. None when it is gone already or the rename cannot be atomic."""
    dest = os.path.join(qdir, name)
    try:
        os.rename(job_path, dest)
    except FileNotFoundError:
        return None  # another scrubber got there first
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ENOSPC, errno.EDQUOT, errno.EMLINK):
            return None  # jobs/ on another filesystem, or no room for one more entry: caller purges in place
        raise
    return dest


def _refused(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def move_refusal(job_path: str, qdir: str | None, mounts: Container[str]) -> OSError | None:
    """The error :func:`move_in` would meet moving ``job_path`` (a dry run's prediction), or None.

    The kernel's checks for renaming a dir into another dir, in its order: the parent must be writable and
    searchable, and if sticky, the dir or the parent must be ours; the dir itself must be writable (its ``..``
    changes); it must not be a mount point. Root passes the permission checks. None also when the move could
    not be atomic: the real run then purges in place, which this does not try to predict.
    """
    try:
        st, parent = os.lstat(job_path), os.lstat(os.path.dirname(job_path))
    except OSError as exc:
        return None if isinstance(exc, FileNotFoundError) else exc
    if os.geteuid() == 0:
        return _refused(errno.EBUSY, job_path) if job_path in mounts else None
    if not os.access(os.path.dirname(job_path), os.W_OK | os.X_OK) or \
            (qdir is not None and os.path.isdir(qdir) and not os.access(qdir, os.W_OK | os.X_OK)):
        return _refused(errno.EACCES, job_path)
    if parent.st_mode & stat.S_ISVTX and os.geteuid() not in (st.st_uid, parent.st_uid):
        return _refused(errno.EPERM, job_path)
    if not os.access(job_path, os.W_OK):
        return _refused(errno.EACCES, job_path)
    # the kernel checks permissions first and only then whether the dir is a mount point
    return _refused(errno.EBUSY, job_path) if job_path in mounts else None


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come octal-escaped (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(under: str) -> frozenset[str]:
    """Mount points at or below ``under`` in this process's mount namespace (``/proc/self/mountinfo``).

    Bind mounts from the same filesystem share its ``st_dev``, so comparing devices with the parent would miss
    them; the mount table does not. Empty when it cannot be read (no /proc): then a dry run predicts no EBUSY.
    """
    prefix = under.rstrip(os.sep) + os.sep
    found: set[str] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4:
                    point = _unescape(fields[4])
                    if point.startswith(prefix):
                        found.add(point)
    except OSError:
        return frozenset()
    return frozenset(found)


def purge(path: str) -> OSError | None:
    """Delete a dir without following symlinks (``shutil.rmtree`` walks by file descriptor on Linux).

    Returns the first error, if any: files a container wrote as a sub-uid cannot be deleted by the worker
    user, and those must be reported, not silently left behind (HySDS uses ``ignore_errors=True``).
    """
    errors: list[OSError] = []

    def onexc(func: object, p: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, OSError) and not errors:
            # rmtree walks by fd and names the file relative to its dir: say which file, in full
            if isinstance(p, str) and exc.filename is not None and not os.path.isabs(os.fsdecode(exc.filename)):
                exc = type(exc)(exc.errno, exc.strerror, p)
            errors.append(exc)

    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):  # a symlink or stray file put there by hand
            os.unlink(path)
            return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onexc)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: onexc(func, p, info[1]))
    return errors[0] if errors else None
