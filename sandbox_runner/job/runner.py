"""JobRunner: one job through an ordered list of steps, ending in exactly one terminal status.

It knows nothing of Celery: the Celery task, ``sandbox-runner run-job`` and ``scripts/run_job.py`` all decode a
job and call :meth:`JobRunner.run`. Whatever goes wrong (bad input, a full disk, a missing image, a failing
command, a bug in a step) ends as one ``job-failed`` document with a readable error, and a job dir that exists is
always closed (``.done``, ``_exit_code``).
"""

from __future__ import annotations

import json
import threading
import time
import traceback as tb
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_runner.backends.base import ContainerSpec
from sandbox_runner.backends.factory import BackendFactory, default_backend_for
from sandbox_runner.errors import JobFormatError, JobInterrupted, SandboxRunnerError
from sandbox_runner.events.documents import iso_now
from sandbox_runner.events.emitter import Emitter
from sandbox_runner.job.steps.admit import AdmitDisk, release_reservation
from sandbox_runner.job.steps.base import JobContext, Step
from sandbox_runner.job.steps.execute import PostProcess, PreProcess, RunCommand
from sandbox_runner.job.steps.prepare import ResolveJob
from sandbox_runner.job.steps.setup import AnnounceStart, BuildContainer, CreateWorkDir, refresh_context
from sandbox_runner.metrics import phases
from sandbox_runner.models._decode import lone_surrogate, without_surrogates
from sandbox_runner.settings import Settings
from sandbox_runner.workroot import WorkRoot


@dataclass(frozen=True)
class JobOutcome:
    status: str
    job_id: str | None
    task_id: str | None
    exit_code: int | None
    job_dir: Path | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "job-completed"


def default_steps(backend_for: BackendFactory = default_backend_for) -> list[Step]:
    """The job pipeline. Steps keep what they read once (filesystem and mount policies): a worker that makes
    one runner per job passes the same steps to each, so those files are not re-read for every job."""
    return [
        ResolveJob(), AdmitDisk(), CreateWorkDir(), BuildContainer(backend_for), AnnounceStart(),
        PreProcess(), RunCommand(), PostProcess(),
    ]


def decode_job(raw: Any) -> dict[str, Any]:
    """The job as a mapping: a dict as given, or JSON text holding an object; anything else is a JobFormatError."""
    if isinstance(raw, dict):
        return raw
    if raw is None:
        raise JobFormatError("a job must be a JSON object, got nothing (null)", source="job")
    if not isinstance(raw, bytes | bytearray | str):
        raise JobFormatError(f"a job must be a JSON object, not {_json_type(raw)}", source="job")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobFormatError(f"not valid JSON: {exc}", source="job") from None
    except RecursionError:
        raise JobFormatError("not valid JSON: nested too deeply", source="job") from None
    if not isinstance(doc, dict):
        raise JobFormatError(f"a job must be a JSON object, not {_json_type(doc)}", source="job")
    return doc


def _json_type(value: Any) -> str:
    names = {list: "an array", tuple: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _traceback(failure: BaseException) -> str | None:
    """The real traceback of a bug, or of the foreign error (an OSError, the engine's reply...) one of ours was
    translated from, even ``from None``: HySDS sends one for these. None for an expected failure (non-zero exit,
    bad input), which keeps its message as HySDS's own expected failures do."""
    if not isinstance(failure, SandboxRunnerError):
        return "".join(tb.format_exception(failure))
    cause = failure.__cause__ or failure.__context__
    if cause is None or isinstance(cause, SandboxRunnerError):
        return None
    return "".join([*tb.format_exception(cause), "\nThe above exception was translated into:\n\n",
                    *tb.format_exception(failure, chain=False)])


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        emitter: Emitter,
        *,
        backend_for: BackendFactory = default_backend_for,
        steps: Sequence[Step] | None = None,
    ) -> None:
        self.settings = settings
        self.emitter = emitter
        self.steps: list[Step] = list(steps) if steps is not None else default_steps(backend_for)
        self._current: JobContext | None = None
        self._pending: tuple[str, str, int | None] | None = None
        self._pending_detail: str | None = None
        self._lock = threading.Lock()

    # -- the job path ----------------------------------------------------------------------------------------------
    def run(self, raw: Any) -> JobOutcome:
        failure: BaseException | None = None
        t_begin = time.monotonic()
        try:
            job = decode_job(raw)
        except JobFormatError as exc:
            job, failure = {}, exc
        bad = lone_surrogate(job)
        if bad is not None:  # reported from a copy that can be written at all (see lone_surrogate)
            job, failure = without_surrogates(job), JobFormatError(
                "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape that is no character)", field=bad,
                source="job")
        job.setdefault("task_id", str(uuid.uuid4()))  # stand-alone runs have no Celery task id
        ctx = JobContext(job=job, settings=self.settings, emitter=self.emitter)
        ctx.notes["t_begin"] = t_begin
        with self._lock:
            self._current = ctx
            if self._pending is not None:  # interrupted before the job got here: it starts stopped
                ctx.interrupt, self._pending = self._pending, None
                ctx.notes["interrupt_detail"] = self._pending_detail
                ctx.cancel.set()
        try:
            for step in self.steps:
                if failure is None and ctx.interrupt is not None:  # stopped from outside: no further job steps
                    failure = JobInterrupted(ctx.interrupt[0], ctx.interrupt[1], signum=ctx.interrupt[2])
                if failure is not None and not (step.always and ctx.workdir is not None):
                    continue
                if failure is not None:  # for post steps that report it (the triage bundle says why)
                    ctx.notes.setdefault("failure", str(failure))
                try:
                    with phases.timed(ctx, step.name):  # each step timed here, once (job_info.metrics.phases)
                        step.run(ctx)
                except SandboxRunnerError as exc:
                    failure = failure or exc
                except RecursionError:  # a dict job (Celery decoded it) nested deeper than Python can walk
                    failure = failure or JobFormatError("the job is nested too deeply to read", source="job")
                except Exception as exc:  # a bug: still one job-failed, with the traceback for machines
                    failure = failure or exc
            ctx.notes[phases.CLOSE_NOTE] = time.monotonic()
            try:
                return self._close(ctx, failure)
            except Exception as exc:  # last guard: the close-up itself broke; the job still gets its status
                return self._close_plainly(ctx, failure, exc)
        finally:
            release_reservation(ctx)  # also when close-up itself fails; a dead process releases it by dying
            with self._lock:
                self._current = None

    def interrupt(self, status: str, message: str, signum: int | None = None, *, detail: str | None = None) -> bool:
        """Stop the running job from another thread (signal, time limit, revoke). False if none runs; then the
        next :meth:`run` starts interrupted (a signal can arrive between a worker taking a job and running it).
        ``detail`` goes to the document's ``traceback`` where ``message`` must be HySDS's exact error text."""
        with self._lock:
            ctx = self._current
            if ctx is None:
                self._pending, self._pending_detail = (status, message, signum), detail
                return False
            ctx.interrupt = (status, message, signum)
            ctx.notes["interrupt_detail"] = detail
        ctx.cancel.set()
        return True

    def plan(self, raw: dict[str, Any] | bytes | str) -> ContainerSpec:
        """What would run, without running anything or creating a job dir (``--dry-run``)."""
        from sandbox_runner.job.container import build_spec

        job = decode_job(raw)
        job.setdefault("task_id", "dry-run")
        ctx = JobContext(job=job, settings=self.settings, emitter=self.emitter)
        ResolveJob().run(ctx)
        assert ctx.work_root is not None
        return build_spec(ctx, str(WorkRoot(ctx.work_root).job_dir(str(job["job_id"]), time.time())))

    # -- close-up --------------------------------------------------------------------------------------------------
    def _close_plainly(self, ctx: JobContext, failure: BaseException | None, exc: Exception) -> JobOutcome:
        """One job-failed when :meth:`_close` raised before sending it (never a job without a terminal status)."""
        if ctx.notes.get("terminal_sent"):
            raise exc
        if isinstance(exc, RecursionError) and failure is not None:  # the document is as deep as the job
            error = str(failure)
        else:
            first = f"{failure}; " if failure is not None else ""
            error = f"{first}internal error while closing the job: {type(exc).__name__}: {exc}"
        job = ctx.job if isinstance(ctx.job, dict) else {}
        try:
            self.emitter.job_status(job, "job-failed", error=error, traceback="".join(tb.format_exception(exc)))
        except RecursionError:  # a job nested too deeply to copy: report it by what can be read
            self.emitter.job_status({k: job.get(k) for k in ("job_id", "task_id") if isinstance(job.get(k), str)},
                                    "job-failed", error=error)
        return JobOutcome(status="job-failed", job_id=_text(job.get("job_id")), task_id=_text(job.get("task_id")),
                          exit_code=ctx.exit_code, job_dir=ctx.workdir.path if ctx.workdir else None, error=error)

    def _close(self, ctx: JobContext, failure: BaseException | None) -> JobOutcome:
        job, wd = ctx.job, ctx.workdir
        error = trace = None
        if failure is not None:
            error = str(failure) if isinstance(failure, SandboxRunnerError) else \
                f"internal error: {type(failure).__name__}: {failure}"
            trace = _traceback(failure) or error
        if ctx.interrupt is not None:
            error, trace = ctx.interrupt[1], ctx.notes.get("interrupt_detail") or ctx.interrupt[1]
        status = "job-completed" if error is None else (ctx.interrupt[0] if ctx.interrupt else "job-failed")
        extra: dict[str, Any] = {}
        if ctx.interrupt is not None and ctx.interrupt[2] is not None:
            extra["signum"] = ctx.interrupt[2]
        if wd is not None:
            info = ctx.job_info
            if error is not None:
                # a job that explains its own failure knows better than our generic message
                error = (wd.read_optional("_alt_error.txt") or "").strip() or error
                trace = (wd.read_optional("_alt_traceback.txt") or "").strip() or trace
                if not info.get("status"):
                    info["status"] = 1
            msg = wd.read_optional("_alt_msg.txt")
            if msg:
                extra["msg"] = [line for line in msg.splitlines() if line.strip()]
            details = wd.read_optional("_alt_msg_details.txt")
            if details:
                extra["msg_details"] = details
            info["time_end"] = iso_now()
            info["duration"] = time.time() - ctx.notes.get("t_start", time.time())
            info["metrics"]["job_dir_size"] = wd.size_bytes()
            # our own cost per job, outside the command (HySDS has no such metric; benchmarks read it)
            info["metrics"]["worker_overhead"] = round(
                time.monotonic() - ctx.notes["t_begin"] - float(info.get("cmd_duration") or 0.0), 6)
            if ctx.result is None and not (wd.file("_exit_code")).exists():
                wd.write_text("_exit_code", f"{info['status']}\n")
            refresh_context(ctx)
            info["metrics"]["phases"] = phases.phase_durations(ctx)
            wd.write_json("_job.json", job)
            wd.mark_done()
            self.emitter.job_info(job)
        elif isinstance(job.get("job_info"), dict):  # refused before its job dir: still say where the time went
            # this run's metrics, as HySDS starts each run's afresh (what the job arrived with is not this run's)
            job["job_info"]["metrics"] = {"inputs_localized": [], "products_staged": [], "job_dir_size": 0,
                                          "usage_stats": [], "phases": phases.phase_durations(ctx)}
        self.emitter.job_status(job, status, error=error, traceback=trace, **extra)
        ctx.notes["terminal_sent"] = True
        return JobOutcome(status=status, job_id=_text(job.get("job_id")), task_id=_text(job.get("task_id")),
                          exit_code=ctx.exit_code, job_dir=wd.path if wd else None, error=error)
