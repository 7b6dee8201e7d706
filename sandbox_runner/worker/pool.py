"""Celery's thread pool, made to accept ``revoke(terminate=True)``.

Celery terminates a running task by signalling its pool *process* (``terminate_job(pid, sig)``); a thread cannot
be signalled, and the stock thread pool raises NotImplementedError there, which aborts the revoke before Celery
announces it. Here ``terminate_job`` does nothing: Celery then sends ``task_revoked`` with the request, and the
worker service stops that job's *container* through its JobRunner (``job-revoked``), which is what a revoke
should do. Time limits are not enforced by this pool either; :mod:`sandbox_runner.worker.limits` does it on the
container.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.thread import ApplyResult, TaskPool


class _Result(ApplyResult):
    def terminate(self, signum: int | None = None) -> None:
        """Called by ``Request.terminate``; the job is stopped through ``task_revoked`` instead."""


class JobThreadPool(TaskPool):
    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """See the module docstring: revoking goes through ``task_revoked``, not through a pid."""

    def on_apply(self, *args: Any, **kwargs: Any) -> _Result:
        result = super().on_apply(*args, **kwargs)
        return _Result(result.f)
