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

import json
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("sandbox_runner.podman")

__all__ = [
    "LATE_MOUNT_FIX", "OwnedService", "hidden_paths", "late_mount_cause", "late_mount_message", "owned_service",
    "peer_pid", "statfs_missing", "stop_owned_service",
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


def late_mount_message(url: str, path: str, *, owned: bool, after_restart: bool = False) -> str:
    """Why the service cannot see ``path`` and what to do: the one sentence every such failure carries."""
    cause = late_mount_cause(url, path)
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


def peer_pid(sock: str) -> int | None:
    """The pid of the process listening on the unix socket ``sock`` (SO_PEERCRED), None when unreachable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(sock)
            pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return pid or None


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


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


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


def _wait_gone(pid: int, ticks: int | None, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if start_ticks(pid) != ticks:
            return True
        time.sleep(0.05)
    return start_ticks(pid) != ticks


def stop_owned_service(owned: OwnedService, sock: str) -> None:
    """Stop the service we started and its pause process, so the next service builds a fresh namespace that has
    every mount of now. Containers already running keep theirs (conmon holds them)."""
    listener = peer_pid(sock) or owned.pid
    pause = _pause_pid(owned.runtime_dir, listener)
    # the listener first (podman's rootless re-exec may leave the recorded process as its waiting parent)
    for pid in dict.fromkeys((listener, owned.pid, pause)):
        if pid is None:
            continue
        ticks = start_ticks(pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        if not _wait_gone(pid, ticks, 10.0):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, ticks, 5.0)
    owned.record.unlink(missing_ok=True)
    with_socket = Path(sock)
    if with_socket.is_socket() and peer_pid(sock) is None:
        with_socket.unlink(missing_ok=True)  # podman leaves it on SIGKILL; a dead socket only slows the restart
    log.warning("podman-service-stopped", socket=sock, pid=owned.pid, pause_pid=pause,
                reason="a mount it cannot see (mounted after it started)")
