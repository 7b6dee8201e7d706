"""Publish a job's datasets: recognize all, then put each (several at once), all or nothing for the job.

Every product is recognized before anything is uploaded, so a datasets.json problem publishes nothing. Each
dataset is atomic at its location (see destinations.py); if one fails, the ones already put are taken back.
An existing dataset is replaced only when the job forces it (``_force_ingest``) or the existing one was
published by the same payload (a retry); both, and a refusal, are ``dataset-exists`` events with the reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runner.data.publish.destinations import RECORD, Destination, Files, destination
from sandbox_runner.data.publish.recognize import Product, recognize
from sandbox_runner.data.transfer import Transfers
from sandbox_runner.errors import NoClobberError, PublishError
from sandbox_runner.events.documents import iso_now
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.models import PublishTarget
from sandbox_runner.redact import redact_obj, redact_url

LOCALIZED = ".localized"
_emit = threading.Lock()  # datasets publish from several threads; sinks are not all thread-safe


def find_datasets(job_dir: Path) -> list[Path]:
    """``<id>/<id>.dataset.json`` dirs under the job dir, minus localized inputs (symlinks are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(job_dir):
        name = os.path.basename(dirpath)
        if f"{name}.dataset.json" in filenames and LOCALIZED not in filenames and dirpath != str(job_dir):
            found.append(Path(dirpath))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


@dataclass
class _Put:
    product: Product
    dests: list[Destination] = field(default_factory=list)
    t0: float = 0.0
    start: str = ""
    end: str = ""
    size: int = 0
    images: list[str] = field(default_factory=list)


def _files(prod_dir: Path, job_dir: Path) -> Files:
    files: Files = []
    root = job_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(prod_dir):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                # a symlink to /etc/passwd in an output dir must not publish /etc/passwd
                raise PublishError(f"{prod_dir.name}: {path.relative_to(prod_dir)} links outside the job dir")
            files.append((real, path.relative_to(prod_dir).as_posix()))
    return files


def job_context(ctx: JobContext) -> dict[str, Any]:
    """``_context.json`` as the job left it: HySDS re-reads it after the command, so a PGE can set
    ``_force_ingest`` (HC-331) or ``_triage_disabled``. An unreadable file leaves the context we wrote."""
    context = dict(ctx.context)
    try:
        on_disk = json.loads(ctx.job_dir.joinpath("_context.json").read_text())
    except (OSError, ValueError):
        return context
    if isinstance(on_disk, dict):
        context.update(on_disk)
    return context


def _profile(target: PublishTarget | None) -> str | None:
    return target.s3_profile_name if target is not None else None


def _payload_id(ctx: JobContext) -> str | None:
    payload = ctx.job_info.get("job_payload") or {}
    value = payload.get("payload_task_id")
    return str(value) if value else None


def _decide(ctx: JobContext, put: _Put, dest: Destination, force: bool) -> bool:
    """True to replace what is there, False when nothing is; NoClobberError (and an event) to refuse."""
    existing = dest.existing()
    if existing is None:
        return False
    p, payload = put.product, _payload_id(ctx)
    event = {"id": p.id, "location": dest.shown, "payload_id": payload, "task_id": ctx.job.get("task_id"),
             "existing_payload_id": existing.get("payload_id"), "existing_task_id": existing.get("task_id")}
    if force:
        status, reason = "forced", "the job forces ingest (_force_ingest)"
    elif payload is not None and existing.get("payload_id") == payload:
        status, reason = "retry", "a retry of the payload that published it"
    else:
        by = f"task {existing.get('task_id')} (payload {existing.get('payload_id')})" if existing else "unknown"
        status = "refused"
        reason = f"dataset {p.id} already exists at {dest.shown}, published by {by}; set _force_ingest to replace it"
    with _emit:
        ctx.emitter.event("dataset-exists", status, {**event, "reason": reason})
    if status == "refused":
        raise NoClobberError(reason)
    return True


def _put_one(ctx: JobContext, put: _Put, transfers: Transfers, force: bool) -> None:
    p, job_dir = put.product, ctx.job_dir
    put.start, put.t0 = iso_now(), time.monotonic()
    # as HySDS: the dataset carries the job's context, here with credentials in URLs redacted
    context = redact_obj(job_context(ctx))
    (p.path / f"{p.id}.context.json").write_text(json.dumps(context, indent=2, sort_keys=True, default=str))
    files = _files(p.path, job_dir)
    put.size = sum(src.stat().st_size for src, _ in files)
    put.images = [rel for _, rel in files if rel.endswith("browse.png")]
    if p.publish_location:
        record = job_dir / f".pub_context-{p.id}.json"
        record.write_text(json.dumps({"payload_id": _payload_id(ctx), "payload_hash": ctx.job_info.get(
            "payload_hash"), "task_id": ctx.job.get("task_id"), "job_id": ctx.job.get("job_id"),
            "time": iso_now()}, sort_keys=True))
        try:
            dest = destination(p.publish_location, transfers, _profile(p.entry.publish))
            replace = _decide(ctx, put, dest, force)
            dest.put([*files, (record, RECORD)], replace=replace)
            put.dests.append(dest)
        finally:
            record.unlink(missing_ok=True)
    browse = [(src, rel) for src, rel in files if rel.endswith(".png") and "browse" in rel.rsplit("/", 1)[-1]]
    if p.browse_location and browse:
        bdest = destination(p.browse_location, transfers, _profile(p.entry.browse))
        bdest.put(browse, replace=True)  # browse images are derived: HySDS overwrites them too
        put.dests.append(bdest)
    put.end = iso_now()


def publish_products(ctx: JobContext, prod_dirs: Iterable[Path], *, force: bool) -> list[dict[str, Any]]:
    """Publish every product dir; the HySDS dataset docs, in order. Raises with nothing left published."""
    prod_dirs = list(prod_dirs)
    if not prod_dirs:
        return []
    if ctx.datasets_cfg is None:
        raise PublishError(f"{len(prod_dirs)} dataset(s) to publish ({prod_dirs[0].name}, ...) but no "
                           "datasets.json is configured (HYSDS_DATASETS_CFG)")
    hostname = ctx.emitter.hostname
    puts = [_Put(recognize(ctx.datasets_cfg, d, hostname=hostname, env=ctx.settings.env)) for d in prod_dirs]
    transfers = Transfers(ctx.settings)
    try:
        with ThreadPoolExecutor(max_workers=min(ctx.settings.transfer_concurrency, len(puts)),
                                thread_name_prefix="publish") as pool:
            futures = [pool.submit(_put_one, ctx, put, transfers, force) for put in puts]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            for put in puts:
                for dest in put.dests:
                    dest.undo()
            raise errors[0]  # type: ignore[misc]
        for put in puts:
            for dest in put.dests:
                dest.finish()
    finally:
        transfers.close()
    return [_report(ctx, put) for put in puts]


def _report(ctx: JobContext, put: _Put) -> dict[str, Any]:
    p = put.product
    duration = max(time.monotonic() - put.t0, 1e-6)
    doc: dict[str, Any] = {
        "id": p.id, "objectid": p.id, "metadata": p.met, "dataset": p.dataset, "ipath": p.ipath,
        "system_version": p.version, "dataset_level": p.level, "dataset_type": p.type,
        "urls": p.publish_urls, "browse_urls": p.browse_urls, "images": put.images,
        "prov": ctx.context.get("_prov", {}),
    }
    if p.index:
        doc["index"] = p.index
    doc.update(p.dataset_json)
    metric = {"path": str(p.path), "disk_usage": put.size, "time_start": put.start, "time_end": put.end,
              "duration": duration, "transfer_rate": put.size / duration, "id": p.id, "urls": p.publish_urls,
              "browse_urls": p.browse_urls, "dataset": p.dataset, "ipath": p.ipath, "system_version": p.version,
              "dataset_level": p.level, "dataset_type": p.type, "index": p.index}
    ctx.job_info.setdefault("metrics", {}).setdefault("products_staged", []).append(metric)
    ctx.emitter.event("dataset-published", "published", {
        "id": p.id, "dataset": p.dataset, "ipath": p.ipath, "version": p.version,
        "location": redact_url(p.publish_location) if p.publish_location else None, "urls": p.publish_urls,
        "size": put.size, "job_id": ctx.job.get("job_id"), "task_id": ctx.job.get("task_id")})
    return doc
