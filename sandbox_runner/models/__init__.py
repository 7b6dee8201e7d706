"""Typed, frozen models of the HySDS documents a worker reads, their loaders and a file validator.

Every loader takes a dict, JSON bytes or JSON text plus an optional ``source`` (file name, for messages)
and raises :class:`~sandbox_runner.errors.JobFormatError` (job, job-spec, hysds-io) or
:class:`~sandbox_runner.errors.ConfigError` (worker config, datasets.json) with a one-line message naming
the source, the field path and the problem. Unknown fields are accepted; the original document is kept in
``.raw``.
"""

from __future__ import annotations

from sandbox_runner.models.datasets import DatasetEntry, DatasetsConfig, PublishTarget, load_datasets_config
from sandbox_runner.models.detect import Kind, detect_kind, kind_from_name, validate_file
from sandbox_runner.models.hysdsio import HysdsIO, IOParam, load_hysds_io
from sandbox_runner.models.job import Job, JobInfo, JobPayload, load_job
from sandbox_runner.models.jobspec import (
    DependencyImage,
    JobSpec,
    JobSpecParam,
    LocalizeUrl,
    iter_mappings,
    load_job_spec,
)
from sandbox_runner.models.worker_config import (
    Command,
    EnvVar,
    WorkConfig,
    WorkerConfig,
    load_worker_config,
    resolve_command,
    worker_config_from_command,
)

__all__ = [
    "Command",
    "DatasetEntry",
    "DatasetsConfig",
    "DependencyImage",
    "EnvVar",
    "HysdsIO",
    "IOParam",
    "Job",
    "JobInfo",
    "JobPayload",
    "JobSpec",
    "JobSpecParam",
    "Kind",
    "LocalizeUrl",
    "PublishTarget",
    "WorkConfig",
    "WorkerConfig",
    "detect_kind",
    "iter_mappings",
    "kind_from_name",
    "load_datasets_config",
    "load_hysds_io",
    "load_job",
    "load_job_spec",
    "load_worker_config",
    "resolve_command",
    "validate_file",
    "worker_config_from_command",
]
