"""The job proper: pre-processing steps, the command in its backend, post-processing steps."""

from __future__ import annotations

import time
from typing import ClassVar

import structlog

from sandbox_runner.backends.base import JobIO
from sandbox_runner.errors import CommandFailed, EngineFailed, SandboxRunnerError, StepError
from sandbox_runner.events.documents import iso_now
from sandbox_runner.job.steps import registry
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.metrics import live, phases
from sandbox_runner.procstat import start_time

log = structlog.get_logger("sandbox_runner")


def _run_named(ctx: JobContext, names: list[str], kind: str) -> None:
    for name in names:
        func = registry.load(name)
        log.debug(f"{kind}-step", step=name, job_id=ctx.job.get("job_id"))
        try:
            with phases.timed(ctx, f"{kind}:{name}"):
                func(ctx)
        except SandboxRunnerError:
            raise
        except Exception as exc:  # a step's own bug or a foreign error: name the step, keep the worker alive
            raise StepError(f"{kind}-processing step {name!r} failed: {type(exc).__name__}: {exc}") from exc


class PreProcess:
    name: ClassVar[str] = "pre"
    always: ClassVar[bool] = False

    def run(self, ctx: JobContext) -> None:
        _run_named(ctx, ctx.pre_steps, "pre")


class RunCommand:
    name: ClassVar[str] = "command"
    always: ClassVar[bool] = False

    def run(self, ctx: JobContext) -> None:
        wd, spec, backend = ctx.workdir, ctx.spec, ctx.backend
        assert wd is not None and spec is not None and backend is not None
        info = ctx.job_info

        running: list[int] = []  # the pid once started: counted in live.CONTAINERS_RUNNING until it exits

        def started(pid: int, container_id: str | None) -> None:
            if not running:
                running.append(pid)
                live.CONTAINERS_RUNNING.add(1)
            wd.write_text("_pid", f"{pid}\n")
            start = start_time(pid)
            if start is not None:  # lets a later reconcile tell this process's session from a pid's reuse
                wd.write_text("_pid_start", f"{start}\n")
            info["pid"] = pid

        io = JobIO(stdout=wd.file("_stdout.txt"), stderr=wd.file("_stderr.txt"), on_start=started,
                   cancel=ctx.cancel)
        # the files exist from the start, so `tail -f` works and an early failure still leaves them
        io.stdout.touch()
        io.stderr.touch()
        info["cmd_start"] = iso_now()
        t0 = time.time()
        try:
            ctx.result = result = backend.run(spec, io)
        finally:
            info["cmd_end"] = iso_now()
            info["cmd_duration"] = time.time() - t0
            if running:
                live.CONTAINERS_RUNNING.add(-1)
            # the backend's image load and start: from its result, or as far as it got when it raised
            ctx.notes[phases.BACKEND_NOTE] = {**io.phases, **(ctx.result.phases if ctx.result is not None else {})}
        wd.write_text("_exit_code", f"{result.exit_code}\n")
        info.update({"status": result.exit_code, "pid": result.pid, "stdout": "", "stderr": ""})
        if result.image_id:
            ctx.context["container_image_id"] = result.image_id
            ctx.job["container_image_id"] = result.image_id
        if result.engine_error:
            raise EngineFailed(result.exit_code, result.engine_error)
        if result.exit_code != 0:
            raise CommandFailed(result.exit_code)


class PostProcess:
    """Runs after the command whatever its outcome (publish skips failed jobs itself; triage wants them)."""

    name: ClassVar[str] = "post"
    always: ClassVar[bool] = True

    def run(self, ctx: JobContext) -> None:
        # a job stopped by a time limit (job-failed) is still triaged; one stopped by a signal, a revoke or a
        # lost lease is not: the worker is going away, or the job is someone else's now
        if ctx.workdir is None or (ctx.interrupt is not None and ctx.interrupt[0] != "job-failed"):
            return
        _run_named(ctx, ctx.post_steps, "post")
