"""Tell which HySDS document a file is, and validate it (``sandbox-runner validate <file>``).

File names decide first, because HySDS names them by convention (``job-spec.json.<name>``,
``hysds-io.json.<name>``, ``datasets.json``...); the content decides only for files named otherwise.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any, Literal

from sandbox_runner.errors import InputError, JobFormatError
from sandbox_runner.models._decode import decode_json
from sandbox_runner.models.datasets import load_datasets_config
from sandbox_runner.models.hysdsio import load_hysds_io
from sandbox_runner.models.job import load_job
from sandbox_runner.models.jobspec import load_job_spec
from sandbox_runner.models.worker_config import load_worker_config

__all__ = ["Kind", "detect_kind", "kind_from_name", "step_warnings", "validate_file"]

Kind = Literal["job", "job-spec", "hysds-io", "worker-config", "datasets"]

# checked in order: the first matching pattern wins (``job-spec.json.x`` also matches ``*job*.json*``)
_NAME_PATTERNS: tuple[tuple[str, Kind], ...] = (
    ("job-spec.json*", "job-spec"),
    ("hysds-io.json*", "hysds-io"),
    ("datasets.json", "datasets"),
    ("datasets.json.*", "datasets"),
    ("worker-config*", "worker-config"),
    ("*worker*.json", "worker-config"),
    ("*worker*.json.*", "worker-config"),  # HySDS's own configs/worker/job_worker.json.<type>
    ("*job*.json", "job"),
    ("job.json.*", "job"),
)

_LOADERS: dict[Kind, Callable[[Any, str | None], object]] = {
    "job": load_job,
    "job-spec": load_job_spec,
    "hysds-io": load_hysds_io,
    "worker-config": load_worker_config,
    "datasets": load_datasets_config,
}


def kind_from_name(path: str) -> Kind | None:
    """The kind a file's name announces, or None."""
    name = os.path.basename(path).lower()
    return next((kind for pattern, kind in _NAME_PATTERNS if fnmatch.fnmatchcase(name, pattern)), None)


def _kind_from_content(data: Any) -> Kind | None:
    if not isinstance(data, dict):
        return None
    if "job_info" in data or "job_id" in data:
        return "job"
    if "configs" in data:
        return "worker-config"
    if "datasets" in data:
        return "datasets"
    if "command" in data and "params" in data:
        return "job-spec"
    params = data.get("params")
    if isinstance(params, list) and any(isinstance(p, dict) and "from" in p for p in params):
        return "hysds-io"
    if isinstance(params, list) and (
        "submission_type" in data or "enable_dedup" in data or "component" in data
    ):
        return "hysds-io"
    return None


def detect_kind(path: str, data: Any) -> Kind:
    """The kind of document ``data`` (read from ``path``) is; :class:`JobFormatError` when it cannot tell."""
    kind = kind_from_name(path) or _kind_from_content(data)
    if kind is None:
        raise JobFormatError(
            "cannot tell what kind of file this is (expected a job JSON, job-spec, hysds-io, worker config "
            "or datasets.json)",
            source=path,
        )
    return kind


def validate_file(path: str) -> tuple[str, str | None]:
    """``(kind, None)`` if the file is valid, else ``(kind or "unknown", one-line error)``. Never raises."""
    kind: str = kind_from_name(path) or "unknown"
    try:
        with open(path, "rb") as fh:
            content = fh.read()
    except OSError as exc:
        return kind, f"{path}: cannot read: {exc.strerror or exc}"
    try:
        data = decode_json(content, path, JobFormatError)
        kind = detect_kind(path, data)
        _LOADERS[kind](data, path)
    except InputError as exc:
        return kind, _one_line(str(exc))
    except Exception as exc:  # a validator bug must not crash `validate`; report it as a finding
        return kind, _one_line(f"{path}: internal error while validating: {type(exc).__name__}: {exc}")
    return kind, None


def step_warnings(path: str) -> list[str]:
    """Step names in a valid job-spec or job (``pre``/``post``) that this worker cannot run, one line each.

    A warning, not an error: the name is valid HySDS (any importable function), and whether it runs depends on
    the worker's plugins. hysds_commons' own example job-specs name ``some.python.preprocessor.function``.
    Call only on a file :func:`validate_file` accepted.
    """
    from sandbox_runner.job.steps.registry import unknown_steps  # the models do not depend on steps otherwise

    try:
        with open(path, "rb") as fh:
            data = decode_json(fh.read(), path, JobFormatError)
        kind = detect_kind(path, data)
        document = _LOADERS[kind](data, path)
    except (OSError, InputError):
        return []  # validate_file reports these
    if kind == "job-spec":
        spec, prefix = document, ""
    elif kind == "job":
        spec, prefix = getattr(document, "job_specification", None), "params.job_specification."
    else:
        return []
    return [_one_line(f"{prefix}{field}: {problem}") for field, problem in unknown_steps(spec)]


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
