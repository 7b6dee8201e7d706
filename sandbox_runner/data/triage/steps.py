"""Post-processing step ``triage`` (HySDS ``hysds.triage.triage``): a failed job leaves a bundle that tells why.

On by default (it is in the default post steps) for every job that did not exit 0, including one that failed
before its command ran; ``_triage_disabled`` in the job's context turns it off. The bundle
``triaged_job-<job_id>_task-<task_id>`` holds the job's ``_*`` files, its ``*.log`` files and
``_triage_additional_globs``, redacted (see bundle.py), and is published like any dataset, forced (HC-502). With
no datasets.json entry for it, the bundle stays in the job dir and an event says so.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import structlog

from sandbox_runner import __version__
from sandbox_runner.data.publish.ingest import job_context, publish_products
from sandbox_runner.data.publish.recognize import render
from sandbox_runner.data.triage.bundle import Redactor, copy_tree, within
from sandbox_runner.errors import PublishError
from sandbox_runner.job.steps.base import JobContext

log = structlog.get_logger("sandbox_runner")

DEFAULT_ID_FORMAT = "triaged_job-{job_id}_task-{job[task_id]}"
_TRIAGED = re.compile(r"^triaged_job-(?P<job_id>.+)_task-")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:+=@,-]")


def triage_id(ctx: JobContext, context: dict[str, Any]) -> str:
    job = ctx.job
    job_id = str(job.get("job_id", "unknown"))
    m = _TRIAGED.match(str(ctx.job_info.get("id") or ""))
    if m:  # triaging a job that is itself a triage retry: keep the original job id
        job_id = m["job_id"]
    fmt = context.get("_triage_id_format") or DEFAULT_ID_FORMAT
    values = {"job_id": job_id, "job": job, "job_context": context}
    try:
        tid = render(str(fmt), values, what="_triage_id_format", prod_id="triage")
    except PublishError as exc:
        log.warning("triage: bad _triage_id_format, using the default", error=str(exc))
        tid = render(DEFAULT_ID_FORMAT, values, what="_triage_id_format", prod_id="triage")
    # one path component: a job id with a '/' must not point the bundle somewhere else
    tid = _UNSAFE.sub("_", tid).lstrip(".")[:200]
    return tid or f"triaged_job-{job.get('task_id')}"


def _secrets(ctx: JobContext) -> list[str]:
    """The values of the environment the command was given (expanded, and as the work config wrote them)."""
    values = [v for v in (getattr(ctx.spec, "env", None) or {}).values() if isinstance(v, str)]
    command = getattr(ctx.work_cfg, "command", None)
    for entry in getattr(command, "env", None) or []:
        value = entry.get("value") if isinstance(entry, dict) else getattr(entry, "value", None)
        if isinstance(value, str):
            values.append(value)
    return values


def build_bundle(ctx: JobContext, context: dict[str, Any]) -> tuple[str, list[str]]:
    job_dir, info = ctx.job_dir, ctx.job_info
    tid = triage_id(ctx, context)
    bundle = job_dir / tid
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir()
    redactor = Redactor(_secrets(ctx))
    dataset = {"version": f"v{__version__}", "label": f"triage for job {ctx.job.get('job_id')}"}
    dataset.update({k: v for k, v in (("starttime", info.get("cmd_start")), ("endtime", info.get("cmd_end")))
                    if v})
    (bundle / f"{tid}.dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    failure = ctx.notes.get("failure")
    met = redactor.obj({**info, "error": failure} if failure else dict(info))
    (bundle / f"{tid}.met.json").write_text(json.dumps(met, indent=2, sort_keys=True, default=str) + "\n")
    if failure:  # the runner's message: the one thing no job file records when a pre-step failed
        (bundle / "_failure.txt").write_text(redactor.text(str(failure)) + "\n")
    picks = sorted(p for p in job_dir.iterdir() if p.name.startswith("_")) + sorted(job_dir.glob("*.log"))
    for pattern in context.get("_triage_additional_globs") or []:
        picks += sorted(job_dir.glob(str(pattern)))
    skipped: list[str] = []
    seen = set()
    for path in picks:
        if path == bundle or path in seen:
            continue
        seen.add(path)
        if not within(job_dir, path) or path.resolve() == bundle.resolve():
            skipped.append(str(path))
            continue
        copy_tree(redactor, path, bundle / path.relative_to(job_dir), skipped)
    if skipped:  # symlinks, unreadable files, globs outside the job dir: say so rather than drop silently
        (bundle / "_triage_skipped.txt").write_text("".join(redactor.text(s) + "\n" for s in skipped))
        log.info("triage: not copied", skipped=skipped[:20], count=len(skipped))
    return tid, skipped


def triage(ctx: JobContext) -> None:
    if ctx.job_info.get("status") == 0:
        return
    context = job_context(ctx)
    if context.get("_triage_disabled"):
        return
    tid, _ = build_bundle(ctx, context)
    bundle = ctx.job_dir / tid
    assert ctx.workdir is not None
    cfg = ctx.datasets_cfg
    if cfg is None or not any(entry.match(str(bundle)) for entry in cfg.datasets):
        reason = "no datasets.json is configured" if cfg is None else f"no datasets.json entry matches {tid}"
        ctx.emitter.event("triage", "unpublished", {"id": tid, "path": str(bundle), "reason": reason,
                                                    "job_id": ctx.job.get("job_id")})
        ctx.workdir.write_json("_triaged.json", {"id": tid, "path": str(bundle), "published": False,
                                                 "reason": reason})
        return
    (doc,) = publish_products(ctx, [bundle], force=True)  # HC-502: a triage bundle always goes in
    ctx.workdir.write_json("_triaged.json", doc)
