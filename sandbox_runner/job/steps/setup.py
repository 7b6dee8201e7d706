"""Steps that give the job its place: the work dir with its HySDS files, job-started, the container spec."""

from __future__ import annotations

import json
import time
from typing import ClassVar

from sandbox_runner.backends.factory import BackendFactory
from sandbox_runner.events.documents import iso_now
from sandbox_runner.job.container import build_spec, docker_params
from sandbox_runner.job.hostfacts import host_facts
from sandbox_runner.job.runscript import render_run_script
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.job.workdir import WorkDir
from sandbox_runner.policy.mounts import MountPolicy, load_mount_policy
from sandbox_runner.policy.sharing import prepare_mountpoints


def context_document(ctx: JobContext) -> dict[str, object]:
    """``_context.json`` as HySDS builds it (section 1.6), minus its flaw of clobbering ``_force_ingest``."""
    job = ctx.job
    params = dict(job.get("params") or {})
    doc: dict[str, object] = {"context": job["context"]} if job.get("context") else {}
    doc.update(params)
    doc.update({
        "job_priority": job.get("priority"),
        "container_image_name": job.get("container_image_name"),
        "container_image_url": job.get("container_image_url"),
        "container_image_urls": job.get("container_image_urls"),
        "container_mappings": job.get("container_mappings"),
        "runtime_options": job.get("runtime_options"),
        "_prov": {"wasGeneratedBy": f"task_id:{job.get('task_id')}"},
        # HySDS overwrites a PGE-requested _force_ingest with publish_overwrite_ok; either one asks for it
        "_force_ingest": bool(params.get("_force_ingest") or job.get("publish_overwrite_ok", False)),
    })
    return doc


def refresh_context(ctx: JobContext) -> None:
    """Re-read ``_context.json`` at close-up, as HySDS does: the PGE may have added to it (``_force_ingest``...).
    A file the PGE broke or replaced with a non-object leaves the context as we wrote it."""
    if ctx.workdir is None or not isinstance(ctx.job, dict) or "context" not in ctx.job:
        return
    try:
        written = json.loads(ctx.workdir.read_optional("_context.json", limit=16 << 20) or "null")
    except ValueError:
        return
    if isinstance(written, dict):
        ctx.context.update(written)
        ctx.job["context"] = ctx.context


class CreateWorkDir:
    name: ClassVar[str] = "workdir"
    always: ClassVar[bool] = False

    def run(self, ctx: JobContext) -> None:
        assert ctx.work_root is not None
        job = ctx.job
        ctx.workdir = wd = WorkDir.create(ctx.work_root, str(job["job_id"]))
        info = ctx.job_info
        facts = host_facts()
        info.update({
            "job_dir": str(wd.path),
            "metrics": {"inputs_localized": [], "products_staged": [], "job_dir_size": 0, "usage_stats": []},
            "facts": dict(facts),
            "execute_node": facts["hysds_execute_node"],
            "public_ip": facts["hysds_public_ip"],
            "job_url": f"file://{wd.path}",
            "context_file": str(wd.file("_context.json")),
            "datasets_cfg_file": str(ctx.settings.datasets_cfg) if ctx.settings.datasets_cfg else None,
            "time_start": iso_now(),
        })
        ctx.notes["t_start"] = time.time()
        ctx.context = context_document(ctx)
        # HySDS's documents show the whole _context.json as job.context (its context dict is the job's own)
        job["context"] = ctx.context
        wd.write_json("_context.json", ctx.context)
        wd.write_json("_job.json", job)


class AnnounceStart:
    name: ClassVar[str] = "started"
    always: ClassVar[bool] = False

    def run(self, ctx: JobContext) -> None:
        ctx.emitter.job_status(ctx.job, "job-started")
        ctx.started_emitted = True


class BuildContainer:
    """Container spec, ``_docker_params.json`` and ``_run.sh``; picks the backend for this job."""

    name: ClassVar[str] = "container"
    always: ClassVar[bool] = False

    def __init__(self, backend_for: BackendFactory) -> None:
        self.backend_for = backend_for
        #: mount policy per work root, read once (a bad file raises each time: one job-failed per job)
        self._policies: dict[str, MountPolicy] = {}

    def run(self, ctx: JobContext) -> None:
        wd = ctx.workdir
        assert wd is not None
        root = str(ctx.work_root)
        if root not in self._policies:
            self._policies[root] = load_mount_policy(ctx.settings.mount_policy, env=ctx.settings.env,
                                                     work_root=root)
        ctx.spec = spec = build_spec(ctx, str(wd.path), self._policies[root])
        prepare_mountpoints(spec.workdir, spec.mounts)
        ctx.backend = self.backend_for(ctx.settings, spec)
        backend_name = ctx.backend.name
        wd.write_json("_docker_params.json", docker_params(spec))
        wd.write_text("_run.sh", render_run_script(spec, backend_name, ctx.settings.podman_socket), 0o755)
