"""The doctor's engine checks: one real trivial container through the path a job takes, and whether the podman
service can see the work root.

A doctor that says ok while every job fails is worse than none (issue 8: rootful podman refused every container
for its rlimits while the old checks, which only asked ``podman --version`` and pinged the socket, were green).
So the container is made by the same factory, backend, socket and create body a job gets
(:func:`sandbox_runner.backends.factory.default_backend_for`), with its job dir under the work root, and its failure is
reported in the engine's own words.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.podman.api import ServiceUnreachable, socket_path
from sandbox_runner.backends.podman.backend import PodmanBackend
from sandbox_runner.backends.podman.mountns import (
    LATE_MOUNT_FIX,
    connections,
    hidden_paths,
    late_mount_cause,
    owned_service,
    owner_record_path,
    peer_pid,
)
from sandbox_runner.backends.podman.service import default_socket_url
from sandbox_runner.cli.doctor import Check
from sandbox_runner.errors import ImageError, SandboxRunnerError
from sandbox_runner.settings import Settings

__all__ = ["check_job_container", "check_work_root_in_service"]

#: what the trivial container does: write a file in its job dir (the bind mount and the uid mapping in one)
PROBE = "_doctor_probe"


def _work_root(settings: Settings) -> Path:
    return settings.work_root or settings.default_work_root


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _uses_podman(settings: Settings) -> bool:
    return settings.backend == "podman" and shutil.which("podman", path=settings.env.get("PATH")) is not None


def check_work_root_in_service(settings: Settings) -> Check:
    """The work root is the same directory inside the podman service's mount namespace as here."""
    name = "podman sees root"
    if not _uses_podman(settings):
        return Check(name, True, f"backend {settings.backend} or no podman here: not checked", required=False)
    url = default_socket_url(settings.env, os.getuid(), settings.podman_socket)
    sock = socket_path(url)
    root = _existing(_work_root(settings))
    pid = peer_pid(sock) if sock else None
    if sock is None or pid is None:
        return Check(name, True, f"{url}: no local service to look into (a job starts one)", required=False)
    hidden = hidden_paths(pid, [str(root)])
    if hidden is None:
        return Check(name, False, f"cannot read the mounts of the service (pid {pid}) at {url}", required=False)
    if not hidden:
        return Check(name, True, f"{root} is visible inside the service at {url} (pid {pid})")
    if owned_service(sock) is not None:
        return Check(name, False, late_mount_cause(url, str(root)) + "; sandbox-runner started that service and "
                     "restarts it when a job meets this", required=False)
    return Check(name, False, late_mount_cause(url, str(root)) + "; sandbox-runner did not start that service, "
                 "so it does not restart it", LATE_MOUNT_FIX)


def check_job_container(settings: Settings) -> Check:
    """One trivial container (``sh -c 'echo ok > _doctor_probe'``) as a job would run it; the engine's words when
    it fails."""
    name = "job container"
    if not _uses_podman(settings):
        return Check(name, True, f"backend {settings.backend} or no podman here: not checked", required=False)
    from sandbox_runner.job.runner import default_backend_for  # the runner pulls in the whole pipeline

    url = default_socket_url(settings.env, os.getuid(), settings.podman_socket)
    root = _work_root(settings)
    image_fix = ("set SANDBOX_RUNNER_DOCTOR_IMAGE (doctor --image) to an image jobs here use, and "
                 "SANDBOX_RUNNER_DOCTOR_IMAGE_URL (--image-url) to where it can be loaded from")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe_dir = Path(tempfile.mkdtemp(prefix=".doctor-", dir=root))
    except OSError as exc:
        return Check(name, False, f"cannot make a job dir under {root}: {exc.strerror}",
                     "make the work root writable for this user or point SANDBOX_RUNNER_WORK_ROOT elsewhere")
    spec = ContainerSpec(name=f"sandbox-runner-doctor-{uuid.uuid4().hex[:10]}", image=settings.doctor_image,
                         image_url=settings.doctor_image_url, argv=("sh", "-c", f"echo ok > {PROBE}"),
                         workdir=str(probe_dir), labels={"sandbox_runner.cli.doctor": "1"})
    io = JobIO(stdout=probe_dir / "_stdout.txt", stderr=probe_dir / "_stderr.txt")
    what = f"a trivial container ({settings.doctor_image}) through {url}"
    t0 = time.monotonic()
    backend = default_backend_for(settings, spec)
    # Where no service answers, a job starts one (same code, same socket); so does the doctor, or on a fresh
    # machine (root right after `make setup`) it could only say "not run". It stops that service afterwards.
    answering = isinstance(backend, PodmanBackend) and backend.api.ping(timeout=1.0)
    note = ""
    try:
        result = backend.run(spec, io)
        if result.engine_error:
            return Check(name, False, f"{what}: {result.engine_error}")
        if result.exit_code != 0:
            tail = io.stderr.read_text(errors="replace").strip().splitlines()[-3:]
            return Check(name, False, f"{what} exited {result.exit_code}: {' / '.join(tail) or 'no output'}")
        written = probe_dir / PROBE
        if not written.exists():
            return Check(name, False, f"{what} ran but its file is not in the job dir {probe_dir}")
        owner = written.stat().st_uid
        if owner != os.getuid():
            return Check(name, False, f"{what}: files a job writes belong to uid {owner}, not this worker's "
                         f"({os.getuid()})", "use the default user namespace (keep-id) for rootless podman")
    except ImageError as exc:
        return Check(name, False, f"{what}: {exc}", image_fix)
    except ServiceUnreachable:
        return Check(name, False, f"not run: no podman service answers at {url} (a job starts one there)",
                     f"podman --runtime runc system service --time=0 {url} &  then run doctor again",
                     required=False)
    except SandboxRunnerError as exc:
        return Check(name, False, f"{what}: {exc}")
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
        if isinstance(backend, PodmanBackend) and not answering and backend.service_pid:
            note = "; " + _stop_started_service(backend, backend.service_pid)
    return Check(name, True, f"{what} ran, exit 0, its file owned by uid {owner} "
                 f"({time.monotonic() - t0:.2f} s){note}")


def _stop_started_service(backend: PodmanBackend, pid: int) -> str:
    """Stop the service the doctor's container started, unless something else talks to it by now (a worker that
    started meanwhile and found it answering): a doctor leaves the machine as it found it. Connections, not
    containers, tell: every service of a user lists that user's containers, whoever started them."""
    sock = backend.socket_file
    listener = (peer_pid(sock) if sock else None) or pid
    busy = connections(listener, sock) if sock else None
    if busy:
        return f"started the podman service (pid {pid}) for this check; left it running: {busy} connection(s) to it"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # a clean exit: podman unlinks its socket
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and backend.api.ping(timeout=0.5):
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # it is this process's child: leave no zombie
    if sock is not None:
        owner_record_path(sock).unlink(missing_ok=True)
    return f"started the podman service (pid {pid}) for this check and stopped it"
