"""Default post-processing step (placeholder until the data-in/out issue lands)."""

from __future__ import annotations

from sandbox_runner.steps.base import JobContext


def publish_datasets(ctx: JobContext) -> None:
    if ctx.job_info.get("status") != 0:
        return
    ctx.workdir.write_json("_datasets.json", []) if ctx.workdir else None
