"""WorkerService: what a worker process does around each JobRunner, independent of Celery.

The Celery edge (``sandbox_runner.celery_app``) hands every delivery to :meth:`WorkerService.run_task` and every
revoke / caught signal to :meth:`revoked` / :meth:`interrupt_all`. Per job: the redelivery guard and its lease
(renewed by one thread for all jobs), soft/hard time limits as timers, the fencing check before post-processing,
the job-drain guard afterwards. Stopping a job is always ``JobRunner.interrupt``: the backend stops the container
(stop signal, grace, kill) and the runner ends with exactly one terminal status, the one the interrupt names.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from sandbox_runner.backends.factory import BackendFactory, default_backend_for
from sandbox_runner.errors import ConfigError, JobFormatError
from sandbox_runner.events.documents import TERMINAL_STATUSES, job_ids, job_info_of
from sandbox_runner.events.emitter import Emitter
from sandbox_runner.fspolicy.periodic import PeriodicScrubber
from sandbox_runner.fspolicy.policy import load_fs_policy
from sandbox_runner.hpc.admission import WalltimeGate
from sandbox_runner.hpc.misfits import MisfitBook
from sandbox_runner.hpc.walltime import Walltime, job_time_limit
from sandbox_runner.job.runner import JobOutcome, JobRunner, decode_job, default_steps
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.job.steps.execute import PostProcess
from sandbox_runner.settings import Settings
from sandbox_runner.worker.delivery import TaskInfo
from sandbox_runner.worker.drain import DrainGuard
from sandbox_runner.worker.lease import Admission, Lease, LeaseGuard
from sandbox_runner.worker.limits import TimeLimits

if TYPE_CHECKING:
    from sandbox_runner.hpc.handback import PilotDrain, Running

log = structlog.get_logger("sandbox_runner.worker")

#: HySDS's names for the signals its handler catches (job_worker.py)
SIGNAL_STATUS = {signal.SIGHUP: "job-hangup", signal.SIGINT: "job-interrupted", signal.SIGQUIT: "job-quit",
                 signal.SIGABRT: "job-aborted", signal.SIGTERM: "job-terminated"}
_REMEMBER_REVOKED = 10000


class FenceCheck:
    """Before post-processing (publish): does this run still hold the job's lease? If a newer token took the job
    over, stop here -- the container is already gone or is stopped, and nothing is published twice."""

    name: ClassVar[str] = "fence"
    always: ClassVar[bool] = True

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def run(self, ctx: JobContext) -> None:
        ctx.notes["fencing_token"] = self.lease.token
        if ctx.interrupt is None and not self.lease.holds():
            ctx.interrupt = ("job-deduped", f"lease lost: fencing token {self.lease.token} was superseded, "
                             "another worker runs this job; nothing published", None)
            ctx.cancel.set()


@dataclass
class _Active:
    runner: JobRunner
    lease: Lease | None
    started: float = 0.0  # epoch seconds, for a pilot's drain
    limit: float | None = None
    job_id: str | None = None


class WorkerService:
    def __init__(self, settings: Settings, emitter: Emitter, guard: LeaseGuard | None, *,
                 on_drain: Callable[[], None] | None = None,
                 backend_for: BackendFactory = default_backend_for,
                 walltime: Walltime | None = None, on_exhausted: Callable[[], None] | None = None) -> None:
        self.settings, self.emitter, self.guard = settings, emitter, guard
        self.on_drain = on_drain
        #: inside a pilot: the allocation's end; jobs that cannot finish before it are handed back
        self.walltime = walltime or Walltime()
        #: with a status Redis, walltime refusals are recorded for autoscale (hpc/misfits.py); every worker
        #: that admits a job clears its record, a pilot or not
        book = MisfitBook(settings.redis_url) if settings.redis_url else None
        self._walltime_gate = WalltimeGate(self.walltime, emitter, on_exhausted, book)
        #: inside a pilot: its drain at walltime / scancel (hpc/handback.py), set by the lifecycle
        self.pilot: PilotDrain | None = None
        #: shared by every job's runner (each gets its own list): the policies they read are read once
        self._steps = default_steps(backend_for)
        self.drain = DrainGuard(settings.drain_threshold, settings.drain_window)
        self.processed = 0
        self._active: dict[str, _Active] = {}
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self._stopping = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._scrubber: PeriodicScrubber | None = None
        self._scrubbing = threading.Lock()
        if guard is not None:
            threading.Thread(target=self._renew_leases, name="lease-renewal", daemon=True).start()

    # -- one delivery -------------------------------------------------------------------------------------------------
    def run_task(self, task: TaskInfo, raw: Any) -> dict[str, Any] | None:
        """Run one delivered job; None when it was not run and must go back to the queue (shutting down)."""
        t0 = time.monotonic()
        try:
            job = decode_job(raw)
        except JobFormatError as exc:
            job = {"task_id": task.task_id}
            self.emitter.job_status(job, "job-failed", error=str(exc))
            return self._finish(job, "job-failed", t0, error=str(exc))
        job["task_id"], job["delivery_info"] = task.task_id, dict(task.delivery_info)
        with self._lock:
            if self._stopping:
                return None
            if task.task_id in self._revoked:
                return self._result(job, "job-revoked")  # its job-revoked was sent when the revoke came
        if not self._fits_walltime(task, job):
            return None
        admission = self.guard.admit(task.task_id) if self.guard is not None else Admission(True, "unguarded")
        if not admission.run:
            return self._skip(job, admission)
        runner = JobRunner(self.settings, self.emitter, steps=self._steps)
        if admission.lease is not None:
            at = next(i for i, s in enumerate(runner.steps) if isinstance(s, PostProcess))
            runner.steps.insert(at, FenceCheck(admission.lease))
        with self._lock:
            if self._stopping:
                if admission.lease is not None:
                    admission.lease.release()
                return None
            self._active[task.task_id] = _Active(runner, admission.lease, time.time(),
                                                 job_time_limit(task.hard_limit, job), job_ids(job)["job_id"])
        limits = TimeLimits(self.settings, runner, task, job)
        try:
            outcome = runner.run(job)
        finally:
            limits.cancel()
            with self._lock:
                self._active.pop(task.task_id, None)
                self.processed += 1
            if admission.lease is not None:
                admission.lease.release()
        if self.pilot is not None and self.pilot.handed_back(task.task_id, outcome.status):
            return None  # preempted by the pilot's drain: back to the broker (lease released), not a failure
        result = self._finish(job, outcome.status, t0, outcome=outcome)
        self.scrub_between_jobs()
        return result

    def scrub_between_jobs(self) -> None:
        """The periodic scrub, at most once per the policy's ``scrub.interval``, in the thread of a job just done.

        Running jobs hold their dir's lock, so a scrub never touches them; with several slots, one scrub at a time.
        """
        if self._stopping or not self._scrubbing.acquire(blocking=False):
            return
        try:
            if self._scrubber is None:
                policy = load_fs_policy(self.settings.fs_policy)
                self._scrubber = PeriodicScrubber(self.settings.node_root, policy, self.emitter)
            self._scrubber.maybe_run()
        except ConfigError as exc:  # a broken policy file already fails every job's admission, naming the field
            log.warning("periodic-scrub-disabled", error=str(exc))
        finally:
            self._scrubbing.release()

    def _fits_walltime(self, task: TaskInfo, job: dict[str, Any]) -> bool:
        """Inside a pilot: does the job fit before the allocation ends? (hpc/admission.py)"""
        return self._walltime_gate.fits(task.task_id, task.hard_limit, job)

    def refused_for_walltime(self, task_id: str) -> bool:
        """Was this delivery refused for the pilot's walltime (the edge hands it to the queue's tail)?"""
        return self._walltime_gate.refused(task_id)

    def _finish(self, job: dict[str, Any], status: str, t0: float, *, outcome: JobOutcome | None = None,
                error: str | None = None) -> dict[str, Any]:
        if self.drain.record(status == "job-failed"):
            self.emitter.event("worker_anomaly", "job_drain", {
                "celery_hostname": self.settings.worker_name, "last_job_id": job_ids(job)["job_id"],
                "last_error": outcome.error if outcome else error, **self.drain.snapshot()})
            if self.on_drain is not None:
                self.on_drain()
        result = self._result(job, status)
        cmd = job_info_of(job).get("cmd_duration")
        cmd = float(cmd) if isinstance(cmd, int | float) else 0.0
        result.update(exit_code=outcome.exit_code if outcome else None,
                      error=outcome.error if outcome else error,
                      worker_overhead=round(time.monotonic() - t0 - cmd, 6))
        return result

    def _result(self, job: dict[str, Any], status: str) -> dict[str, Any]:
        """HySDS's run_job return value."""
        url = job_info_of(job).get("job_url")
        return {**job_ids(job), "status": status, "job_url": url if isinstance(url, str) else None,
                "celery_hostname": self.settings.worker_name}

    def _skip(self, job: dict[str, Any], admission: Admission) -> dict[str, Any]:
        details = {"task_id": job["task_id"], "job_id": job.get("job_id"), "found_status": admission.status,
                   "lease_holder": admission.holder,
                   "redelivered": bool(job["delivery_info"].get("redelivered"))}
        if admission.reason == "revoked":
            if admission.status in TERMINAL_STATUSES:
                self.emitter.event("job_redelivery", "revoked", details)
            else:  # as HySDS: a revoked job that is delivered anyway revokes itself
                self.emitter.job_status(job, "job-revoked", error="Job was revoked with signal 0.", signum=0)
            return self._result(job, "job-revoked")
        self.emitter.event("job_redelivery", admission.reason, details)  # not a status: it would clobber the real one
        result = self._result(job, "job-deduped")
        result["dedup_msg"] = f"{admission.reason}: status {admission.status}, lease holder {admission.holder}"
        return result

    # -- from outside the job's thread -------------------------------------------------------------------------------
    def revoked(self, task_id: str, job: Any, signum: int | None) -> None:
        """A revoke reached this worker: stop the job if it runs, else record it (one job-revoked either way)."""
        with self._lock:
            self._revoked[task_id] = None
            while len(self._revoked) > _REMEMBER_REVOKED:
                self._revoked.popitem(last=False)
            active = self._active.get(task_id)
        if active is not None:
            active.runner.interrupt("job-revoked", f"Job was revoked with signal {signum or 0}.", signum or 0)
            return
        doc = dict(job) if isinstance(job, dict) else {}
        doc["task_id"] = task_id
        if self.guard is not None and self.guard.finished(task_id):
            return
        self.emitter.job_status(doc, "job-revoked", error="Job was revoked with signal 0.", signum=0)

    def was_revoked(self, task_id: str) -> bool:
        """:meth:`revoked` was called for this task (a revoke reached this worker from outside)."""
        with self._lock:
            return task_id in self._revoked

    def interrupt_all(self, signum: int) -> int:
        """A signal reached the worker: every running job ends with ``job-<signal>``; no new job starts."""
        status = SIGNAL_STATUS.get(signal.Signals(signum), f"job-sig-{signum}")
        name = signal.Signals(signum).name
        with self._lock:
            self._stopping = True
            active = list(self._active.values())
        for entry in active:
            entry.runner.interrupt(status, f"The worker caught {name} (signal {signum}) while the job ran; the "
                                   "job's container was stopped.", signum)
        return len(active)

    def stop_taking_jobs(self) -> None:
        """From now on every delivery goes straight back to the broker (a pilot's drain)."""
        with self._lock:
            self._stopping = True

    def running_jobs(self) -> list[Running]:
        """The jobs running now, for a pilot's drain."""
        from sandbox_runner.hpc.handback import Running

        with self._lock:
            items = list(self._active.items())
        return [Running(tid, e.job_id, e.started, e.limit, e.runner.interrupt) for tid, e in items]

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def _renew_leases(self) -> None:
        assert self.guard is not None
        while not self._closed.wait(self.guard.ttl / 3):
            with self._lock:
                entries = [(tid, e) for tid, e in self._active.items() if e.lease is not None]
            for task_id, entry in entries:
                assert entry.lease is not None
                if entry.lease.renew() is False:
                    log.error("lease-lost", task_id=task_id, token=entry.lease.token)
                    entry.runner.interrupt("job-deduped", f"lease lost: fencing token {entry.lease.token} was "
                                           "superseded, another worker runs this job", None)

    def close(self) -> None:
        self._closed.set()
        if self.guard is not None:
            self.guard.close()


#: the Celery app's attribute holding its worker's service: set by the worker's start-up bootstep
#: (worker/lifecycle.py), read through the app each reader is handed -- the task's ``self.app``, a signal's
#: ``sender.app``, a control command's ``state.app`` -- so no module keeps the service in a global
_APP_ATTR = "sandbox_runner_service"


def attach_service(app: Any, service: WorkerService | None) -> None:
    """Keep ``service`` on the worker's Celery ``app`` (None: the worker has shut down)."""
    setattr(app, _APP_ATTR, service)


def service_of(app: Any) -> WorkerService | None:
    """The service of the worker running ``app``; None before it started, after it stopped, or outside a worker."""
    service = getattr(app, _APP_ATTR, None)
    return service if isinstance(service, WorkerService) else None


def current_service(app: Any) -> WorkerService:
    """:func:`service_of` for a task, which cannot run without one."""
    service = service_of(app)
    if service is None:
        raise RuntimeError("no worker service: the task ran outside a sandbox_runner worker")
    return service
