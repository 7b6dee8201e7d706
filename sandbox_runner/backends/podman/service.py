"""Where the user's podman API service lives, and starting one when nobody did.

There is no systemd/logind on the project's machines, so no socket-activated ``podman.socket``: a worker that
finds no service starts ``podman --runtime runc system service --time=0 unix://<socket>`` for its own user,
detached (own session, so it outlives the worker and serves the next one), and waits -- bounded -- until it
answers. runc because crun fails on this kernel's hybrid cgroups (see PODMAN-HERE.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import structlog

from sandbox_runner.backends.podman.api import PodmanAPI, socket_path
from sandbox_runner.backends.podman.mountns import (
    hidden_paths,
    late_mount_message,
    owned_service,
    owner_record_path,
    peer_pid,
    reap_retired,
    retire_owned_service,
    start_ticks,
)
from sandbox_runner.errors import BackendError

__all__ = ["default_socket_url", "restart_for_mounts", "start_service", "write_owner_record"]

log = structlog.get_logger("sandbox_runner.podman")


def default_socket_url(env: Mapping[str, str], uid: int, configured: str | None = None) -> str:
    """The service URL: the configured value, else ``CONTAINER_HOST``, else the per-user default socket.

    The default follows podman's own: ``/run/user/$UID/podman/podman.sock`` rootless, ``/run/podman/podman.sock``
    for root. It deliberately ignores ``XDG_RUNTIME_DIR``: an inherited value (``sudo -E``) would point at
    another user's runtime dir.
    """
    if configured:
        return configured
    if env.get("CONTAINER_HOST"):
        return env["CONTAINER_HOST"]
    if uid == 0:
        return "unix:///run/podman/podman.sock"
    return f"unix:///run/user/{uid}/podman/podman.sock"


def _runtime_dir(sock: Path, env: Mapping[str, str]) -> str | None:
    """XDG_RUNTIME_DIR for the service: ``/run/user/UID`` when the socket lives in its ``podman/`` and it is ours
    (podman insists on owning it), else whatever the caller has."""
    parent = sock.parent.parent if sock.parent.name == "podman" else sock.parent
    try:
        if parent.stat().st_uid == os.getuid():
            return str(parent)
    except OSError:
        pass
    return env.get("XDG_RUNTIME_DIR") or None


def start_service(
    api: PodmanAPI, *, env: Mapping[str, str], runtime: str | None = "runc", timeout: float = 15.0
) -> int | None:
    """Start a service at ``api.url`` for the current user; return its pid once it answers (None when another
    process started it meanwhile). BackendError, saying what to do, when that fails."""
    path = socket_path(api.url)
    how = "start one with: podman --runtime runc system service --time=0 unix:///run/user/$UID/podman/podman.sock &"
    if path is None:
        raise BackendError(f"no podman service answers at {api.url} (not a local socket, so not starting one)")
    podman = shutil.which("podman", path=env.get("PATH"))
    if podman is None:
        raise BackendError(f"no podman service answers at {api.url} and podman is not installed here; {how}")
    sock = Path(path)
    try:
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(
            f"no podman service answers at {api.url} and its folder cannot be created ({exc.strerror}); "
            f"as root: install -d -o $USER -m 700 /run/user/$UID, then {how}"
        ) from None
    # Two workers finding no service at once must not both start one: the second waits here, then finds it up.
    with _start_lock(sock, f"no podman service answers at {api.url} and"):
        if api.ping(timeout=1.0):
            return None
        return _spawn(api, podman, sock, env, runtime, timeout)


@contextlib.contextmanager
def _start_lock(sock: Path, context: str) -> Iterator[None]:
    try:
        lock = open(sock.with_name(sock.name + ".start.lock"), "a")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise BackendError(f"{context} {sock.parent} is not writable: {exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def restart_for_mounts(
    api: PodmanAPI, *, env: Mapping[str, str], runtime: str | None, paths: list[str], timeout: float = 15.0
) -> int | None:
    """Restart the service at ``api.url`` -- one sandbox-runner started (the caller checked) -- with a fresh
    namespace, so it sees ``paths`` (mounted after it started). Returns the new service's pid, or None when
    another worker restarted it meanwhile and the paths are visible now."""
    path = socket_path(api.url)
    podman = shutil.which("podman", path=env.get("PATH"))
    if path is None or podman is None:
        raise BackendError(f"cannot restart the podman service at {api.url}: not a local socket or no podman here")
    sock = Path(path)
    with _start_lock(sock, f"cannot restart the podman service at {api.url}:"):
        listener = peer_pid(path)
        if listener is not None and hidden_paths(listener, paths) == []:
            return None
        reap_retired(path)
        owned = owned_service(path)
        if owned is not None:
            # podman joins the namespace of any running container when its pause process is gone, so with
            # containers running no new service can get a fresh one (measured): leave them and this service be
            running = api.call("GET", "/containers/json", what="list running containers") or []
            if running:
                raise BackendError(late_mount_message(api.url, paths[0], owned=True, running=len(running)))
            retire_owned_service(owned, path)
        elif listener is not None:  # a foreign service took the socket meanwhile: not ours to stop
            raise BackendError(late_mount_message(api.url, paths[0], owned=False))
        return _spawn(api, podman, sock, env, runtime, timeout)


def write_owner_record(sock: Path, pid: int, runtime_dir: str | None) -> None:
    """Say beside the socket that sandbox-runner started this service (see :func:`.podman_mountns.owned_service`):
    only such a service is ever restarted by us. Best effort: without the record the service counts as foreign."""
    doc = {"pid": pid, "start_ticks": start_ticks(pid), "runtime_dir": runtime_dir, "socket": str(sock)}
    record = owner_record_path(str(sock))
    tmp = record.with_name(record.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc))
        tmp.replace(record)
    except OSError as exc:
        log.warning("podman-service-record-not-written", record=str(record), error=str(exc))


def _spawn(api: PodmanAPI, podman: str, sock: Path, env: Mapping[str, str], runtime: str | None, timeout: float) -> int:
    child_env = dict(env)
    runtime_dir = _runtime_dir(sock, env)
    if runtime_dir:
        child_env["XDG_RUNTIME_DIR"] = runtime_dir
    runtime_args = ["--runtime", runtime] if runtime else []
    argv = [podman, *runtime_args, "system", "service", "--time=0", f"unix://{sock}"]
    log_path = sock.with_name(sock.name + ".log")
    try:
        with open(log_path, "ab") as logfile:
            # cwd "/": the service outlives whoever started it, and conmon inherits its working directory; a
            # service started from a dir later removed (a checkout, a job dir) fails every create afterwards with
            # "conmon: Failed to get working directory" / "write child: broken pipe"
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=child_env, start_new_session=True,
                cwd="/",
            )
    except OSError as exc:
        raise BackendError(f"could not start the podman service ({' '.join(argv)}): {exc}") from None
    # Only on a cold start: poll briefly for the socket to answer (podman has no readiness notification here).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise BackendError(
                f"the podman service exited with status {proc.returncode} right after starting: "
                f"{' / '.join(tail) or 'no output'} (log: {log_path})"
            )
        if sock.exists() and api.ping(timeout=1.0):
            write_owner_record(sock, proc.pid, runtime_dir)
            log.info("podman-service-started", socket=str(sock), pid=proc.pid, log=str(log_path))
            return proc.pid
        time.sleep(0.05)
    raise BackendError(f"started the podman service ({' '.join(argv)}) but it did not answer within {timeout:g} s")
