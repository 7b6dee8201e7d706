"""Default pre-processing steps (placeholder until the data-in/out issue lands: plain downloads only)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sandbox_runner.errors import StepError
from sandbox_runner.steps.base import JobContext


def _target(ctx: JobContext, url: str, local_path: str | None) -> Path:
    base = ctx.job_dir
    dest = (base / local_path) if local_path else base
    if str(local_path or "").endswith("/") or dest.is_dir():
        dest = dest / Path(url.rstrip("/")).name
    resolved = dest.resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise StepError(f"localize_urls: local_path {local_path!r} escapes the job dir")
    return resolved


def localize_urls(ctx: JobContext) -> None:
    for item in ctx.job.get("localize_urls") or []:
        url, local_path = item["url"], item.get("local_path")
        dest = _target(ctx, url, local_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("file://") or url.startswith("/"):
            shutil.copyfile(url.removeprefix("file://"), dest)
        else:
            import httpx

            with httpx.stream("GET", url, follow_redirects=True, timeout=60) as resp, dest.open("wb") as fh:
                resp.raise_for_status()
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)


def mark_localized_datasets(ctx: JobContext) -> None:
    for ds in ctx.job_dir.rglob("*.dataset.json"):
        if ds.name == f"{ds.parent.name}.dataset.json":
            (ds.parent / ".localized").touch()


def validate_checksum_files(ctx: JobContext) -> None:
    return None
