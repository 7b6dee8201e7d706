"""The scrub ladder: free space (and inodes) under the work root, one rung at a time, only as much as needed.

Rungs run in the policy's order (default: succeeded jobs, failed jobs past retention, quarantine purge, cache
eviction) and stop as soon as the target holds. Moving a job dir into quarantine frees nothing by itself, so the
job rungs stop once the quarantine holds enough to cover the shortfall; the purge rung then deletes oldest first,
re-reading ``statvfs`` after each entry, and stops when the disk says the target holds. An entry whose purge fails
(EACCES inside it, a mount in it) covers nothing: the rungs run again without counting it.

On shared scratch some dirs are not ours to touch: a time dir it cannot list, a job dir whose lock it cannot probe
or that it cannot move (another user's, a mount point). Each is reported once as ``skipped`` with its errno, and
the ladder goes on; a dry run predicts the moves the kernel would refuse, so it skips what the real run would.

Never touched: a dir whose lock a live process holds (running, or in close-up), the dirs in ``protect`` (the
current job), anything reached through a symlink, anything outside ``<root>/jobs``, ``<root>/quarantine`` and the
cache. Every action streams: a report keeps counts and sums, and ``on_action`` sees each action as it happens.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox_runner.fspolicy import quarantine as q
from sandbox_runner.fspolicy.cache import EvictableCache, lru_order, open_cache
from sandbox_runner.fspolicy.jobdirs import (
    JobDir,
    State,
    classify,
    iter_job_paths,
    measure,
    note_crashed,
    prune_empty_parents,
)
from sandbox_runner.fspolicy.policy import JOB_RUNGS, FsPolicy
from sandbox_runner.fspolicy.report import Action, Report, Space
from sandbox_runner.workroot import WorkRoot

if TYPE_CHECKING:
    from sandbox_runner.events.emitter import Emitter

EVENT_TYPE = "filesystem"


def describe_error(exc: OSError) -> str:
    """``Permission denied (EACCES): <the file>``: what failed, its errno name and the file it failed on."""
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else ""
    text = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    return text + (f": {exc.filename}" if exc.filename else "")


class Scrubber:
    def __init__(self, root: str | Path, policy: FsPolicy, emitter: Emitter | None = None, *,
                 protect: Iterable[str | Path] = (), dry_run: bool = False,
                 on_action: Callable[[Action], None] | None = None, cache: EvictableCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        # everything below works on paths under the realpath of the root, so no component is a symlink
        self.root = os.path.realpath(root)
        self.layout = WorkRoot(Path(self.root))
        self.policy, self.emitter, self.dry_run, self.on_action = policy, emitter, dry_run, on_action
        self.protect = frozenset(os.path.realpath(p) for p in protect)
        self.cache = cache if cache is not None else open_cache(self.root)
        self.clock = clock
        self.report = Report()
        # dry run: what the actions so far would have given back, and how far the quarantine and the cache
        # have been "purged" (both are consumed oldest first, so a cursor says what is already gone)
        self._simulated = 0, 0
        self._q_cursor: str | None = None
        self._c_cursor: tuple[float, str] | None = None
        # dirs already reported as skipped (every rung walks jobs/ again: say it once per scrub), and the
        # quarantine entries whose purge failed in this scrub (their bytes are not coming back: never count them)
        self._skipped: set[str] = set()
        self._unpurged: set[str] = set()
        self._mounts: frozenset[str] | None = None

    # -- measuring ---------------------------------------------------------------------------------------------
    def space(self) -> Space:
        s = Space.of(self.root)
        if self.dry_run:
            s = Space(s.capacity, s.free + self._simulated[0], s.files, s.ffree + self._simulated[1])
        return s

    def shortfall(self, want_bytes: int, want_inodes: int) -> tuple[int, int]:
        s = self.space()
        return max(0, want_bytes - s.free), (max(0, want_inodes - s.ffree) if s.files else 0)

    # -- the ladder --------------------------------------------------------------------------------------------
    def ladder(self, want_bytes: int, want_inodes: int) -> bool:
        """Scrub until ``want_bytes`` and ``want_inodes`` are free. True when they are."""
        qdir = q.ensure_dir(self.root) if not self.dry_run else os.fspath(self.layout.quarantine)
        # a round's job rungs stop when the quarantine covers the shortfall; if a purge then fails (EACCES inside
        # an entry, a mount in it) that cover was not there: go round again, counting without the failed entries
        while self._round(qdir, want_bytes, want_inodes):
            pass
        self.report.short = self.shortfall(want_bytes, want_inodes)
        return self.report.short == (0, 0)

    def _round(self, qdir: str | None, want_bytes: int, want_inodes: int) -> bool:
        """The rungs once, in the policy's order. True when another round may get further."""
        pending: list[int] | None = None
        failed_before, deferred = len(self._unpurged), False

        def enough(p: list[int]) -> bool:
            sb, si = self.shortfall(want_bytes, want_inodes)
            return p[0] >= sb and p[1] >= si

        for rung in self.policy.order:
            if self.shortfall(want_bytes, want_inodes) == (0, 0):
                break
            if rung in JOB_RUNGS:
                if pending is None:
                    pending = list(q.totals(qdir, measure, self._q_cursor, skip=self._unpurged)) if qdir else [0, 0]
                if enough(pending):
                    deferred = True
                    continue
                for job in self.candidates(rung):
                    size, inodes = self.quarantine(job, qdir)
                    pending[0], pending[1] = pending[0] + size, pending[1] + inodes
                    if enough(pending):
                        deferred = True
                        break
            elif rung == "quarantine" and qdir:
                for entry in q.oldest_first(qdir, measure, after=self._q_cursor):
                    if self.shortfall(want_bytes, want_inodes) == (0, 0):
                        break
                    if entry.name not in self._unpurged:  # failed once in this scrub: it would fail again
                        self._purge(entry, "quarantine")
                if self.dry_run and pending and pending != [0, 0] and \
                        self.shortfall(want_bytes, want_inodes) != (0, 0):
                    # the dirs this dry run "quarantined" are not really there to list: purge them as one lot
                    self._act(Action("purge", "(the job dirs quarantined above)", pending[0], pending[1],
                                     "quarantine"))
                    self._simulate_purge(pending)
            elif rung == "cache":
                for key, used in lru_order(self.cache, after=self._c_cursor):
                    if self.shortfall(want_bytes, want_inodes) == (0, 0):
                        break
                    self.evict(key, used, "cache")
        short = self.shortfall(want_bytes, want_inodes) != (0, 0)
        return short and deferred and len(self._unpurged) > failed_before

    def candidates(self, rung: str) -> Iterator[JobDir]:
        """Job dirs this rung may quarantine, oldest first; reports crashed jobs it passes on the way."""
        now, pol = self.clock(), self.policy
        for path in iter_job_paths(os.fspath(self.layout.jobs), self._unlistable):
            if path in self.protect:
                continue
            try:
                job = classify(path)
            except PermissionError as exc:  # another user's private dir: not touched, but not silently either
                self._skip(path, "unknown", exc)
                continue
            age = now - job.since
            if job.state is State.CRASHED and age >= pol.crashed_grace:
                self.report_crashed(job)
            if rung == "succeeded":
                ok = job.state is State.SUCCEEDED and age >= pol.succeeded_retention
            else:
                ok = (job.state is State.FAILED and age >= pol.failed_retention) or \
                     (job.state is State.CRASHED and age >= pol.crashed_grace)
            if ok:
                yield job

    def scan_crashed(self) -> None:
        """Walk every job dir once to report crashed jobs past their grace (the failed rung does it on its way)."""
        for _ in self.candidates("failed"):
            pass

    def quarantine(self, job: JobDir, qdir: str | None) -> tuple[int, int]:
        """Move one job dir into quarantine; what purging it will give back (0 if it was purged in place)."""
        size, inodes = measure(job.path)
        reason = job.state.value
        if self.dry_run:
            refusal = q.move_refusal(job.path, qdir, self._mount_points())
            if refusal is not None:  # what the real rename would say: the real run skips it, so does this one
                self._skip(job.path, reason, refusal, size, inodes, job.job_id)
                return 0, 0
            self._act(Action("quarantine", job.path, size, inodes, reason), job.job_id)
            return size, inodes
        name = q.entry_name(size, inodes, job.stamp, job.job_id)
        try:
            dest = q.move_in(qdir, job.path, name) if qdir else None
        except OSError as exc:
            # another user's dir (EACCES/EPERM), a mount point (EBUSY): not ours to move; the next one may be
            self._skip(job.path, reason, exc, size, inodes, job.job_id)
            return 0, 0
        if dest is not None:
            self._act(Action("quarantine", dest, size, inodes, reason), job.job_id, origin=job.path)
        elif os.path.lexists(job.path):  # no atomic rename possible here (EXDEV, no room for an entry)
            self._purge(q.Entry(job.job_id, job.path, size, inodes, 0.0), reason)
            size = inodes = 0
        # empty time dirs cost an inode each, and a full-inode disk is what we may be fixing
        prune_empty_parents(job.path, os.fspath(self.layout.jobs), self.clock())
        return size, inodes

    # -- housekeeping (periodic and manual scrubs) -------------------------------------------------------------
    def housekeeping(self) -> None:
        """What a scrub does even when space is fine: quarantine TTL, the cache cap, crashed-job discovery."""
        qdir = os.fspath(self.layout.quarantine)
        if not os.path.islink(qdir):
            horizon = self.clock() - self.policy.quarantine_ttl
            for entry in q.oldest_first(qdir, measure, after=self._q_cursor):
                if entry.quarantined_at >= horizon:
                    break  # name order is quarantine order: the rest are younger still
                self._purge(entry, "ttl")
        self.scan_crashed()
        cap = self.policy.cache_cap.bytes_for(self.space().capacity)
        if cap is not None and "cache" in self.policy.order:
            excess = self.cache.size() - cap
            for key, used in lru_order(self.cache, after=self._c_cursor):
                if excess <= 0:
                    break
                excess -= self.evict(key, used, "cache-cap")

    # -- single actions ----------------------------------------------------------------------------------------
    def report_crashed(self, job: JobDir) -> None:
        if job.reported or self.dry_run:
            return
        # without the note (a full disk) the event may repeat on the next scrub: better twice than never
        noted = note_crashed(job.path)
        if self.emitter is not None:
            self.emitter.event(EVENT_TYPE, "crashed-job", {
                "root": self.root, "path": job.path, "job_id": job.job_id, "idle_seconds": self.clock() - job.since,
                "grace_seconds": self.policy.crashed_grace, "bytes_freed": 0, "noted": noted})

    def evict(self, key: str, used: float, reason: str) -> int:
        if self.dry_run:
            self._c_cursor = used, key
            size = measure(key)[0]
            self._simulated = self._simulated[0] + size, self._simulated[1]
            self._act(Action("evict", key, size, 0, reason))
            return size
        try:
            freed, error = self.cache.evict(key), None
        except OSError as exc:  # e.g. no inode left for the cache's lock file: skip the entry, keep scrubbing
            freed, error = 0, describe_error(exc)
        self._act(Action("evict", key, freed, 0, reason, error or (None if freed else "in use or already gone")))
        return freed

    def _unlistable(self, path: str, exc: OSError) -> None:
        self._skip(path, "unlistable", exc)

    def _skip(self, path: str, reason: str, exc: OSError, size: int = 0, inodes: int = 0,
              job_id: str | None = None) -> None:
        """Report a dir the scrub may not touch (once per scrub); the ladder goes on to the next candidate."""
        if path in self._skipped:
            return
        self._skipped.add(path)
        self._act(Action("skip", path, size, inodes, reason, describe_error(exc)), job_id)

    def _mount_points(self) -> frozenset[str]:
        """Mount points under the root (read once per scrub): renaming one fails with EBUSY."""
        if self._mounts is None:
            self._mounts = q.mount_points(self.root)
        return self._mounts

    def _purge(self, entry: q.Entry, reason: str) -> None:
        if self.dry_run:
            self._q_cursor = entry.name if reason in ("ttl", "quarantine") else self._q_cursor
            self._simulate_purge([entry.bytes, entry.inodes])
            self._act(Action("purge", entry.path, entry.bytes, entry.inodes, reason), entry.job_id)
            return
        before = Space.of(self.root).free
        err = q.purge(entry.path)
        freed = None
        if err is not None:
            self._unpurged.add(entry.name)
            # most of it may have gone before the error. Claim no more than the entry less what is left of it
            # (blind to what this user cannot read), nor more than the disk gained (blind to a mount inside)
            left = measure(entry.path)[0]
            freed = max(0, min(entry.bytes - left, Space.of(self.root).free - before))
        self._act(Action("purge", entry.path, entry.bytes, entry.inodes, reason,
                         describe_error(err) if err else None, freed), entry.job_id)

    def _simulate_purge(self, amount: list[int]) -> None:
        self._simulated = self._simulated[0] + amount[0], self._simulated[1] + amount[1]
        amount[0] = amount[1] = 0

    def _act(self, action: Action, job_id: str | None = None, **extra: Any) -> None:
        self.report.add(action)
        if self.on_action is not None:
            self.on_action(action)
        if self.emitter is None or self.dry_run:
            return
        status = {"quarantine": "quarantined", "purge": "purged", "evict": "evicted", "skip": "skipped"}[action.kind]
        doc: dict[str, Any] = {
            "root": self.root, "path": action.path, "reason": action.reason, "bytes": action.bytes,
            "inodes": action.inodes,
            "bytes_freed": action.given_back,
            **extra}
        if job_id is not None:
            doc["job_id"] = job_id
        if action.error:
            doc["error"] = action.error
        self.emitter.event(EVENT_TYPE, status, doc)
