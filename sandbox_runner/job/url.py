"""``job_url`` for a job dir: HySDS's ``http://<host>:<port>/jobs/YYYY/MM/DD/HH/MI/<job_id>`` when this worker serves
the jobs tree (:mod:`sandbox_runner.worker.jobhttp`), else ``file://``. Kept apart from the server so every job
(and a stand-alone ``run-job``) does not import ``http.server`` for one string.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from sandbox_runner.settings import Settings


def job_url(settings: Settings, job_dir: Path) -> str:
    """HySDS's ``job_url`` for ``job_dir``: ``<base>/jobs/YYYY/MM/DD/HH/MI/<job_id>`` when this worker serves the
    tree the dir is in, else ``file://<job_dir>`` (stand-alone runs, or a job whose root is not the served one)."""
    base = settings.job_url_base
    if base:
        try:
            rel = job_dir.relative_to(settings.workroot.jobs)
        except ValueError:
            rel = None
        if rel is not None:
            return f"{base.rstrip('/')}/jobs/{urllib.parse.quote(rel.as_posix())}"
    return f"file://{job_dir}"
