"""The layout of a work root: the one place that knows which folder under it holds what.

A work root is shared by every job and worker of one user on one node (HYSDS-WORKER.md section 1.4 for
``jobs/``)::

    <root>/jobs/YYYY/MM/DD/HH/MI/<job_id>/   one dir per job (owned by :class:`sandbox_runner.job.workdir.WorkDir`)
    <root>/cache/                            the localizer's content cache
    <root>/quarantine/                       job dirs moved aside by the scrubber, purged later
    <root>/reservations/                     disk reservations of admitted, still-running jobs
    <root>/events/events.msgpack             status documents when no Redis is configured
    <root>/events/spool/                     events kept while Redis is unreachable
    <root>/workers/                          worker name locks

Every module asks a :class:`WorkRoot` for these paths rather than joining the names itself, so that moving one
folder is a change here only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

JOBS = "jobs"
CACHE = "cache"
QUARANTINE = "quarantine"
RESERVATIONS = "reservations"
EVENTS = "events"
WORKERS = "workers"


@dataclass(frozen=True)
class WorkRoot:
    path: Path

    @property
    def jobs(self) -> Path:
        return self.path / JOBS

    @property
    def cache(self) -> Path:
        return self.path / CACHE

    @property
    def quarantine(self) -> Path:
        return self.path / QUARANTINE

    @property
    def reservations(self) -> Path:
        return self.path / RESERVATIONS

    @property
    def event_file(self) -> Path:
        return self.path / EVENTS / "events.msgpack"

    @property
    def event_spool(self) -> Path:
        return self.path / EVENTS / "spool"

    @property
    def workers(self) -> Path:
        return self.path / WORKERS

    def job_dir(self, job_id: str, when: float) -> Path:
        """Where a job started at ``when`` (epoch seconds) gets its dir: HySDS's minute-bucketed path, UTC."""
        return self.jobs / time.strftime("%Y/%m/%d/%H/%M", time.gmtime(when)) / job_id
