"""The worker config (``HYSDS_WORKER_CFG``): per job type, the command to run and container overrides.

When no worker config is given, HySDS builds one "on the fly" from the job's ``params._command``
(HYSDS-WORKER.md 1.2); :func:`worker_config_from_command` does the same. :func:`resolve_command` is HySDS's
command assembly: ``[path] + options + arguments`` with ``$name`` arguments replaced by ``job.params[name]``
(lists spliced).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from sandbox_runner.errors import ConfigError, JobFormatError
from sandbox_runner.models._decode import Document, Model, check_size, field_error, load_as
from sandbox_runner.models.job import Job
from sandbox_runner.models.jobspec import DependencyImage, Mappings, check_mappings
from sandbox_runner.units import parse_size

__all__ = [
    "Command",
    "EnvVar",
    "WorkConfig",
    "WorkerConfig",
    "load_worker_config",
    "resolve_command",
    "worker_config_from_command",
]

Scalar = str | int | float
_PARAM_REF_RE = re.compile(r"^\$(\w+)$")


class EnvVar(Model, frozen=True, kw_only=True):
    """One ``{"key", "value"}`` environment entry for the command."""

    key: str
    value: Scalar

    def __post_init__(self) -> None:
        if not self.key or "=" in self.key or "\x00" in self.key:
            raise field_error("key", f"not a valid environment variable name: {self.key!r}")


class Command(Model, frozen=True, kw_only=True):
    """``command``: the executable, its fixed options and its arguments (``$param`` references allowed)."""

    path: str
    options: list[Scalar] = []
    arguments: list[Scalar] = []
    env: list[EnvVar] = []

    def __post_init__(self) -> None:
        if not self.path:
            raise field_error("path", "must not be empty")

    @property
    def env_dict(self) -> dict[str, str]:
        """The env entries as a mapping (later entries win, as in HySDS)."""
        return {e.key: str(e.value) for e in self.env}


class WorkConfig(Model, frozen=True, kw_only=True):
    """One ``configs[]`` entry: everything the worker needs for jobs of ``type``."""

    type: str
    command: Command
    disk_usage: str | None = None
    container_image_name: str | None = None
    container_image_url: str | None = None
    container_image_urls: dict[str, str] | str | None = None
    container_mappings: Mappings = {}
    runtime_options: dict[str, Any] = {}
    dependency_images: list[DependencyImage] = []

    def __post_init__(self) -> None:
        if not self.type:
            raise field_error("type", "must not be empty")
        check_size("disk_usage", self.disk_usage)
        check_mappings("container_mappings", self.container_mappings)

    @property
    def disk_usage_bytes(self) -> int | None:
        """``disk_usage`` in bytes (already validated), or None."""
        return None if self.disk_usage is None else parse_size(self.disk_usage)

    @property
    def overrides_container(self) -> bool:
        """HySDS applies the container fields of a work config only when both name and url are set."""
        return bool(self.container_image_name and self.container_image_url)


class WorkerConfig(Document, frozen=True, kw_only=True):
    """The whole worker config file."""

    configs: list[WorkConfig]
    root_work_dir: str | None = None
    webdav_port: int | str | None = None
    webdav_url: str | None = None

    def __post_init__(self) -> None:
        if not self.configs:
            raise field_error("configs", "must list at least one job type")
        seen: dict[str, int] = {}
        for i, cfg in enumerate(self.configs):
            if cfg.type in seen:  # HySDS silently keeps the last one; an ambiguous config is a mistake
                raise field_error(
                    f"configs[{i}].type", f"duplicate job type {cfg.type!r} (also configs[{seen[cfg.type]}])"
                )
            seen[cfg.type] = i

    @property
    def job_types(self) -> list[str]:
        """The job types this config knows, in file order."""
        return [c.type for c in self.configs]

    def for_type(self, job_type: str) -> WorkConfig:
        """The entry for ``job_type``; raises :class:`ConfigError` listing the known types otherwise."""
        for cfg in self.configs:
            if cfg.type == job_type:
                return cfg
        known = ", ".join(self.job_types) or "none"
        raise ConfigError(
            f"no entry for job type {job_type!r} in worker config (known: {known})", source=self.source
        )


def load_worker_config(data: dict[str, Any] | bytes | str, source: str | None = None) -> WorkerConfig:
    """Validate a worker config document; raises :class:`ConfigError` naming the file, field and problem."""
    return load_as(WorkerConfig, data, source, ConfigError)


def worker_config_from_command(
    job: Job,
    *,
    root_work_dir: str | None = None,
    webdav_port: int | str | None = None,
    webdav_url: str | None = None,
) -> WorkerConfig:
    """HySDS's on-the-fly worker config, built from ``params._command`` when no worker config file is set.

    ``root_work_dir``/``webdav_*`` come from the caller's settings (HySDS reads ``HYSDS_*`` env vars here).
    """
    command = job.command_payload
    if command is None:
        raise JobFormatError(
            "missing: the job has no command payload and no worker config was given",
            field="params._command",
            source=job.source,
        )
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise JobFormatError(
            f"cannot split command line: {exc}", field="params._command", source=job.source
        ) from None
    if not argv:
        raise JobFormatError("empty command line", field="params._command", source=job.source)
    spec = job.job_specification
    entry: dict[str, Any] = {
        "type": job.type,
        "command": {"path": argv[0], "options": [], "arguments": argv[1:], "env": []},
        "dependency_images": spec.raw.get("dependency_images", []) if spec else [],
        # already checked as params._disk_usage; a number of bytes, which the job model takes, as the text the
        # config's field holds (else the error would name configs[0].disk_usage, a field the job does not have)
        "disk_usage": None if job.disk_usage is None else str(job.disk_usage),
    }
    data: dict[str, Any] = {"configs": [entry]}
    for key, value in (
        ("root_work_dir", root_work_dir),
        ("webdav_port", webdav_port),
        ("webdav_url", webdav_url),
    ):
        if value is not None:
            data[key] = value
    source = f"{job.source or 'job'} (params._command)"
    return load_as(WorkerConfig, data, source, JobFormatError)


def resolve_command(work_cfg: WorkConfig, job: Job) -> list[str]:
    """``[path] + options + arguments`` with ``$name`` arguments replaced by ``job.params[name]``.

    As in HySDS, only whole-argument references are replaced, a list value is spliced in, and every item is
    ``str()``-ed. A reference to a param the job lacks is a :class:`JobFormatError` naming it.
    """
    cmd = work_cfg.command
    argv = [cmd.path, *(str(o) for o in cmd.options)]
    for arg in cmd.arguments:
        ref = _PARAM_REF_RE.match(arg) if isinstance(arg, str) else None
        if ref is None:
            argv.append(str(arg))
            continue
        name = ref.group(1)
        if name not in job.params:
            raise JobFormatError(
                f"missing, but the worker config of job type {work_cfg.type!r} passes {arg!r} to the command",
                field=f"params.{name}",
                source=job.source,
            )
        value = job.params[name]
        if isinstance(value, list):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv
