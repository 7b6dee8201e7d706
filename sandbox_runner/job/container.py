"""From a job to a :class:`ContainerSpec`: image, argv, mounts, env, labels, runtime options.

This is where the HySDS job/work-config fields meet the backend contract. Container parameters follow HySDS
(section 6): the work config overrides the job's image only when it names both ``container_image_name`` and
``container_image_url``; ``container_mappings`` / ``imported_worker_files`` become mounts, checked against the
mount policy; ``runtime_options`` string values are ``$VAR``-expanded; ``gpus`` is dropped unless
``HYSDS_GPU_AVAILABLE`` says the node has them; the network is :mod:`sandbox_runner.policy.network`'s choice (the
node's network unless the policy denies it); the worker's ``celeryconfig.py`` and ``datasets.json``, HySDS's
work-root mounts and the engine socket are :mod:`sandbox_runner.policy.sharing`'s. Unlike HySDS, the job gets
*no* copy of the worker's environment.
"""

from __future__ import annotations

import os
import pwd
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox_runner.backends.base import ContainerSpec, DependencyImage, Mount
from sandbox_runner.backends.podman.api import socket_path
from sandbox_runner.backends.podman.service import default_socket_url
from sandbox_runner.errors import JobFormatError
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.policy.mounts import MountPolicy, load_mount_policy, resolve_mounts
from sandbox_runner.policy.network import choose_network, load_network_policy
from sandbox_runner.policy.sharing import engine_socket_for, load_sharing_policy, work_root_mounts, worker_file_mounts

LABEL_PREFIX = "sandbox_runner"


def _container_fields(ctx: JobContext) -> tuple[str | None, str | None, dict[str, Any], dict[str, Any]]:
    """(image name, image url, mappings, runtime options): the work config's when it overrides the container
    (HySDS: only with both name and url), else the job's."""
    wc = ctx.work_cfg
    if wc is not None and wc.overrides_container:
        return (wc.container_image_name, wc.container_image_url, dict(wc.container_mappings),
                dict(wc.runtime_options))
    job = ctx.job
    return (job.get("container_image_name") or None, job.get("container_image_url") or None,
            dict(job.get("container_mappings") or {}), dict(job.get("runtime_options") or {}))


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$VAR`` / ``${VAR}`` from the settings' environment (captured once at the edge, never ``os.environ``
    later); an unknown variable stays literal, as ``os.path.expandvars`` and so HySDS leave it."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


GPUS_DROPPED = "dropped: HYSDS_GPU_AVAILABLE is unset or 0 on this worker (HySDS skips 'gpus' the same way)"


def _runtime_options(opts: dict[str, Any], env: Mapping[str, str], gpu_available: int = 0) -> dict[str, Any]:
    # HySDS: a job asking for GPUs on a node without them runs without (a warning); gpus is mapped by the backend
    if "gpus" in opts and not gpu_available:
        opts.pop("gpus")
    return {k: (expand(v, env) if isinstance(v, str) else v) for k, v in opts.items()}


def command_env(ctx: JobContext) -> dict[str, str]:
    """The command's ``env`` entries from the work config: exactly what the job asked for, nothing inherited."""
    if ctx.work_cfg is None:
        return {}
    return {key: expand(value, ctx.settings.env) for key, value in ctx.work_cfg.command.env_dict.items()}


def _ids(ctx: JobContext, runtime: dict[str, Any]) -> tuple[int | None, int | None]:
    """uid/gid for the command: job-spec ``uid``/``gid``, else ``runtime_options.user`` ("uid[:gid]")."""
    jobspec = (ctx.job.get("params") or {}).get("job_specification") or {}
    uid, gid = jobspec.get("uid", ctx.job.get("uid")), jobspec.get("gid", ctx.job.get("gid"))
    user = runtime.pop("user", None)
    if uid is None and user is not None:
        head, _, tail = str(user).partition(":")
        uid, gid = head, tail or gid
    try:
        return (int(uid) if uid is not None else None), (int(gid) if gid not in (None, "") else None)
    except (TypeError, ValueError):
        raise JobFormatError(f"uid/gid must be numbers, got {uid!r}:{gid!r}", field="uid") from None


def _dependency_entries(ctx: JobContext) -> list[dict[str, Any]]:
    """The job's ``dependency_images`` as dicts: the work config's when it names any (HySDS: it overrides),
    else ``params.job_specification.dependency_images``."""
    wc = ctx.work_cfg
    if wc is not None and wc.dependency_images:
        return [{"container_image_name": d.container_image_name, "container_image_url": d.container_image_url,
                 "container_mappings": dict(d.container_mappings), "runtime_options": dict(d.runtime_options)}
                for d in wc.dependency_images]
    jobspec = (ctx.job.get("params") or {}).get("job_specification") or {}
    found = jobspec.get("dependency_images") or ctx.job.get("dependency_images") or []
    if not isinstance(found, list):
        raise JobFormatError(f"must be a list, got {type(found).__name__}", field="dependency_images")
    return found


def _dependencies(ctx: JobContext, job_dir: str, policy: MountPolicy,
                  shared: tuple[Mount, ...] = ()) -> tuple[DependencyImage, ...]:
    env = ctx.settings.env
    deps = []
    for i, entry in enumerate(_dependency_entries(ctx)):
        where = f"dependency_images[{i}]"
        if not isinstance(entry, dict):
            raise JobFormatError(f"must be an object, got {type(entry).__name__}", field=where)
        name, url = entry.get("container_image_name"), entry.get("container_image_url")
        if not isinstance(name, str) or not name.strip():
            raise JobFormatError("must be a non-empty image name", field=f"{where}.container_image_name")
        if url is not None and not isinstance(url, str):
            raise JobFormatError("must be a string or null", field=f"{where}.container_image_url")
        mappings, options = entry.get("container_mappings") or {}, entry.get("runtime_options") or {}
        if not isinstance(mappings, dict) or not isinstance(options, dict):
            raise JobFormatError("container_mappings and runtime_options must be objects", field=where)
        own = resolve_mounts(mappings, job_dir=job_dir, policy=policy, env=env)
        # HySDS's create_container_params gives a dependency image the same worker files and work-root mounts;
        # and the job dir, read-write, as HySDS's <root>/jobs mount does: a PGE started through the engine socket
        # with these volumes (OPERA's wrapper passes them whole) must find its inputs and write its outputs there
        own = (Mount(job_dir, job_dir, "rw"), *own, *_not_mapped(shared, own))
        deps.append(DependencyImage(
            image=name.strip(),
            image_url=expand(url, env) if url else None,
            mounts=own,
            runtime_options=_runtime_options(dict(options), env, ctx.settings.gpu_available),
        ))
    return tuple(deps)


def _hysds_params(image: str, url: str | None, uid: int, gid: int, working_dir: str, mounts: tuple[Mount, ...],
                  runtime: Mapping[str, Any]) -> dict[str, Any]:
    # volumes as HySDS's create_container_params gives them: [host, "container[:mode]"] (ro is written out)
    return {
        "image_name": image, "image_url": url, "uid": uid, "gid": gid,
        "user_name": pwd.getpwuid(os.getuid()).pw_name, "working_dir": working_dir,
        "volumes": [[m.host, f"{m.container}:{m.mode}"] for m in mounts], "runtime_options": dict(runtime),
    }


def docker_params(spec: ContainerSpec) -> dict[str, dict[str, Any]]:
    """``_docker_params.json``: one entry per image, keyed by its name, main image and every dependency, each in
    HySDS's shape (section 6; OPERA's PGE wrapper reads ``docker_params[<dependency image>]``). The main entry
    also carries our own spec fields (argv, env, labels, network), which ``--dry-run`` shows."""
    uid = spec.uid if spec.uid is not None else os.getuid()
    gid = spec.gid if spec.gid is not None else os.getgid()
    params: dict[str, dict[str, Any]] = {}
    if spec.image:
        params[spec.image] = {**spec.as_dict(), **_hysds_params(spec.image, spec.image_url, uid, gid, spec.workdir,
                                                                spec.mounts, spec.runtime_options)}
    for dep in spec.dependencies:
        params.setdefault(dep.image, _hysds_params(dep.image, dep.image_url, uid, gid, spec.workdir, dep.mounts,
                                                   dep.runtime_options))
    return params


def container_name(job_id: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", job_id)[:40].strip("-.") or "job"
    return f"sr-{safe}-{uuid.uuid4().hex[:8]}"


def build_spec(ctx: JobContext, job_dir: str, policy: MountPolicy | None = None) -> ContainerSpec:
    settings = ctx.settings
    env = settings.env
    image, image_url, mappings, options = _container_fields(ctx)
    work_root = str(ctx.work_root)
    if policy is None:
        policy = load_mount_policy(settings.mount_policy, env=env, work_root=work_root)
    mounts: tuple[Mount, ...] = resolve_mounts(mappings, job_dir=job_dir, policy=policy, env=env)
    job_type = str(ctx.job.get("type") or "")
    sharing = load_sharing_policy(settings.sharing_policy)
    files = worker_file_mounts(settings.celery_cfg, settings.datasets_cfg, mounts, job_dir=job_dir, policy=policy,
                               env=env)
    root_mounts, root_why = work_root_mounts(job_type, sharing, work_root=ctx.work_root or Path(work_root),
                                             cache_dir=settings.cache_dir or Path(work_root) / "cache",
                                             job_dir=job_dir, policy=policy, env=env)
    shared = (*files, *root_mounts)
    mounts = (*mounts, *_not_mapped(shared, mounts))
    socket, socket_why = engine_socket_for(
        job_type, sharing, socket=socket_path(default_socket_url(env, settings.uid, settings.podman_socket)),
        worker_uid=settings.uid)
    gpus_asked = "gpus" in options
    runtime = _runtime_options(options, env, settings.gpu_available)
    asked = runtime.pop("network", runtime.pop("net", None))
    network, network_why = choose_network(str(ctx.job.get("type") or ""), None if asked is None else str(asked),
                                          load_network_policy(settings.network_policy))
    uid, gid = _ids(ctx, runtime)
    labels = {
        f"{LABEL_PREFIX}.job_id": str(ctx.job.get("job_id")),
        f"{LABEL_PREFIX}.task_id": str(ctx.job.get("task_id")),
        f"{LABEL_PREFIX}.worker": settings.worker_name,
        f"{LABEL_PREFIX}.job_dir": job_dir,
        # why this network: shown by --dry-run and on the container (podman inspect)
        f"{LABEL_PREFIX}.network": f"{network}: {network_why}",
        # why the engine socket and the work-root mounts are (not) given: the same for --dry-run
        f"{LABEL_PREFIX}.engine_socket": f"{socket or 'none'}: {socket_why}",
        f"{LABEL_PREFIX}.work_root": f"{'mounted' if root_mounts else 'none'}: {root_why}",
    }
    if gpus_asked and "gpus" not in runtime:
        labels[f"{LABEL_PREFIX}.gpus"] = GPUS_DROPPED
    return ContainerSpec(
        name=container_name(str(ctx.job.get("job_id"))),
        image=image,
        image_url=expand(image_url, env) if image_url else None,
        argv=tuple(ctx.argv),
        workdir=job_dir,
        env=command_env(ctx),
        mounts=mounts,
        uid=uid,
        gid=gid,
        network=network,
        labels=labels,
        runtime_options=runtime,
        stop_grace=settings.stop_grace,
        dependencies=_dependencies(ctx, job_dir, policy, shared),
        engine_socket=socket,
    )


def _not_mapped(shared: tuple[Mount, ...], own: tuple[Mount, ...]) -> tuple[Mount, ...]:
    """The shared mounts whose target the job's own mappings do not already take (the job's mapping wins)."""
    taken = {m.container for m in own}
    return tuple(m for m in shared if m.container not in taken)
