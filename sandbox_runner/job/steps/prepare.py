"""First steps: decode and resolve the job (no side effects), then check the disk.

Everything that can be wrong with the *input* is found here, before a work dir exists, so a bad job costs
nothing but its one ``job-failed`` document.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from sandbox_runner.errors import ConfigError
from sandbox_runner.job.steps import registry
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.models import (
    load_datasets_config,
    load_job,
    load_worker_config,
    resolve_command,
    worker_config_from_command,
)
from sandbox_runner.units import parse_size


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", field=what) from None


class ResolveJob:
    """Job JSON -> typed job, work config (``HYSDS_WORKER_CFG`` or on-the-fly from ``_command``), argv, steps."""

    name: ClassVar[str] = "resolve"
    always: ClassVar[bool] = False

    def run(self, ctx: JobContext) -> None:
        settings = ctx.settings
        ctx.model = model = load_job(ctx.job, source="job")
        if settings.worker_cfg is not None:
            # as HySDS: a worker config file wins even when the job carries a _command
            worker_cfg = load_worker_config(_read(settings.worker_cfg, "HYSDS_WORKER_CFG"),
                                            source=str(settings.worker_cfg))
        elif (ctx.job.get("params") or {}).get("_command"):
            worker_cfg = worker_config_from_command(model)
        else:
            raise ConfigError("HYSDS_WORKER_CFG is not set and the job has no params._command to run")
        ctx.work_cfg = worker_cfg.for_type(model.type)
        if settings.datasets_cfg is not None:
            ctx.datasets_cfg = load_datasets_config(_read(settings.datasets_cfg, "HYSDS_DATASETS_CFG"),
                                                    source=str(settings.datasets_cfg))
        ctx.work_root = settings.resolve_work_root(getattr(worker_cfg, "root_work_dir", None))
        ctx.argv = [str(a) for a in resolve_command(ctx.work_cfg, model)]
        spec = model.job_specification
        ctx.pre_steps = registry.plan_steps(spec, kind="pre")
        ctx.post_steps = registry.plan_steps(spec, kind="post")
        ctx.job["command"] = _command_doc(ctx)


def _command_doc(ctx: JobContext) -> dict[str, object]:
    command = ctx.work_cfg.command if ctx.work_cfg is not None else None
    return {
        "path": getattr(command, "path", None),
        "options": list(getattr(command, "options", None) or []),
        "arguments": list(getattr(command, "arguments", None) or []),
        "env": [{"key": k, "value": "<redacted>"} for k in (command.env_dict if command is not None else {})],
    }


def disk_need(ctx: JobContext) -> int | None:
    """The job's declared disk need in bytes: work config ``disk_usage`` wins over ``params._disk_usage``."""
    raw = getattr(ctx.work_cfg, "disk_usage", None) or (ctx.job.get("params") or {}).get("_disk_usage")
    return parse_size(raw) if raw not in (None, "") else None
