"""The job JSON a worker receives (HYSDS-WORKER.md section 2), as produced by mozart's orchestrator.

Required, as run_job needs them: ``job_id``, ``type``, ``params`` and
``job_info.{job_payload.payload_task_id, payload_hash, dedup}``. Everything else is optional; unknown keys are
kept in ``Job.raw``, which is what the runner enriches (``job_info.job_dir``, metrics, status...) and writes
back as ``_job.json``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandbox_runner.errors import JobFormatError
from sandbox_runner.models._decode import SPEC_NAME, Document, Model, check_size, field_error, load_as
from sandbox_runner.models.jobspec import JobSpec, LocalizeUrl, Mappings, check_mappings

__all__ = ["Job", "JobInfo", "JobPayload", "load_job"]


class JobPayload(Model, frozen=True, kw_only=True):
    """``job_info.job_payload``: the celery task that submitted the job and its ``job:<type>`` name."""

    payload_task_id: str
    job_type: str | None = None


class JobInfo(Model, frozen=True, kw_only=True):
    """``job_info`` as the orchestrator sends it; the worker adds many more keys (only in ``raw``)."""

    payload_hash: str
    dedup: bool
    job_payload: JobPayload
    id: str | None = None
    job_queue: str | None = None
    time_queued: str | None = None
    index: str | None = None
    time_limit: int | float | None = None
    soft_time_limit: int | float | None = None


class Job(Document, frozen=True, kw_only=True):
    """One job to run. ``params`` is free-form (it feeds ``_context.json``); its job-spec is typed."""

    job_id: str
    type: str
    params: dict[str, Any]
    job_info: JobInfo
    task_id: str | None = None
    name: str | None = None
    priority: int | None = None
    tag: str | None = None
    username: str | None = None
    context: dict[str, Any] | None = None
    localize_urls: list[LocalizeUrl] = []
    container_image_name: str | None = None
    container_image_url: str | None = None
    container_image_urls: dict[str, str] | str | None = None
    container_mappings: Mappings = {}
    runtime_options: dict[str, Any] = {}
    publish_overwrite_ok: bool = False
    delivery_info: dict[str, Any] | None = None
    #: ``params.job_specification``, validated at load time (None when the job carries none)
    job_specification: JobSpec | None = msgspec.field(default=None, name=SPEC_NAME)

    def __post_init__(self) -> None:
        # job_id names the job directory: refuse anything that could escape it
        if not self.job_id or "/" in self.job_id or "\x00" in self.job_id or self.job_id in (".", ".."):
            raise field_error("job_id", f"must be a non-empty name without '/', got {self.job_id!r}")
        if not self.type:
            raise field_error("type", "must not be empty")
        check_mappings("container_mappings", self.container_mappings)
        command = self.params.get("_command")
        if command is not None and not isinstance(command, str):
            raise field_error("params._command", f"expected a command line string, got {command!r}")
        disk_usage = self.params.get("_disk_usage")
        if disk_usage is not None and not isinstance(disk_usage, str | int | float):
            raise field_error("params._disk_usage", f"expected a size such as 10GB, got {disk_usage!r}")
        check_size("params._disk_usage", disk_usage)

    @property
    def command_payload(self) -> str | None:
        """``params._command``: the command line hysds_commons built (used when no worker config is set)."""
        command = self.params.get("_command")
        return command if isinstance(command, str) else None

    @property
    def disk_usage(self) -> str | int | float | None:
        """``params._disk_usage`` (already validated), the job-spec's disk requirement."""
        value = self.params.get("_disk_usage")
        return value if isinstance(value, str | int | float) else None


def load_job(data: dict[str, Any] | bytes | str, source: str | None = None) -> Job:
    """Validate a job JSON document; raises :class:`JobFormatError` naming the file, field and problem."""
    job = load_as(Job, data, source, JobFormatError)
    spec_data = job.params.get("job_specification")
    if spec_data is None:
        return job
    spec = load_as(JobSpec, spec_data, source, JobFormatError, prefix="params.job_specification")
    return msgspec.structs.replace(job, job_specification=spec)
