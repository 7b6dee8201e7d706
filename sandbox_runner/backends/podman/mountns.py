"""A work root mounted after the podman service started: seeing it, and restarting a service we own.

Rootless podman runs in a user + mount namespace held open by its *pause process*
(``$XDG_RUNTIME_DIR/libpod/tmp/pause.pid``); every later podman process, the API service included, joins it.
That namespace is a copy of the host's mounts taken when it was made, and the host root here is a private mount
(no propagation), so a filesystem mounted later (autofs, a Slurm prolog's scratch) is not in it: ``create``
fails with ``statfs <job dir>: no such file or directory``. Measured here: restarting the service alone does not
help (it joins the old namespace again), nor does ``podman system migrate`` alone (it kills the pause process,
but a running service keeps its namespace); stopping the service, killing the pause process, then starting the
service does. ``migrate`` also stops every container of the user, which would kill other workers' jobs, so the
restart here only kills the pause process: running containers keep their own namespaces.

What the service sees is read through ``/proc/<service pid>/root``, which enters the service's mount namespace
(the service runs as our uid, so no privilege is needed); a path is visible when it is the same inode there as
here. Whether the service is ours comes from the record :func:`.podman_service.write_owner_record` leaves beside
the socket: the recorded process must still be alive with the same start time, and the socket's peer (the
process that listens) must be it or its child.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.procstat import peer_pid, stat_fields

# the owner record's "start_ticks": a process's start time, which with its pid tells it from a reused pid
from sandbox_runner.procstat import start_time as start_ticks

log = structlog.get_logger("sandbox_runner.podman")

__all__ = [
    "LATE_MOUNT_FIX", "OwnedService", "hidden_paths", "late_mount_cause", "late_mount_message", "owned_service",
    "peer_pid", "reap_retired", "retire_owned_service", "statfs_missing",
]

_STATFS_MISSING = re.compile(r"statfs (?P<path>/\S*?):? no such file or directory")
#: the cause and the fix, for a service we may not restart (one sandbox-runner did not start)
LATE_MOUNT_FIX = (
    "restart that service: stop it, run `podman system migrate` as its user (this drops podman's old "
    "namespace; it also stops that user's running containers), then start it again, or let sandbox-runner "
    "start its own by stopping it"
)


def late_mount_cause(url: str, path: str) -> str:
    return (f"{path} is on a filesystem mounted after the podman service at {url} started, so the service "
            "cannot see it (statfs: no such file or directory)")


def late_mount_message(url: str, path: str, *, owned: bool, after_restart: bool = False, running: int = 0) -> str:
    """Why the service cannot see ``path`` and what to do: the one sentence every such failure carries."""
    cause = late_mount_cause(url, path)
    if running:
        return (f"{cause}; sandbox-runner started that service but cannot give it a fresh namespace while "
                f"{running} container(s) of this user run (podman joins their namespace): it restarts the service "
                "for the first such job after they have ended; to do it now, stop them (`podman system migrate` "
                "stops them all) and run the job again")
    if after_restart:
        return (f"{cause}; sandbox-runner restarted that service (it had started it) and the path is still not "
                "visible: check the mount is there for this user (findmnt) and not on a per-session namespace")
    if owned:
        return f"{cause}; restarting it (sandbox-runner started it)"
    return f"{cause}; sandbox-runner did not start that service, so it does not restart it: {LATE_MOUNT_FIX}"


def statfs_missing(message: str) -> str | None:
    """The path of podman's ``statfs <path>: no such file or directory``, else None."""
    found = _STATFS_MISSING.search(message)
    return found["path"] if found else None


def hidden_paths(pid: int, paths: Iterable[str]) -> list[str] | None:
    """Those of ``paths`` (existing here) that process ``pid`` does not see as the same file; None when its
    view cannot be read (another user's process, no /proc)."""
    root = f"/proc/{pid}/root"
    try:
        os.stat(root)
    except OSError:
        return None
    hidden = []
    for path in paths:
        try:
            here = os.stat(path)
        except OSError:
            continue  # not ours to judge: the path is missing here too
        try:
            there = os.stat(root + path)
        except FileNotFoundError:
            hidden.append(path)
            continue
        except OSError:
            return None
        if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
            hidden.append(path)  # a dir of the same name under the mount point: the job would write there
    return hidden


def _parent(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else 0


@dataclass(frozen=True)
class OwnedService:
    pid: int
    runtime_dir: str | None
    record: Path


def owner_record_path(sock: str) -> Path:
    return Path(f"{sock}.owner.json")


def owned_service(sock: str) -> OwnedService | None:
    """The service at ``sock`` when sandbox-runner started it (its record matches the live listener), else None."""
    record = owner_record_path(sock)
    try:
        doc = json.loads(record.read_text())
        pid, ticks = int(doc["pid"]), int(doc["start_ticks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if start_ticks(pid) != ticks:
        return None  # that process is gone (its pid may be another's now)
    listener = peer_pid(sock)
    for _ in range(8):  # the listener is the recorded process or a child it forked (podman's rootless re-exec)
        if listener is None or listener <= 1:
            return None
        if listener == pid:
            return OwnedService(pid, doc.get("runtime_dir"), record)
        listener = _parent(listener)
    return None


def _user_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _pause_pid(runtime_dir: str | None, service_pid: int) -> int | None:
    """The pause process holding the service's namespace: the pid in pause.pid, if it shares the service's
    user namespace (a stale file must not make us kill an unrelated process)."""
    if not runtime_dir:
        return None
    try:
        pid = int(Path(runtime_dir, "libpod", "tmp", "pause.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    ns = _user_ns(service_pid)
    return pid if ns is not None and _user_ns(pid) == ns and pid != service_pid else None


def retire_owned_service(owned: OwnedService, sock: str) -> None:
    """Take the service we started off the socket so a new one, in a fresh namespace that has every mount of
    now, can take its place -- without breaking the jobs it is serving.

    Killing it would cut the attach streams of other workers' running jobs (measured: their job failed with
    "podman service ... is not answering"). So its pause process is stopped (the next podman process then builds
    a new namespace), the socket path is unlinked (new connections reach the new service; the old one keeps the
    connections it has), and the old service is noted in ``<socket>.retired.json``; :func:`reap_retired` kills
    it once it serves no connection. SIGKILL then, not SIGTERM: on a clean exit podman unlinks its socket path,
    which by then is the new service's.
    """
    listener = peer_pid(sock) or owned.pid
    pause = _pause_pid(owned.runtime_dir, listener)
    if pause is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pause, signal.SIGKILL)
    retired = _read_retired(sock)
    retired.append({"pids": sorted({listener, owned.pid}), "listener": listener,
                    "start_ticks": start_ticks(listener)})
    _write_retired(sock, retired)
    owned.record.unlink(missing_ok=True)
    Path(sock).unlink(missing_ok=True)
    log.warning("podman-service-retired", socket=sock, pid=listener, pause_pid=pause,
                reason="a mount it cannot see (mounted after it started)")


def _retired_path(sock: str) -> Path:
    return Path(f"{sock}.retired.json")


def _read_retired(sock: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(_retired_path(sock).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in doc if isinstance(e, dict)] if isinstance(doc, list) else []


def _write_retired(sock: str, entries: list[dict[str, Any]]) -> None:
    path = _retired_path(sock)
    if not entries:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)


def connections(pid: int, sock: str) -> int | None:
    """How many connections process ``pid`` holds on its socket at path ``sock`` (accepted sockets carry the
    listening path in /proc/net/unix; state 03 = connected). None when its fds cannot be read."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        rows = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    count = 0
    for row in rows:
        cols = row.split()
        if len(cols) >= 8 and cols[7] == sock and cols[5] == "03" and f"socket:[{cols[6]}]" in inodes:
            count += 1
    return count


def reap_retired(sock: str) -> None:
    """Kill the retired services of ``sock`` that serve no connection any more (see :func:`retire_owned_service`).
    Cheap when there are none: one failed open."""
    if not _retired_path(sock).exists():
        return
    keep = []
    for entry in _read_retired(sock):
        try:
            listener, ticks = int(entry["listener"]), entry.get("start_ticks")
            pids = [int(p) for p in entry.get("pids", [listener])]
        except (KeyError, TypeError, ValueError):
            continue
        if start_ticks(listener) != ticks:
            continue  # gone already
        if connections(listener, sock) != 0:
            keep.append(entry)  # still streaming a job (or unreadable: leave it, never kill blind)
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                if pid == listener or _parent(listener) == pid:
                    os.kill(pid, signal.SIGKILL)
        log.info("podman-service-reaped", socket=sock, pid=listener)
    with contextlib.suppress(OSError):
        _write_retired(sock, keep)
