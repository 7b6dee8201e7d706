"""Default pre-processing steps: ``localize_urls``, ``mark_localized_datasets``, ``validate_checksum_files``.

HySDS honours an absolute ``local_path`` (a job can write anywhere the worker can); here every target must stay
inside the job dir. Checksum files that arrive with their data are verified while the data streams in;
``validate_checksum_files`` reads only what was not (files inside localized directories).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sandbox_runner.data.localize.cache import Cache
from sandbox_runner.data.localize.localizer import Item, Localizer, url_basename
from sandbox_runner.data.transfer import Transfers, scheme_of
from sandbox_runner.data.transfer.digests import file_digests, read_sidecar, sidecar_algo
from sandbox_runner.data.transfer.progress import Progress
from sandbox_runner.errors import IntegrityError, JobFormatError
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.workroot import WorkRoot

LOCALIZED = ".localized"


def cache_root(ctx: JobContext) -> Path:
    if ctx.settings.cache_dir is not None:
        return ctx.settings.cache_dir
    assert ctx.work_root is not None
    return WorkRoot(ctx.work_root).cache


def _target(job_dir: Path, url: str, local_path: Any, where: str) -> Path:
    name = url_basename(url)
    if local_path in (None, ""):
        rel = Path(name)
    else:
        text = str(local_path)
        if os.path.isabs(text):
            raise JobFormatError(f"local_path {text!r} is absolute; it must be relative to the job dir",
                                 field=where)
        rel = Path(os.path.normpath(text))
        if rel.parts[:1] == ("..",):
            raise JobFormatError(f"local_path {text!r} escapes the job dir", field=where)
        if text.endswith("/") or (job_dir / rel).is_dir():
            rel = rel / name  # HySDS: a directory target gets the URL's basename
    if not name and rel.name == "":
        raise JobFormatError(f"cannot name the file for {url!r}: give a local_path", field=where)
    dest = job_dir / rel
    if dest == job_dir or not dest.is_relative_to(job_dir):
        raise JobFormatError(f"local_path {local_path!r} escapes the job dir", field=where)
    return dest


def plan(ctx: JobContext) -> list[Item]:
    job_dir = ctx.job_dir
    items = []
    for i, entry in enumerate(ctx.job.get("localize_urls") or []):
        where = f"localize_urls[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not entry["url"]:
            raise JobFormatError("each entry needs a 'url' string", field=where)
        url = entry["url"]
        dest = _target(job_dir, url, entry.get("local_path"), f"{where}.local_path")
        # HySDS: cache defaults to true; "false" strings from form submissions mean false. A file:// source is
        # already local: caching it would only add a second copy of it
        cache = entry.get("cache", True) not in (False, "false", "False", 0) and scheme_of(url) != "file"
        items.append(Item(url=url, dest=dest, cache=cache, job_dir=job_dir))
    return items


def _expectations(items: list[Item]) -> dict[Path, dict[str, str]]:
    """data file -> {algo: expected hex} from the checksum files already in the job dir."""
    out: dict[Path, dict[str, str]] = {}
    for item in items:
        algo = sidecar_algo(item.dest.name)
        if algo is not None and item.dest.is_file():
            out.setdefault(item.dest.with_name(item.dest.name[: -len(algo) - 1]), {})[algo] = \
                read_sidecar(item.dest)
    return out


def localize_urls(ctx: JobContext) -> None:
    items = plan(ctx)
    if not items:
        return
    settings = ctx.settings
    transfers = Transfers(settings)
    progress = Progress.for_mode(settings.progress, "localize", len(items))
    localizer = Localizer(transfers, Cache(cache_root(ctx)), ctx.cancel, on_bytes=progress.add)
    sidecars = [i for i in items if sidecar_algo(i.dest.name)]
    data = [i for i in items if not sidecar_algo(i.dest.name)]
    workers = settings.transfer_concurrency
    try:
        metrics = localizer.run_all(sidecars, {}, workers, progress.file_done)
        expected = _expectations(sidecars)
        metrics += localizer.run_all(data, expected, workers, progress.file_done)
    finally:
        progress.close()
        transfers.close()
    order = {str(i.dest): n for n, i in enumerate(items)}
    metrics.sort(key=lambda m: order[m["path"]])
    ctx.job_info.setdefault("metrics", {}).setdefault("inputs_localized", []).extend(metrics)
    ctx.notes["localize"] = {"verified": sorted(str(p) for p, e in expected.items() if e and p.exists()),
                             "paths": [str(i.dest) for i in items]}


def mark_localized_datasets(ctx: JobContext) -> None:
    """Every ``<id>/<id>.dataset.json`` present before the command is an input: never publish it again."""
    marked = []
    for dirpath, dirnames, filenames in os.walk(ctx.job_dir):  # never follows symlinks out of the job dir
        name = os.path.basename(dirpath)
        if f"{name}.dataset.json" in filenames:
            Path(dirpath, LOCALIZED).touch()
            marked.append(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    ctx.notes["localized_datasets"] = marked


def validate_checksum_files(ctx: JobContext) -> None:
    """HySDS's check of ``X.<algo>`` files next to localized data, for what was not verified while streaming."""
    notes = ctx.notes.get("localize") or {}
    verified = set(notes.get("verified", []))
    # the paths localize wrote (re-planning now would see the directories it created and append basenames)
    paths = [Path(p) for p in notes["paths"]] if "paths" in notes else [i.dest for i in plan(ctx)]
    bad = []
    for dest in paths:
        files = sorted(p for p in dest.iterdir() if p.is_file()) if dest.is_dir() else [dest]
        for sidecar in files:
            algo = sidecar_algo(sidecar.name)
            target = sidecar.with_name(sidecar.name[: -len(algo) - 1]) if algo else None
            if algo is None or target is None or not target.is_file() or str(target) in verified:
                continue
            want = read_sidecar(sidecar)
            got = file_digests(target, [algo], {algo: want})[algo]
            if got.lower() != want:
                bad.append(f"{target.relative_to(ctx.job_dir)} ({algo} expected {want} got {got})")
    if bad:
        raise IntegrityError(f"checksum mismatch for {', '.join(bad)}")
