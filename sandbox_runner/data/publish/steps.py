"""Default post-processing step ``publish_datasets`` (HySDS ``dataset_ingest_bulk.publish_datasets``).

Runs for a job whose command exited 0; finds the ``<id>/<id>.dataset.json`` products it made (localized inputs
carry ``.localized`` and are skipped), publishes them all or none, and writes ``_datasets.json``.
"""

from __future__ import annotations

from sandbox_runner.data.publish.ingest import find_datasets, job_context, publish_products
from sandbox_runner.job.steps.base import JobContext


def wants_force(ctx: JobContext) -> bool:
    """``_force_ingest`` as the PGE left it in ``_context.json`` (HC-331), or as the job asked for it."""
    return bool(job_context(ctx).get("_force_ingest") or ctx.job.get("publish_overwrite_ok"))


def publish_datasets(ctx: JobContext) -> None:
    if ctx.job_info.get("status") != 0:
        return  # as HySDS: a failed job publishes nothing (triage takes over)
    docs = publish_products(ctx, find_datasets(ctx.job_dir), force=wants_force(ctx))
    ctx.notes["publish_datasets"] = [d["id"] for d in docs]
    assert ctx.workdir is not None
    ctx.workdir.write_json("_datasets.json", docs)
