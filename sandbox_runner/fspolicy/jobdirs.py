"""Finding and judging job dirs under ``<root>/jobs/YYYY/MM/DD/HH/MI/<job_id>/`` without trusting anything in them.

The layout sorts by start time, so walking it level by level in name order yields the oldest jobs first while
holding only one directory listing per level (at most 60 names for a minute level): memory does not grow with the
number of job dirs. Nothing here follows a symlink: a symlinked level or job dir is skipped, never entered.

A job is *running* while a live process holds the ``flock`` on its marker file; a marker alone proves nothing (a
killed worker leaves ``.running`` behind). The lock is probed on ``.done`` too: ``WorkDir.mark_done`` renames the
locked ``.running`` to ``.done`` and rewrites it before letting go, so a held ``.done`` means close-up is still
writing into the dir.

On shared scratch some dirs belong to someone else: a level the worker cannot list, or a job dir whose markers it
cannot open, is neither entered nor judged; the walk and :func:`classify` say so, and the scrubber reports it.
"""

from __future__ import annotations

import calendar
import contextlib
import enum
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sandbox_runner.job.workdir import DONE, RUNNING

CRASHED_NOTE = ".crashed"  # written once when a crashed job is first reported, so the event is not repeated
_TIME_LEVELS = (4, 2, 2, 2, 2)  # digits of YYYY, MM, DD, HH, MI


class State(enum.Enum):
    RUNNING = "running"  # lock held by a live process: never scrubbed
    CRASHED = "crashed"  # .running (or no marker at all) and nobody holds the lock
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobDir:
    path: str
    state: State
    #: when the job last showed a sign of life: .done's mtime for a finished job, the newest mtime among the dir
    #: and its entries for a crashed one. Retention and grace count from here.
    since: float
    reported: bool = False  # a crashed job whose event was already sent

    @property
    def job_id(self) -> str:
        return os.path.basename(self.path)

    @property
    def stamp(self) -> str:
        """``YYYYMMDDHHMI`` from the layout: the job's start minute (UTC)."""
        return "".join(self.path.split(os.sep)[-6:-1])


#: told of a dir that exists but cannot be listed (another user's, mode 700): the walk goes on without it
OnError = Callable[[str, OSError], None]


def _real_dirs(path: str, digits: int | None, on_error: OnError | None = None) -> list[str]:
    """Sorted names of the real (non-symlink) subdirectories of ``path``; time levels keep only well-formed names.

    A dir that cannot be listed (EACCES, EPERM, EIO, ...) yields nothing and is passed to ``on_error``: on shared
    scratch one unreadable dir must not stop the walk over everything else.
    """
    names: list[str] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if digits is not None and not (len(entry.name) == digits and entry.name.isdigit()):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
                except OSError:
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []  # gone meanwhile (another scrubber): nothing to say
    except OSError as exc:
        if on_error is not None:
            on_error(path, exc)
        return []
    names.sort()
    return names


def iter_job_paths(jobs_root: str, on_error: OnError | None = None) -> Iterator[str]:
    """Every job dir path, oldest start minute first (job id order within a minute).

    Dirs it cannot list are left out and passed to ``on_error`` (the subtree under them is not walked)."""

    def walk(path: str, depth: int) -> Iterator[str]:
        if depth == len(_TIME_LEVELS):
            for name in _real_dirs(path, None, on_error):
                yield os.path.join(path, name)
            return
        for name in _real_dirs(path, _TIME_LEVELS[depth], on_error):
            yield from walk(os.path.join(path, name), depth + 1)

    if not os.path.isdir(jobs_root) or os.path.islink(jobs_root):
        return  # a symlinked <root>/jobs points out of the root: not ours to scrub
    yield from walk(jobs_root, 0)


def probe_lock(marker: str) -> bool | None:
    """True when a live process holds the marker's flock, False when nobody does, None when there is no marker.

    Raises :class:`PermissionError` when the marker cannot be opened to probe (another user's dir or file): the
    caller decides whether that counts as held or must be reported.
    """
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except OSError as exc:
        # a symlinked marker is not one we wrote: treat the job as alive, the safe side
        return True if exc.errno == errno.ELOOP else None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock at once
    return False


def lock_held(marker: str) -> bool | None:
    """:func:`probe_lock`, with an unreadable marker taken as held: the safe side for a caller that only asks."""
    try:
        return probe_lock(marker)
    except PermissionError:
        return True


def last_activity(path: str) -> float:
    """Newest mtime of the dir and its direct entries (``_stdout.txt`` grows while an orphaned container runs)."""
    newest = 0.0
    try:
        newest = os.lstat(path).st_mtime
        with os.scandir(path) as it:
            for entry in it:
                if entry.name == CRASHED_NOTE:
                    continue  # our own note is not a sign of life
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return newest


def _exit_code(path: str) -> int | None:
    try:
        fd = os.open(os.path.join(path, "_exit_code"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 32).strip() or b"x")
    except ValueError:
        return None
    finally:
        os.close(fd)


def classify(path: str) -> JobDir:
    """The job dir's state. Raises :class:`PermissionError` when its lock cannot be probed (another user's dir,
    mode 700): such a dir is never touched, and the scrubber reports it rather than calling it running."""
    running = probe_lock(os.path.join(path, RUNNING))
    if running:
        return JobDir(path, State.RUNNING, 0.0)
    if running is None:
        done = os.path.join(path, DONE)
        held = probe_lock(done)
        if held:
            return JobDir(path, State.RUNNING, 0.0)
        if held is False:
            try:
                since = os.lstat(done).st_mtime
            except OSError:  # vanished between the probe and now: someone else is scrubbing it
                return JobDir(path, State.RUNNING, 0.0)
            ok = _exit_code(path) == 0  # no or unreadable _exit_code: failed, kept the longer retention
            return JobDir(path, State.SUCCEEDED if ok else State.FAILED, since)
    # .running with a free lock, or no marker yet (mkdir done, mark_running not): judged by the grace period
    reported = os.path.lexists(os.path.join(path, CRASHED_NOTE))
    return JobDir(path, State.CRASHED, last_activity(path), reported)


def note_crashed(path: str) -> bool:
    """Leave the once-only note that this crash was reported. False if it cannot be written (full disk)."""
    try:
        before = os.lstat(path)
        fd = os.open(os.path.join(path, CRASHED_NOTE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return True
    except OSError:
        return False
    os.close(fd)
    # adding the note bumped the dir's mtime; put it back, or the note itself would restart the grace period
    with contextlib.suppress(OSError):
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)
    return True


def measure(path: str) -> tuple[int, int]:
    """(bytes, inodes) that removing ``path`` would give back, without following symlinks.

    Counts allocated blocks, not apparent sizes (sparse files, tmpfs pages), and skips files with other hard
    links (a localized input linked from the cache stays allocated after the job dir goes).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_blocks * 512, 1) if st.st_nlink <= 1 else (0, 0)
    total, inodes = st.st_blocks * 512, 1
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif est.st_nlink > 1:
                    continue
                total += est.st_blocks * 512
                inodes += 1
    return total, inodes


def _span_end(parts: list[str]) -> float:
    """End (epoch seconds) of the time span a YYYY[/MM[/DD[/HH[/MI]]]] prefix names."""
    n = [int(p) for p in parts] + [1, 1, 0, 0][len(parts) - 1:]
    y, mo, d, h, mi = n[:5]
    if len(parts) == 1:
        return calendar.timegm((y + 1, 1, 1, 0, 0, 0))
    if len(parts) == 2:
        return calendar.timegm((y + mo // 12, mo % 12 + 1, 1, 0, 0, 0))
    start = calendar.timegm((y, mo, d, h, mi, 0))
    return start + {3: 86400, 4: 3600, 5: 60}[len(parts)]


def prune_empty_parents(job_path: str, jobs_root: str, now: float, settle: float = 600.0) -> None:
    """Remove the time dirs a scrubbed job leaves empty, but only spans that ended ``settle`` seconds ago.

    ``WorkDir.create`` makes the current minute's dirs and then the job dir in two steps; removing a dir whose
    span is still current could pull it away in between.
    """
    parent = os.path.dirname(job_path)
    parts = os.path.relpath(parent, jobs_root).split(os.sep)
    while parts and len(parts) <= len(_TIME_LEVELS) and all(p.isdigit() for p in parts):
        if _span_end(parts) > now - settle:
            return
        try:
            os.rmdir(parent)
        except OSError:
            return  # not empty (or gone): the levels above are not empty either
        parent, parts = os.path.dirname(parent), parts[:-1]
