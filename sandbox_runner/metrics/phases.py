"""Per-phase durations of one job: where its time went, in ``job_info.metrics.phases`` (seconds, floats).

The runner times each pipeline step once (:func:`timed` around ``step.run``) and the pre/post step runner times
each named step (``pre:localize_urls``, ``post:triage``...); the podman backend reports image load and container
create/start through ``RunResult.phases`` (``JobIO.phases`` while it runs, so a failed start still tells). At
close-up :func:`phase_durations` folds those raw timings into the documented phases:

===============  ==================================================================================================
queue_wait       ``time_queued`` (the orchestrator's) to the worker taking the job; absent without ``time_queued``
admission        decoding and resolving the job, the disk reservation (steps ``resolve``, ``disk``)
setup            job dir and HySDS files, the container spec and ``_run.sh``, job-started (``workdir``,
                 ``container``, ``started``)
localize         every pre-processing step (``localize_urls``, ``mark_localized_datasets``,
                 ``validate_checksum_files``, a site's own pre steps)
image_load       making the job's image (and dependency images) present: load or pull; 0.0 when present
container_start  creating, attaching and starting the container (engine calls, without image load)
command          the command itself, start to exit (the backend's run minus the two above)
publish          post-processing except triage: ``publish_datasets``, a site's post steps, the lease check
triage           the ``triage`` post step (building and publishing the bundle of a failed job)
close_up         end of the last step to writing ``_job.json``: disk usage, the PGE's ``_alt_*`` files
other            steps a site or another part inserted that none of the above names
===============  ==================================================================================================

Only phases that ran are present (a job refused at admission has ``admission`` and ``close_up``). Everything but
``queue_wait`` happens inside the worker, one after another, so those sum to at most the job's wall time there.
This module imports nothing heavy: it is on every job's path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox_runner.job.steps.base import JobContext

#: the documented phase names, in pipeline order
PHASES = ("queue_wait", "admission", "setup", "localize", "image_load", "container_start", "command", "publish",
          "triage", "close_up", "other")
#: pipeline step name -> phase (``pre``/``post``/``command`` are split further below)
STEP_PHASE = {"resolve": "admission", "disk": "admission", "workdir": "setup", "container": "setup",
              "started": "setup", "pre": "localize", "command": "command", "post": "publish", "fence": "publish"}
#: post steps with a phase of their own; the rest of ``post`` is publish
NAMED_PHASE = {"triage": "triage"}
#: what the backend reports (``RunResult.phases``), carved out of the command step
BACKEND_PHASES = ("image_load", "container_start")

STEPS_NOTE = "step_seconds"
BACKEND_NOTE = "backend_phases"
CLOSE_NOTE = "t_close"


def add(ctx: JobContext, key: str, seconds: float) -> None:
    timings: dict[str, float] = ctx.notes.setdefault(STEPS_NOTE, {})
    timings[key] = timings.get(key, 0.0) + seconds


@contextlib.contextmanager
def timed(ctx: JobContext, key: str) -> Iterator[None]:
    """Time the block into the job's raw timings under ``key``, also when it raises."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        add(ctx, key, time.monotonic() - t0)


def queue_wait(job_info: Mapping[str, Any], now: float) -> float | None:
    """Seconds from ``time_queued`` to ``now`` (epoch); None when absent or unreadable. A worker clock behind the
    orchestrator's gives 0.0, not a negative wait."""
    raw = job_info.get("time_queued")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        queued = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if queued.tzinfo is None:  # HySDS writes UTC with a literal Z; a naive stamp is UTC too
        from datetime import UTC

        queued = queued.replace(tzinfo=UTC)
    return max(0.0, now - queued.timestamp())


def phase_durations(ctx: JobContext, now: float | None = None) -> dict[str, float]:
    """The job's phases so far (see the module docstring), rounded to microseconds."""
    now_mono = time.monotonic() if now is None else now
    raw: dict[str, float] = dict(ctx.notes.get(STEPS_NOTE) or {})
    phases: dict[str, float] = {}

    def put(phase: str, seconds: float) -> None:
        phases[phase] = phases.get(phase, 0.0) + max(0.0, seconds)

    t_begin = ctx.notes.get("t_begin")
    info = ctx.job.get("job_info") if isinstance(ctx.job, dict) else None
    if isinstance(t_begin, float) and isinstance(info, dict):
        # the wall-clock moment the worker took the job, from the monotonic one the runner noted
        wait = queue_wait(info, time.time() - (now_mono - t_begin))
        if wait is not None:
            phases["queue_wait"] = wait
    named = {k: v for k, v in raw.items() if ":" in k}
    for step, seconds in raw.items():
        if ":" in step:
            continue
        phase = STEP_PHASE.get(step, "other")
        if step == "command":
            backend = ctx.notes.get(BACKEND_NOTE) or {}
            for name in BACKEND_PHASES:
                if name in backend:
                    put(name, float(backend[name]))
                    seconds -= float(backend[name])
        elif step == "post":
            for key, part in named.items():
                kind, _, name = key.partition(":")
                if kind == "post" and name in NAMED_PHASE:
                    put(NAMED_PHASE[name], part)
                    seconds -= part
        put(phase, seconds)
    t_close = ctx.notes.get(CLOSE_NOTE)
    if isinstance(t_close, float):
        put("close_up", now_mono - t_close)
    return {name: round(phases[name], 6) for name in PHASES if name in phases}
