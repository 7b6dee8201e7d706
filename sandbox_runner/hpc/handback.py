"""A pilot's drain: stop taking jobs, let running jobs that fit finish, hand back the ones that do not.

Two things start it. The walltime warning (Slurm's ``--signal=B:TERM@<grace>``, the PBS pilot's own timer) reaches
the batch shell, whose trap runs ``slurm drain``: that asks the pilot's workers, over the broker, with the
``sr_pilot_drain`` control command; the deadline is the allocation's end. A ``scancel``/``qdel`` of the pilot (or
the walltime itself) sends TERM to every process of the job and KILL ``KillWait``/``kill_delay`` seconds later: a
pilot's worker takes that TERM as a drain too, with the deadline that close.

Per running job, against the deadline less a margin (the container's stop grace and a few seconds to report and
hand the message back):

* its time limit ends before then: it finishes here (its own hard limit stops it otherwise);
* its time limit ends after: it is stopped now, since it cannot be sure to finish;
* it has no time limit: it may run until the cutoff, and is stopped then if still running.

A stopped job is *preempted*: its container stopped and removed, its work dir closed (``.done``), one status
document ``job-queued`` (it is back in the queue, not finished: not a terminal status, not a failure, not counted
by the job-drain guard) naming the pilot, one ``pilot``/``preempted`` event, and its message rejected back to the
broker (``Reject(requeue=True)``) after its lease is released, so another worker runs it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from sandbox_runner.hpc.walltime import Walltime
    from sandbox_runner.worker.service import WorkerService

log = structlog.get_logger("sandbox_runner.hpc")

#: the status a preempted job is reported with: HySDS's status for a job waiting in its queue
PREEMPTED = "job-queued"
#: seconds kept after stopping a job's container, to write its status and give its message back
_REPORT_MARGIN = 5.0


@dataclass(frozen=True)
class Running:
    """One job a worker runs, as the drain sees it."""

    task_id: str
    job_id: str | None
    started: float  # epoch seconds
    limit: float | None  # its hard time limit, seconds
    interrupt: Callable[[str, str], Any]


@dataclass
class PilotDrain:
    service: WorkerService
    walltime: Walltime
    stop_grace: float
    deadline: float | None = None
    reason: str | None = None
    _timers: list[threading.Timer] = field(default_factory=list)
    _preempted: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def margin(self) -> float:
        return self.stop_grace + _REPORT_MARGIN

    def at_walltime(self, why: str) -> float | None:
        """The warning before the walltime: drain against the allocation's end (now, when it is unknown)."""
        return self.begin(self.walltime.end if self.walltime.end is not None else time.time(), why)

    def on_term(self) -> float | None:
        """TERM reached the worker (scancel, qdel, the walltime): KILL follows after the scheduler's kill wait."""
        return self.begin(time.time() + self.walltime.kill_wait, "the pilot is being cancelled: TERM, then KILL "
                          f"{self.walltime.kill_wait:g}s later")

    def begin(self, deadline: float, why: str) -> float | None:
        """Drain against ``deadline`` (epoch seconds); a later call can only bring it closer. The deadline used."""
        with self._lock:
            if self.deadline is not None and deadline >= self.deadline:
                return self.deadline
            self.deadline, self.reason = deadline, why
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        self.service.stop_taking_jobs()
        now = time.time()
        cutoff = deadline - self.margin
        running = self.service.running_jobs()
        log.warning("pilot-draining", pilot=self.walltime.pilot, reason=why, deadline_in=round(deadline - now, 1),
                    running=len(running))
        for job in running:
            ends = job.started + job.limit if job.limit is not None else None
            if ends is not None and ends <= cutoff:
                continue  # it finishes in time
            if ends is not None or cutoff <= now:
                self.preempt(job, cutoff)
            else:
                timer = threading.Timer(cutoff - now, self._at_cutoff, args=(job.task_id, cutoff))
                timer.daemon = True
                timer.start()
                with self._lock:
                    self._timers.append(timer)
        return deadline

    def _at_cutoff(self, task_id: str, cutoff: float) -> None:
        for job in self.service.running_jobs():
            if job.task_id == task_id:
                self.preempt(job, cutoff)

    def preempt(self, job: Running, cutoff: float) -> None:
        with self._lock:
            if job.task_id in self._preempted:
                return
            self._preempted.add(job.task_id)
            why = self.reason
        left = max(0.0, cutoff + self.margin - time.time())
        limit = f"its time limit ({job.limit:g}s) ends later" if job.limit is not None else "it has no time limit"
        message = (f"preempted: pilot {self.walltime.pilot} ends in {left:.0f}s and {limit}; the job was stopped "
                   "and handed back to the queue to run again elsewhere")
        self.service.emitter.event("pilot", "preempted", {
            "task_id": job.task_id, "job_id": job.job_id, "pilot": self.walltime.pilot, "reason": why,
            "time_limit": job.limit, "ran": round(time.time() - job.started, 1), "time_left": round(left, 1)})
        job.interrupt(PREEMPTED, message)

    def handed_back(self, task_id: str, status: str) -> bool:
        """Did the drain stop this job (its message goes back to the broker)? Not when it ended otherwise first:
        a job whose own status was already written before the stop came keeps it."""
        with self._lock:
            return status == PREEMPTED and task_id in self._preempted

    def cancel(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()


def register_control_command() -> None:
    """``sr_pilot_drain``: the broadcast ``slurm drain`` sends. Registered in Celery's control panel on import of
    the worker's lifecycle; it drains, then shuts the worker down warm (Celery waits for the jobs still running)."""
    from celery.exceptions import WorkerShutdown
    from celery.worker.control import Panel, control_command

    if "sr_pilot_drain" in Panel.data:
        return

    @control_command(args=[("reason", str)], signature="[reason]")
    def sr_pilot_drain(state: Any, reason: str = "the pilot's walltime ends soon", **_: Any) -> None:
        from sandbox_runner.worker.service import service_of

        service = service_of(getattr(state, "app", None))  # the control panel's state carries the worker's app
        pilot = service.pilot if service is not None else None
        if pilot is not None:
            pilot.at_walltime(reason)
        raise WorkerShutdown(0)
