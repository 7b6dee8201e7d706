"""The disk admission step: reserve the job's disk need under the filesystem policy, scrubbing if short.

It replaces the simple free-percent check. The reservation lives in ``ctx.notes`` until the runner's close-up
calls :func:`release_reservation`; if the worker process dies first, the kernel releases it with the process.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sandbox_runner.errors import ConfigError
from sandbox_runner.fspolicy import Reservation, admit, load_fs_policy
from sandbox_runner.fspolicy.policy import FsPolicy
from sandbox_runner.fspolicy.report import Space
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.job.steps.prepare import disk_need
from sandbox_runner.settings import Settings

NOTE = "disk_reservation"


class AdmitDisk:
    name: ClassVar[str] = "disk"
    always: ClassVar[bool] = False

    def __init__(self, policy: FsPolicy | None = None) -> None:
        self._policy = policy

    def policy_for(self, settings: Settings) -> FsPolicy:
        """The policy, read on first use and kept: once per worker, not once per job. A bad policy file
        raises ConfigError here, so each job it stops ends as one job-failed naming the field."""
        if self._policy is None:
            policy = load_fs_policy(settings.fs_policy)
            if settings.min_free_percent is not None:
                policy = dataclasses.replace(policy, space_percent=settings.min_free_percent)
            self._policy = policy
        return self._policy

    def run(self, ctx: JobContext) -> None:
        assert ctx.work_root is not None
        need = disk_need(ctx) or 0  # a malformed disk_usage raises JobFormatError: one clear job-failed
        policy = self.policy_for(ctx.settings)
        root = ctx.work_root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"work root {root} is not usable: {exc.strerror}", field="work_root") from None
        reservation = admit(root, policy, need_bytes=need, job_id=str(ctx.job.get("job_id")), emitter=ctx.emitter)
        ctx.notes[NOTE] = reservation
        space = Space.of(str(root))
        ctx.notes["disk"] = {"need": need, "free": space.free, "capacity": space.capacity,
                             "policy": policy.source}


def release_reservation(ctx: JobContext) -> None:
    """Close-up: give the job's disk reservation back (no-op when the job never got one)."""
    reservation = ctx.notes.pop(NOTE, None)
    if isinstance(reservation, Reservation):
        reservation.release()
