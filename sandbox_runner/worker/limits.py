"""Soft and hard time limits, enforced on the job's container rather than on a Python thread.

Celery's own limits work on pool processes: the soft one raises inside the task wherever it is, the hard one
kills the pool process -- and HySDS's setsid'ed container keeps running after both. Here the limits come from the
message (``apply_async(time_limit=..., soft_time_limit=...)``, as HySDS's orchestrator sends them) or else from
``job_info``, and are timers on the job:

* soft: ``JobRunner.interrupt("job-failed", ...)``: the container gets its stop signal (SIGTERM), the grace
  period, then SIGKILL; post-processing (triage) still runs; the status is ``job-failed`` naming the limit.
* hard: the same interrupt with the hard limit named, and every container labelled with the task id is killed
  and removed straight through the podman API -- even if the job's own thread is stuck.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import structlog

from sandbox_runner.events.documents import job_info_of
from sandbox_runner.hpc.walltime import job_time_limit
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.settings import Settings
from sandbox_runner.units import limit_seconds
from sandbox_runner.worker.delivery import TaskInfo

log = structlog.get_logger("sandbox_runner.worker")
#: what HySDS reports when the soft limit fires: ``str(celery.exceptions.SoftTimeLimitExceeded())``
SOFT_LIMIT_ERROR = "SoftTimeLimitExceeded()"


def limits_for(task: TaskInfo, job: dict[str, Any]) -> tuple[float | None, float | None]:
    """(soft, hard) in seconds: the message's, else the job_info's."""
    info = job_info_of(job)  # a damaged job_info is reported by the runner, not tripped over here
    soft = limit_seconds(task.soft_limit) or limit_seconds(info.get("soft_time_limit"))
    return soft, job_time_limit(task.hard_limit, job)


def reap_task_containers(settings: Settings, task_id: str) -> list[str]:
    """Kill and remove every container labelled with ``task_id``; the ids reaped."""
    from sandbox_runner.backends.podman.api import PodmanAPI
    from sandbox_runner.backends.podman.service import default_socket_url
    from sandbox_runner.errors import BackendError

    api = PodmanAPI(default_socket_url(settings.env, settings.uid, settings.podman_socket))
    reaped: list[str] = []
    try:
        found = api.call("GET", "/containers/json", params={
            "all": True, "filters": json.dumps({"label": [f"sandbox_runner.task_id={task_id}"]})}) or []
        for info in found:
            api.call("DELETE", f"/containers/{info['Id']}", params={"force": True, "v": True})
            reaped.append(str(info["Id"]))
    except BackendError as exc:
        log.error("hard-limit-reap-failed", task_id=task_id, error=str(exc))
    return reaped


class TimeLimits:
    def __init__(self, settings: Settings, runner: JobRunner, task: TaskInfo, job: dict[str, Any]) -> None:
        self.settings, self.runner, self.task_id = settings, runner, task.task_id
        self.job_id = str(job.get("job_id"))
        self.soft, self.hard = limits_for(task, job)
        self._timers: list[threading.Timer] = []
        if self.soft is not None:
            self._start(self.soft, self._on_soft)
        if self.hard is not None:
            self._start(self.hard, self._on_hard)

    def _start(self, seconds: float, fn: Any) -> None:
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _on_soft(self) -> None:
        assert self.soft is not None
        log.warning("soft-time-limit", job_id=self.job_id, seconds=self.soft)
        # the error is HySDS's own text (str of Celery's SoftTimeLimitExceeded()): sites match on it
        self.runner.interrupt("job-failed", SOFT_LIMIT_ERROR, detail=(
            f"Soft time limit ({self.soft:g}s) exceeded for {self.job_id}: its container was stopped (SIGTERM, "
            f"{self.settings.stop_grace:g}s grace, SIGKILL)."))

    def _on_hard(self) -> None:
        assert self.hard is not None
        log.error("hard-time-limit", job_id=self.job_id, seconds=self.hard)
        self.runner.interrupt("job-failed", f"Hard time limit ({self.hard:g}s) exceeded for {self.job_id}: its "
                              "container was killed.")
        if self.settings.backend == "podman":
            reap_task_containers(self.settings, self.task_id)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
