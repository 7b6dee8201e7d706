"""Pre/post-processing steps by name, as a job-spec's ``pre`` / ``post`` lists name them.

HySDS resolves names with ``import_module`` (any importable function runs inside the worker). We resolve them
against a registry instead: our builtins, HySDS's dotted names for the same behaviour (so real job-specs work
unchanged), and plugins a site installs under the ``sandbox_runner.job.steps`` entry-point group. An unknown name is
a clear error before anything runs, never an ``ImportError`` half way through a job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from sandbox_runner.errors import UnknownStepError

if TYPE_CHECKING:
    from sandbox_runner.job.steps.base import JobContext

StepFunc = Callable[["JobContext"], Any]

#: canonical name -> "module:function" (imported lazily: the publish path should not load httpx for an echo job)
BUILTINS: dict[str, str] = {
    "localize_urls": "sandbox_runner.data.localize.steps:localize_urls",
    "mark_localized_datasets": "sandbox_runner.data.localize.steps:mark_localized_datasets",
    "validate_checksum_files": "sandbox_runner.data.localize.steps:validate_checksum_files",
    "publish_datasets": "sandbox_runner.data.publish.steps:publish_datasets",
    "triage": "sandbox_runner.data.triage.steps:triage",
}

#: HySDS's names (current and historical, see HYSDS-WORKER.md 3.1) for the same steps.
ALIASES: dict[str, str] = {
    "hysds.localize.localize_urls": "localize_urls",
    "hysds.localize.localize_urls_parallel": "localize_urls",
    "hysds.utils.localize_urls": "localize_urls",
    "hysds.utils.mark_localized_datasets": "mark_localized_datasets",
    "hysds.utils.validate_checksum_files": "validate_checksum_files",
    "hysds.dataset_ingest_bulk.publish_datasets": "publish_datasets",
    "hysds.dataset_ingest_bulk.publish_datasets_parallel": "publish_datasets",
    "hysds.dataset_ingest.publish_datasets": "publish_datasets",
    "hysds.utils.publish_datasets": "publish_datasets",
    "hysds.triage.triage": "triage",
    "hysds.utils.triage": "triage",
}

DEFAULT_PRE = ("localize_urls", "mark_localized_datasets", "validate_checksum_files")
#: triage is a default here (HySDS needs it named in the job-spec): every failed job leaves a bundle that tells why,
#: unless its context sets ``_triage_disabled``. It does nothing for a job that exited 0.
DEFAULT_POST = ("publish_datasets", "triage")


@cache
def _plugins() -> dict[str, str]:
    # imported here: importlib.metadata costs ~15 ms of start-up, paid only when a job names a non-builtin step
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="sandbox_runner.steps")}


def canonical(name: str) -> str:
    """The registry name for ``name``; raises UnknownStepError naming the known ones."""
    name = name.strip()
    if name in BUILTINS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    if name in _plugins():
        return name
    known = sorted(set(BUILTINS) | set(_plugins()))
    raise UnknownStepError(f"unknown step {name!r} (known: {', '.join(known)}; HySDS names such as "
                           "'hysds.triage.triage' are accepted too)")


def unknown_steps(spec: Any) -> list[tuple[str, str]]:
    """``(field, problem)`` for each ``pre``/``post`` name of ``spec`` this worker cannot run: ``("pre[1]", ...)``.

    ``sandbox-runner validate`` reports these before a job is queued, not only when ``run-job`` plans the steps.
    """
    found = []
    for kind in ("pre", "post"):
        for i, name in enumerate(getattr(spec, kind, None) or []):
            try:
                canonical(name)
            except UnknownStepError as exc:
                found.append((f"{kind}[{i}]", str(exc)))
    return found


def load(name: str) -> StepFunc:
    target = BUILTINS.get(name) or _plugins()[name]
    module, _, attr = target.partition(":")
    func: StepFunc = getattr(importlib.import_module(module), attr)
    return func


def plan_steps(spec: Any, *, kind: str) -> list[str]:
    """The ordered, de-duplicated canonical step names for ``kind`` ("pre" or "post") of a job-spec.

    ``spec`` is a typed JobSpec or None. Builtins first unless ``disable_<kind>_builtins``, then the spec's list.
    """
    defaults = DEFAULT_PRE if kind == "pre" else DEFAULT_POST
    disabled = bool(getattr(spec, f"disable_{kind}_builtins", False)) if spec is not None else False
    extra = list(getattr(spec, kind, None) or []) if spec is not None else []
    names = ([] if disabled else list(defaults)) + [canonical(n) for n in extra]
    return list(dict.fromkeys(names))
