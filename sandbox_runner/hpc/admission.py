"""Walltime-aware admission: inside a pilot, a job whose time limit does not fit before the allocation ends is
not started here. It goes straight back to the broker (no job-failed, no retry burned) for a worker with time,
at the queue's *tail* (hpc/requeue.py, done by the Celery edge when :meth:`WalltimeGate.refused` says so), so the
jobs queued behind it come to this pilot next. When a job handed back comes round again with nothing admitted
since, nothing in the queue fits this pilot's time: it stops (``on_exhausted``) and frees the allocation.

With a status Redis (``book``, hpc/misfits.py) a refusal is also recorded for ``autoscale``, and any admission
deletes the task's record; neither ever changes what is admitted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox_runner.events.emitter import Emitter
from sandbox_runner.hpc.walltime import Walltime, job_time_limit

if TYPE_CHECKING:
    from sandbox_runner.hpc.misfits import MisfitBook


class WalltimeGate:
    def __init__(self, walltime: Walltime, emitter: Emitter, on_exhausted: Callable[[], None] | None,
                 book: MisfitBook | None = None) -> None:
        self.walltime, self.emitter, self.on_exhausted = walltime, emitter, on_exhausted
        self.book = book
        #: task ids refused since a job was last admitted; one seen twice: the queue has come round
        self._handed_back: set[str] = set()
        #: refused deliveries the edge has not yet handed to the tail
        self._to_tail: set[str] = set()
        self._lock = threading.Lock()

    def fits(self, task_id: str, hard_limit: float | None, job: dict[str, Any]) -> bool:
        limit = job_time_limit(hard_limit, job)
        queue = (job.get("delivery_info") or {}).get("routing_key")
        with self._lock:
            admitted = self.walltime.admits(limit)
            if admitted:
                self._handed_back.clear()
            else:
                again = task_id in self._handed_back
                self._handed_back.add(task_id)
                self._to_tail.add(task_id)
        if admitted:  # Redis outside the lock
            if self.book is not None and queue:
                self.book.admitted(str(queue), task_id)
            return True
        left = self.walltime.left()
        self.emitter.event("pilot", "handed_back", {
            "task_id": task_id, "job_id": job.get("job_id"), "time_limit": limit,
            "time_left": round(left or 0.0, 1), "pilot": self.walltime.pilot})
        if self.book is not None and queue and limit is not None:
            self.book.record(str(queue), task_id, limit, left, self.walltime.pilot)
        if again and self.on_exhausted is not None:
            self.on_exhausted()
        return False

    def refused(self, task_id: str) -> bool:
        """Was this delivery refused for the walltime (not because the worker stops)? Asked once per refusal."""
        with self._lock:
            if task_id not in self._to_tail:
                return False
            self._to_tail.discard(task_id)
            return True
