"""What a job's container gets of the worker beyond its own job dir (``policies/sharing.toml``).

HySDS (``containers/base.py``, ``create_container_params``) gives every container, main and dependency image:
``<root>/jobs``, ``<root>/tasks``, ``<root>/workers`` read-write at their own paths, ``<root>/cache`` read-only
(``CACHE_READ_ONLY``, default true), the worker's ``celeryconfig.py`` (``HYSDS_CELERY_CFG``) and ``datasets.json``
(``HYSDS_DATASETS_CFG``) read-only in the job dir unless the job maps them itself; its podman engine adds the
engine socket. Here:

- ``celeryconfig.py`` and ``datasets.json``: always, read-only, as HySDS (lightweight-jobs do
  ``from hysds.celery import app``, which reads ``celeryconfig.py`` from the working dir). Only the paths are ever
  written down (``_run.sh``, ``_docker_params.json``); the contents stay in the worker's files.
- the work-root mounts: only for job types the policy lists, read-only unless it says ``rw``.
- the engine socket: only for job types the policy lists, and never from a rootful worker or service.

Every host path still goes through the mount policy (:mod:`sandbox_runner.policy.mounts`): realpath'ed, allow-listed,
deny patterns applied. The engine socket is the one exception (the mount policy refuses it by design); it
travels in its own spec field so that no ``container_mappings`` can ever produce it.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sandbox_runner.backends.base import Mount, MountMode
from sandbox_runner.errors import ConfigError, MountPolicyError
from sandbox_runner.policy.files import job_type_patterns, matching_pattern, read_policy
from sandbox_runner.policy.mounts import MountPolicy, resolve_mounts

#: the names HySDS gives the worker's files in every job dir
CELERY_CFG_NAME = "celeryconfig.py"
DATASETS_CFG_NAME = "datasets.json"
WORK_ROOT_DIRS = ("jobs", "tasks", "workers")


@dataclass(frozen=True)
class SharingPolicy:
    #: job types (shell globs) given the engine socket
    engine_socket: tuple[str, ...] = ()
    #: job types (shell globs) given HySDS's work-root mounts, and the mode of jobs/tasks/workers
    work_root: tuple[str, ...] = ()
    work_root_mode: MountMode = "ro"
    source: str = "built-in"


def _table(doc: dict[str, Any], name: str, keys: set[str], source: str) -> dict[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table", source=source)
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)} in [{name}]: expected {', '.join(sorted(keys))}",
                          source=source)
    return table


@lru_cache(maxsize=8)
def load_sharing_policy(path: Path | None) -> SharingPolicy:
    """The policy at ``path``, or the shipped ``policies/sharing.toml``; ConfigError names the file and field."""
    source, doc = read_policy(path, "sharing.toml", "sharing policy")
    unknown = sorted(set(doc) - {"engine_socket", "work_root"})
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)}: expected [engine_socket], [work_root]",
                          source=source)
    sock = _table(doc, "engine_socket", {"allow"}, source)
    root = _table(doc, "work_root", {"allow", "mode"}, source)
    mode = root.get("mode", "ro")
    if mode not in ("ro", "rw"):
        raise ConfigError(f"work_root.mode must be \"ro\" or \"rw\", got {mode!r}", source=source)
    return SharingPolicy(job_type_patterns(sock.get("allow", []), "engine_socket.allow", source),
                         job_type_patterns(root.get("allow", []), "work_root.allow", source),
                         cast(MountMode, mode), source)


def worker_file_mounts(celery_cfg: Path | None, datasets_cfg: Path | None, job_mounts: tuple[Mount, ...], *,
                       job_dir: str, policy: MountPolicy, env: Mapping[str, str]) -> tuple[Mount, ...]:
    """``celeryconfig.py`` and ``datasets.json`` in the job dir, read-only, unless the job already maps that
    host file or that target itself (HySDS's rule).

    The operator named these files in the worker's own settings, and no job can choose them, so the exact file
    is allowed wherever it lives (a site keeps its datasets.json in ``/etc``, ``/opt`` or ``/var``); the policy's
    deny patterns and the engine-socket refusal still apply. A file they refuse fails the job, naming the
    setting."""
    taken_hosts = {m.host for m in job_mounts}
    taken_targets = {m.container for m in job_mounts}
    mounts: list[Mount] = []
    for setting, path, name in (("HYSDS_CELERY_CFG", celery_cfg, CELERY_CFG_NAME),
                                ("HYSDS_DATASETS_CFG", datasets_cfg, DATASETS_CFG_NAME)):
        if path is None:
            continue
        target = posixpath.join(job_dir, name)
        if target in taken_targets or os.path.realpath(path) in taken_hosts:
            continue
        try:
            named = dataclasses.replace(policy, allow=(*policy.allow, os.path.realpath(path)))
            (mount,) = resolve_mounts({str(path): [name, "ro"]}, job_dir=job_dir, policy=named, env=env)
        except MountPolicyError as exc:
            raise MountPolicyError(f"{setting} ({path}) cannot be given to the job as {name}: {exc}") from None
        if not os.path.isfile(mount.host):
            raise MountPolicyError(f"{setting} ({path}) is not a regular file, so it cannot be mounted as {name}")
        mounts.append(mount)
    return tuple(mounts)


def work_root_mounts(job_type: str, sharing: SharingPolicy, *, work_root: Path, cache_dir: Path, job_dir: str,
                     policy: MountPolicy, env: Mapping[str, str]) -> tuple[tuple[Mount, ...], str]:
    """HySDS's fixed work-root mounts when the job's type is listed, with why (for ``--dry-run``)."""
    allowed = matching_pattern(job_type, sharing.work_root)
    if allowed is None:
        return (), f"job type {job_type!r} is not in work_root.allow of {sharing.source}: only its own job dir"
    wanted: dict[str, Any] = {}
    for name in WORK_ROOT_DIRS:
        wanted[str(work_root / name)] = [str(work_root / name), sharing.work_root_mode]
    wanted[str(cache_dir)] = [str(cache_dir), "ro"]  # HySDS's CACHE_READ_ONLY default: jobs never write the cache
    for host in wanted:
        os.makedirs(host, exist_ok=True)  # HySDS creates them too; a fresh work root may lack tasks/ or cache/
    mounts = resolve_mounts(wanted, job_dir=job_dir, policy=policy, env=env)
    return mounts, f"job type {job_type!r} matches work_root.allow {allowed!r} in {sharing.source}"


def _rootful(socket: str, worker_uid: int) -> str | None:
    """Why ``socket`` is a rootful engine (a job holding it would be root on the host), else None."""
    if worker_uid == 0:
        return "the worker runs as root, so its podman service is rootful"
    try:
        owner = os.stat(socket).st_uid
    except OSError:
        return None  # not there yet: the backend starts the worker's own (rootless) service
    if owner == 0:
        return f"{socket} belongs to root: it is a rootful podman service"
    return None


def engine_socket_for(job_type: str, sharing: SharingPolicy, *, socket: str | None,
                      worker_uid: int) -> tuple[str | None, str]:
    """``(socket path or None, why)`` for a job of ``job_type``; MountPolicyError when the policy allows it
    but the engine is rootful (the job would be root on the host) or not reachable by a path."""
    allowed = matching_pattern(job_type, sharing.engine_socket)
    if allowed is None:
        return None, f"job type {job_type!r} is not in engine_socket.allow of {sharing.source}"
    why = f"job type {job_type!r} matches engine_socket.allow {allowed!r} in {sharing.source}"
    if socket is None:
        raise MountPolicyError(f"{why}, but the podman service is not a unix socket (SANDBOX_RUNNER_PODMAN_SOCKET):"
                               " only a local socket can be given to a job")
    rootful = _rootful(socket, worker_uid)
    if rootful is not None:
        raise MountPolicyError(f"{why}, but the engine socket is only given by rootless workers: {rootful}, and a "
                               "job holding it could start a privileged container. Run the worker as an "
                               "unprivileged user, or remove the job type from engine_socket.allow")
    try:
        if not stat.S_ISSOCK(os.stat(socket).st_mode):
            raise MountPolicyError(f"{why}, but {socket} is not a socket")
    except FileNotFoundError:
        pass  # the backend starts the service (and so creates the socket) before it creates the container
    return socket, why


def prepare_mountpoints(workdir: str, mounts: tuple[Mount, ...]) -> None:
    """Empty files where files are mounted into the job dir (``celeryconfig.py``, ``datasets.json``): left to
    the engine, the mount point would be created by a subuid (rootless podman), a file in the worker's job dir
    the worker does not own. Only the name is written here, never the contents."""
    for m in mounts:
        if posixpath.dirname(m.container) != workdir or not os.path.isfile(m.host):
            continue
        try:
            fd = os.open(m.container, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue  # the job's own file of that name: the mount covers it, as in HySDS
        os.close(fd)
