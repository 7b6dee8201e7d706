"""ContainerSpec -> the body of ``POST /libpod/containers/create`` (podman's SpecGenerator), in one request.

Everything goes into the one ``create`` call (no follow-up updates): command, env, labels, mounts (the job dir
read-write at its own path), the user namespace that keeps job files the worker's, the network, ``init`` (on by
default, like HySDS's ``--init``) and the job's ``runtime_options`` (mapped by :mod:`.options`, whose
docstring has the table).
"""

from __future__ import annotations

import os
import re
import resource
import socket
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox_runner.backends.base import ContainerSpec
from sandbox_runner.backends.podman.options import Body, map_runtime_options, normalize_key, set_network
from sandbox_runner.errors import BackendError

__all__ = ["ENGINE_SOCKET_NAMES", "build_create_body", "engine_socket_env", "hand_workdir_to_job_user",
           "refuse_engine_socket", "userns_and_user"]

ENGINE_SOCKET_NAMES = frozenset({"podman.sock", "docker.sock", "containerd.sock"})


def refuse_engine_socket(host_path: str, sockets: Iterable[str]) -> None:
    """Defence in depth behind the mount policy: never hand the engine socket (or a dir holding it) to a job."""
    real = os.path.realpath(host_path)
    if os.path.basename(real) in ENGINE_SOCKET_NAMES:
        raise BackendError(f"refusing to mount {host_path}: it looks like a container engine socket")
    for sock in sockets:
        sock_real = os.path.realpath(sock)
        if sock_real == real or sock_real.startswith(real.rstrip("/") + "/"):
            raise BackendError(f"refusing to mount {host_path}: it exposes the podman service socket {sock}")


def engine_socket_env(sock: str) -> dict[str, str]:
    """What tells a job's engine client where the socket is: ``CONTAINER_HOST`` (podman's), and ``HOST_UID``
    for the standard path, from which HySDS's own Podman engine class (a PGE wrapper uses it) builds it."""
    env = {"CONTAINER_HOST": f"unix://{sock}"}
    found = re.fullmatch(r"/run/user/(\d+)/podman/podman\.sock", sock)
    if found:
        env["HOST_UID"] = found[1]
    return env


def userns_and_user(
    uid: int | None, gid: int | None, host_uid: int, host_gid: int
) -> tuple[dict[str, str] | None, str | None]:
    """The user namespace and ``user`` that run the job as ``uid:gid`` *and* keep its files the worker's.

    Rootless, only the worker's own uid/gid map back to the worker on the host; every other id lands in its
    subuid range (a job run as ``-u 0:0`` under plain keep-id writes files owned by 100000 that the worker cannot
    clean up). So the worker's ids are mapped *onto* the requested ones: ``keep-id:uid=U,gid=G`` (podman >= 4.3).
    keep-id cannot map onto 0 (runc fails), but the default rootless namespace already maps the worker to root,
    so uid 0 runs there. A gid of 0 with a non-zero uid keeps the worker's gid mapping: files are the worker's,
    their group a subgid. Rootful (host uid 0) needs no mapping at all. A gid with no uid runs as the worker's
    uid, rootless and rootful alike (podman has no group-only ``user``; dropping the gid ran the job as 0:0).
    """
    if host_uid == 0:
        if uid is None:
            return None, (None if gid is None else f"0:{gid}")
        return None, f"{uid}:{gid}" if gid is not None else str(uid)
    if uid is None and gid is None:
        return {"nsmode": "keep-id"}, None
    u = host_uid if uid is None else uid
    g = gid if gid is not None else (0 if u == 0 else host_gid)
    if u == 0:
        return None, f"0:{g}"  # default rootless userns: container root is the worker
    opts = ([f"uid={u}"] if u != host_uid else []) + ([f"gid={g}"] if g not in (host_gid, 0) else [])
    userns = {"nsmode": "keep-id", "value": ",".join(opts)} if opts else {"nsmode": "keep-id"}
    return userns, f"{u}:{g}"


def build_create_body(
    spec: ContainerSpec,
    *,
    labels: Mapping[str, str],
    sockets: Iterable[str] = (),
    host_ids: tuple[int, int] | None = None,
) -> tuple[Body, list[str]]:
    """Everything ``create`` needs in one body, so a run costs one create call (no follow-up updates).

    ``host_ids`` is the worker's (uid, gid), by default this process's.
    """
    if not spec.image:
        raise BackendError("the podman backend needs an image; container-less jobs use the subprocess backend")
    if not os.path.isabs(spec.workdir):
        raise BackendError(f"job dir must be an absolute path, got {spec.workdir!r}")
    sockets = list(sockets)
    mounts: list[dict[str, Any]] = []
    seen = {spec.workdir}
    for m in spec.mounts:
        refuse_engine_socket(m.host, sockets)
        if m.container in seen:
            raise BackendError(f"two mounts at {m.container} in the container (the job dir is mounted there)")
        seen.add(m.container)
        mounts.append({"type": "bind", "source": m.host, "destination": m.container, "options": ["rbind", m.mode]})
    # the job dir last: a mount of its parent (HySDS mounts <root>/jobs) must not hide it
    refuse_engine_socket(spec.workdir, sockets)
    mounts.append({"type": "bind", "source": spec.workdir, "destination": spec.workdir, "options": ["rbind", "rw"]})
    env = dict(spec.env)
    if spec.engine_socket is not None:
        # given on purpose by the sharing policy (never from container_mappings): at its own path, as HySDS
        # mounts it, and named in CONTAINER_HOST so ``podman --remote`` inside finds it
        mounts.append({"type": "bind", "source": spec.engine_socket, "destination": spec.engine_socket,
                       "options": ["bind", "rw"]})
        for key, value in engine_socket_env(spec.engine_socket).items():
            env.setdefault(key, value)
    host_uid, host_gid = host_ids if host_ids is not None else (os.getuid(), os.getgid())
    options, uid, gid, named = user_option(spec)
    userns, user = userns_and_user(uid, gid, host_uid, host_gid)
    body: Body = {
        "image": spec.image,
        "name": spec.name,
        "command": list(spec.argv),
        "work_dir": spec.workdir,
        "env": env,
        "labels": dict(labels),
        "mounts": mounts,
        "init": True,  # like HySDS's ``--init``: signals reach the job, zombies are reaped
        "remove": True,  # by conmon's exit command: no container outlives its job, even if the worker dies
        "terminal": False,
        "stdin": False,
    }
    if userns is not None:
        body["userns"] = userns
    if user is not None or named is not None:
        body["user"] = named or user
    set_network("network", spec.network, body)
    return map_runtime_options(options, body)


#: the limits rootful podman raises for every container (containers.conf defaults: nofile 1048576, nproc
#: 4194304), beyond what many hosts grant: runc then refuses to start ("error setting rlimit type 7")
ROOTFUL_RLIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC}


def service_rlimits(sock: str) -> dict[str, int]:
    """The hard limits of the process serving ``sock`` (found by SO_PEERCRED), by ROOTFUL_RLIMITS name: what a
    container of that service may be given. This process's own limits when the peer cannot be read."""
    limits = {name: resource.getrlimit(which)[1] for name, which in ROOTFUL_RLIMITS.items()}
    rows = {"nofile": "Max open files", "nproc": "Max processes"}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(sock)
            pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return limits
    for line in text.splitlines():
        for name, row in rows.items():
            if line.startswith(row):
                hard = line[len(row):].split()[1]
                limits[name] = resource.RLIM_INFINITY if hard == "unlimited" else int(hard)
    return limits


def fit_rootful_rlimits(body: Body, ceilings: Mapping[str, int]) -> Body:
    """A copy of ``body`` whose container gets the service's own hard limits for what the job-spec's ``ulimit``
    did not set, so runc never asks the kernel for more than the host grants. Only for rootful podman: rootless
    podman already keeps the user's limits."""
    named = {str(r.get("type", "")).lower().removeprefix("rlimit_") for r in body.get("r_limits", [])}
    extra = [{"type": name, "soft": hard, "hard": hard} for name, hard in ceilings.items()
             if name not in named and hard != resource.RLIM_INFINITY]
    return {**body, "r_limits": [*body.get("r_limits", []), *extra]} if extra else body


def hand_workdir_to_job_user(workdir: str, body: Body) -> None:
    """Rootful podman maps no ids: a job run as the job-spec's ``uid``/``gid`` is that uid on the host, and could
    not write its own job dir (the worker, root, made it, mode 755). So the job dir itself -- not the files the
    worker put in it, which stay root's and readable -- is handed to that uid/gid; what the job writes is theirs.
    A job with no uid (or uid 0) runs as root and its files are root's."""
    head, _, tail = str(body.get("user") or "").partition(":")
    if not head.isdigit() or int(head) == 0 or (tail and not tail.isdigit()):
        return  # root, or a user name (only the image knows its ids): nothing to hand over
    try:
        os.chown(workdir, int(head), int(tail) if tail else -1)
    except OSError as exc:
        raise BackendError(f"could not give the job dir {workdir} to uid {head}: {exc.strerror}") from None


def user_option(spec: ContainerSpec) -> tuple[dict[str, Any], int | None, int | None, str | None]:
    """A numeric ``user`` runtime option wins over spec.uid/gid and gets the same mapping; a named one is
    passed through as is (names cannot be mapped: such a job's files belong to a subuid)."""
    options = dict(spec.runtime_options)
    uid, gid, named = spec.uid, spec.gid, None
    for name in [n for n in options if normalize_key(n) == "user"]:
        value = options.pop(name)
        if value is None:
            continue
        head, _, tail = str(value).strip().partition(":")
        if head.isdigit() and (not tail or tail.isdigit()):
            uid, gid, named = int(head), (int(tail) if tail else None), None
        else:
            named = str(value).strip()
    return options, uid, gid, named
