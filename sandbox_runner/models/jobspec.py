"""``job-spec.json.<name>``: what a job type runs and how (command, params, limits, mounts, pre/post steps).

Field meanings follow hysds_commons' job-spec schema (HYSDS-WORKER.md section 3.1). Only ``command`` and
``params`` are required: the schema also demands ``disk_usage`` and both time limits, but the worker has
defaults for them and job-specs embedded in job JSON are not always complete. ``disk_usage`` is checked with
:func:`parse_size` here so that a bad value fails the load, not the disk check of a queued job (a HySDS flaw).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from sandbox_runner.errors import JobFormatError
from sandbox_runner.models._decode import Document, Model, check_size, field_error, load_as
from sandbox_runner.units import parse_size

__all__ = [
    "DependencyImage",
    "JobSpec",
    "JobSpecParam",
    "LocalizeUrl",
    "check_mappings",
    "iter_mappings",
    "load_job_spec",
]

Destination = Literal["positional", "localize", "context"]
#: host path (``$VARS`` allowed) -> container path, ``[path]`` or ``[path, "ro"|"rw"]``
Mappings = dict[str, Any]


def check_mappings(field: str, mappings: Mapping[str, Any]) -> None:
    """Validate ``imported_worker_files`` / ``container_mappings`` values, naming the offending key."""
    for host, target in mappings.items():
        where = f"{field}[{json.dumps(host)}]"
        if not host:
            raise field_error(where, "host path must not be empty")
        if isinstance(target, str):
            ok = bool(target)
        elif isinstance(target, list) and len(target) in (1, 2) and all(isinstance(t, str) for t in target):
            ok = bool(target[0]) and (len(target) == 1 or target[1] in ("ro", "rw"))
        else:
            ok = False
        if not ok:
            raise field_error(
                where, f"expected a container path, [path] or [path, 'ro'|'rw'], got {target!r}"
            )


def iter_mappings(mappings: Mapping[str, Any]) -> list[tuple[str, str, Literal["ro", "rw"]]]:
    """``(host, container, mode)`` triples of validated mappings; the mode defaults to ``ro`` as in HySDS."""
    out: list[tuple[str, str, Literal["ro", "rw"]]] = []
    for host, target in mappings.items():
        if isinstance(target, str):
            out.append((host, target, "ro"))
        else:
            out.append((host, target[0], "rw" if len(target) > 1 and target[1] == "rw" else "ro"))
    return out


class LocalizeUrl(Model, frozen=True, kw_only=True):
    """One input to download: ``local_path`` None -> the job dir; ``cache`` defaults to True as in HySDS."""

    url: str
    local_path: str | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if not self.url:
            raise field_error("url", "must not be empty")


class JobSpecParam(Model, frozen=True, kw_only=True):
    """Where a submitted param goes: command line (positional), ``localize_urls`` or ``_context.json``."""

    name: str
    destination: Destination

    def __post_init__(self) -> None:
        if not self.name:
            raise field_error("name", "must not be empty")


class DependencyImage(Model, frozen=True, kw_only=True):
    """An extra image loaded before the job (for PGEs that start sibling containers)."""

    container_image_name: str
    container_image_url: str | None = None  # may be a ``$VAR/...`` template, or null (pull by name)
    container_image_urls: dict[str, str] | str | None = None  # {arch: url}, or that dict as a JSON string
    container_mappings: Mappings = {}
    runtime_options: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if not self.container_image_name:
            raise field_error("container_image_name", "must not be empty")
        check_mappings("container_mappings", self.container_mappings)


class JobSpec(Document, frozen=True, kw_only=True):
    """A job type's specification (also found in job JSON under ``params.job_specification``)."""

    command: str
    params: list[JobSpecParam]
    disk_usage: str | None = None
    # Seconds. Real job-specs write integral floats (``1020.0``); those are kept as ints, others refused.
    soft_time_limit: int | float | None = None
    time_limit: int | float | None = None
    imported_worker_files: Mappings = {}
    dependency_images: list[DependencyImage] = []
    runtime_options: dict[str, Any] = {}
    pre: list[str] = []
    post: list[str] = []
    disable_pre_builtins: bool = False
    disable_post_builtins: bool = False
    recommended_queues: list[str] = msgspec.field(default_factory=list, name="recommended-queues")
    required_queues: list[str] = []
    localize_urls: list[str | LocalizeUrl] = []

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise field_error("command", "must not be empty")
        check_size("disk_usage", self.disk_usage)
        for name in ("soft_time_limit", "time_limit"):
            limit = getattr(self, name)
            if limit is None:
                continue
            if isinstance(limit, float):
                if not limit.is_integer():
                    raise field_error(name, f"must be a whole number of seconds, got {limit}")
                limit = int(limit)
                msgspec.structs.force_setattr(self, name, limit)
            if limit <= 0:
                raise field_error(name, f"must be a positive number of seconds, got {limit}")
        check_mappings("imported_worker_files", self.imported_worker_files)
        for i, step in enumerate(self.pre):
            if not step:
                raise field_error(f"pre[{i}]", "must not be empty")
        for i, step in enumerate(self.post):
            if not step:
                raise field_error(f"post[{i}]", "must not be empty")

    @property
    def disk_usage_bytes(self) -> int | None:
        """``disk_usage`` in bytes (already validated), or None when the spec gives none."""
        return None if self.disk_usage is None else parse_size(self.disk_usage)

    def params_for(self, destination: Destination) -> list[str]:
        """Names of the params with the given destination, in spec order."""
        return [p.name for p in self.params if p.destination == destination]


def load_job_spec(data: dict[str, Any] | bytes | str, source: str | None = None) -> JobSpec:
    """Validate a job-spec document; raises :class:`JobFormatError` naming the file, field and problem."""
    return load_as(JobSpec, data, source, JobFormatError)
