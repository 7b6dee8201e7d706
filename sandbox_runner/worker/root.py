"""Which work root a worker owns: the one its jobs land under, so reconcile and the scrubbers look there too."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox_runner.settings import Settings


def pin_work_root(settings: Settings) -> Settings:
    """``settings`` with ``work_root`` set to the worker config's ``root_work_dir`` when only that names one.

    Jobs take their root from the worker config when nothing else sets it (``Settings.resolve_work_root``); a
    worker that reconciled and scrubbed ``node_root`` (the per-user default) would never see them. A config it
    cannot read or parse leaves the settings alone: every job then fails naming the file, and nothing else does.
    """
    if settings.work_root is not None or settings.worker_cfg is None:
        return settings
    try:
        doc = json.loads(Path(settings.worker_cfg).read_bytes())
    except (OSError, ValueError):
        return settings
    root = doc.get("root_work_dir") if isinstance(doc, dict) else None
    return settings.with_overrides(work_root=Path(root)) if isinstance(root, str) and root else settings
