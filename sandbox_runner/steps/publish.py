"""Default post-processing step ``publish_datasets`` (HySDS ``dataset_ingest_bulk.publish_datasets``).

Runs for a job whose command exited 0; finds the ``<id>/<id>.dataset.json`` products it made (localized inputs
carry ``.localized`` and are skipped), publishes them all or none, and writes ``_datasets.json``.
"""

from __future__ import annotations

import json

from sandbox_runner.datasets.publish import find_datasets, publish_products
from sandbox_runner.steps.base import JobContext


def wants_force(ctx: JobContext) -> bool:
    """``_force_ingest`` as the PGE left it in ``_context.json`` (HC-331), or as the job asked for it."""
    context = dict(ctx.context)
    try:
        on_disk = json.loads(ctx.job_dir.joinpath("_context.json").read_text())
        if isinstance(on_disk, dict):
            context.update(on_disk)
    except (OSError, ValueError):
        pass  # a PGE that broke _context.json does not get to force anything
    return bool(context.get("_force_ingest") or ctx.job.get("publish_overwrite_ok"))


def publish_datasets(ctx: JobContext) -> None:
    if ctx.job_info.get("status") != 0:
        return  # as HySDS: a failed job publishes nothing (triage takes over)
    docs = publish_products(ctx, find_datasets(ctx.job_dir), force=wants_force(ctx))
    ctx.notes["publish_datasets"] = [d["id"] for d in docs]
    assert ctx.workdir is not None
    ctx.workdir.write_json("_datasets.json", docs)
