"""Filesystem policy for the work root: disk admission with reservations, the scrub ladder, periodic scrubbing.

``policy``      the policy file (``policies/filesystem.toml``), loaded and checked
``jobdirs``     walking ``<root>/jobs`` oldest first; running / crashed / succeeded / failed, by lock not by marker
``quarantine``  ``<root>/quarantine``: atomic moves in, oldest-first purges
``cache``       the localize cache as the scrubber needs it (LRU eviction protocol)
``ladder``      the scrub ladder (and housekeeping), streaming, with one event per action
``admission``   check-and-reserve under the root lock; refusal with what was needed and what is free
``periodic``    the scrubber a long-running worker calls between jobs, and the body of ``sandbox-runner scrub``
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): admitting a job needs only ``admission`` and ``policy``; the ladder and its
# helpers are imported when space is actually short, keeping them off every job's start-up.
_WHERE = {
    "Reservation": "admission", "admit": "admission", "Scrubber": "ladder", "PeriodicScrubber": "periodic",
    "scrub_once": "periodic", "FsPolicy": "policy", "load_fs_policy": "policy", "Action": "report",
    "Report": "report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sandbox_runner.fspolicy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sandbox_runner.fspolicy.{_WHERE[name]}"), name)
