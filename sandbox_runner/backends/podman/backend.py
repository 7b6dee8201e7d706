"""PodmanBackend: one job = one rootless container, driven through the user's Podman API service.

A run is five API calls plus one stream: ``create`` (everything in one body, see :mod:`.spec`) ->
``attach`` (a hijacked stream, opened *before* start so no output is lost; podman initialises the container
here, so its process and host pid exist) -> ``inspect`` (that pid for ``io.on_start``, the image id) -> ``start``
-> exit code; podman removes the container itself. The attach stream is podman's multiplexed format (8-byte
header: stream id, length); a thread copies each frame's payload, and nothing else, into the stdout/stderr file
as it arrives, so the files are byte-exact and grow while the job runs. The stream ends when the job exits; the
same thread then reads the exit code with ``inspect`` (``wait`` is ~0.1 s slower here, see
:meth:`.follow.Follower._exited_code`).

Removal: containers are created with ``remove: true``, so conmon's exit command removes them even if the worker
dies meanwhile, and the worker does not wait ~40 ms per job for a ``DELETE`` (benchmarks/job_overhead.py).
That cleanup runs 60-190 ms after the job exits, long after our ``inspect`` has read the exit code (~10 ms);
should it ever win the race, the exit code is read back from podman's ``died`` event. A container left by an
error path is deleted explicitly.

keep-id and uid/gid: with ``--userns=keep-id`` the worker's uid/gid are the same numbers inside, so files the job
writes in its job dir belong to the worker on the host. ``spec.uid``/``gid`` are honoured *without* losing that:
the worker's ids are mapped onto the requested ones (``keep-id:uid=U,gid=G``), and uid 0 runs in the default
rootless namespace, where container root is the worker. See :func:`.spec.userns_and_user`.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.backends.base import ContainerSpec, JobIO, RunResult
from sandbox_runner.backends.podman.api import APIError, PodmanAPI, ServiceUnreachable, socket_path
from sandbox_runner.backends.podman.follow import Follower
from sandbox_runner.backends.podman.gpus import explain_cdi_failure
from sandbox_runner.backends.podman.images import ensure_image
from sandbox_runner.backends.podman.mountns import late_mount_message, owned_service, reap_retired, statfs_missing
from sandbox_runner.backends.podman.service import default_socket_url, restart_for_mounts, start_service
from sandbox_runner.backends.podman.spec import (
    build_create_body,
    fit_rootful_rlimits,
    hand_workdir_to_job_user,
    service_rlimits,
)
from sandbox_runner.errors import BackendError, ImageError, SandboxRunnerError

__all__ = ["PodmanBackend", "default_socket_url"]

log = structlog.get_logger("sandbox_runner.podman")

WORKER_LABEL = "sandbox_runner.worker"
JOB_LABEL = "sandbox_runner.job_id"
#: how often the main thread looks at ``io.cancel`` while the job runs; it never delays a normal exit.
CANCEL_TICK = 0.2
#: podman's own messages for a command that cannot be executed, and the exit codes ``podman run`` gives them.
_EXEC_FAILURES = {"command that was not found": 127, "OCI permission denied": 126}


def _add(phases: dict[str, float], name: str, seconds: float) -> None:
    phases[name] = phases.get(name, 0.0) + max(0.0, seconds)


def _limits_unenforced() -> bool:
    """Rootless podman on cgroups v1 (no unified hierarchy) accepts memory/cpu/pids limits and silently drops
    them (measured here: memory.limit_in_bytes stays unlimited). A local check: the service runs on this host."""
    return os.getuid() != 0 and not os.path.exists("/sys/fs/cgroup/cgroup.controllers")


TUN = "/dev/net/tun"
KEEPID_RACE = "keep-id requires additional UIDs or GIDs"
_CREATE_THREADS = threading.Lock()
START_FAILED = "container engine could not start the job: "
#: what the container's init (catatonit, ``--init``) prints when it cannot exec the command, then exits 1: the
#: engine's failure, though it comes back as the container's exit code
_INIT_EXEC_FAILED = re.compile(rb"^ERROR \(catatonit:\d+\): failed to exec pid1: (?P<reason>[^\n]+)")


def _init_exec_failure(exit_code: int, io: JobIO, spec: ContainerSpec) -> str | None:
    """The engine's sentence when the container's init could not exec the command, else None."""
    if exit_code == 0:
        return None
    try:
        with open(io.stderr, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    found = _INIT_EXEC_FAILED.match(head)
    if found is None:
        return None
    reason = found["reason"].decode(errors="replace").strip()
    what = "executable file not found" if reason == "No such file or directory" else reason.lower()
    program = spec.argv[0] if spec.argv else "(no command)"
    return f"{START_FAILED}{what}: {program} (catatonit: failed to exec pid1: {reason})"


class PodmanBackend:
    """Run a :class:`ContainerSpec` in a rootless podman container; see the module docstring for the flow."""

    name = "podman"

    def __init__(
        self,
        socket_url: str | None = None,
        *,
        worker: str = "",
        start_service: bool = True,
        image_cache: Path | None = None,
        pull: bool = True,
        service_runtime: str | None = "runc",
        env: Mapping[str, str] | None = None,
    ) -> None:
        # the edges pass socket_url (Settings.podman_socket); the environment is only a fallback for scripts
        self.env = dict(os.environ if env is None else env)
        self.socket_url = default_socket_url(self.env, os.getuid(), socket_url)
        #: the socket's path (None for a TCP URL): the create lock, the service's limits and owner record key on it
        self.socket_file = socket_path(self.socket_url)
        self.api = PodmanAPI(self.socket_url)
        self.worker = worker
        self.start_service = start_service
        cache_home = Path(self.env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.image_cache = image_cache or cache_home / "sandbox_runner" / "images"
        self.pull = pull
        self.service_runtime = service_runtime
        #: pid of the podman service this backend started (it keeps running for later jobs), else None
        self.service_pid: int | None = None
        #: as root the service is rootful podman, which raises container rlimits past what the host may grant
        self.rootful = os.getuid() == 0

    # --- the contract -------------------------------------------------------------------------------------------
    def create_body(self, spec: ContainerSpec) -> tuple[dict[str, Any], list[str]]:
        """The create request this backend sends for ``spec`` (``--dry-run`` prints it), and notes on options it
        ignores; BackendError naming the option for what it cannot honour."""
        labels = dict(spec.labels)
        if self.worker:
            labels.setdefault(WORKER_LABEL, self.worker)
        sock = self.socket_file
        if spec.engine_socket is not None and self.rootful:
            raise BackendError("the engine socket is given to jobs only by a rootless worker: this one runs rootful "
                               "podman, whose socket would make the job root on the host")
        if spec.network == "bridge" and not self.rootful and not os.access(TUN, os.R_OK | os.W_OK):
            raise BackendError(f"network 'bridge' cannot be honoured: rootless podman's bridge needs {TUN}, which "
                               "this worker cannot use; ask for 'host' or 'none', or leave the network unset")
        return build_create_body(spec, labels=labels, sockets=[sock] if sock else [])

    def run(self, spec: ContainerSpec, io: JobIO) -> RunResult:
        body, notes = self.create_body(spec)
        try:
            return self._run_body(spec, io, body, notes)
        except BackendError as exc:
            # the engine's "unresolvable CDI devices" becomes a failure naming the gpus option and the fix
            explained = explain_cdi_failure(str(exc), body)
            if explained is None:
                raise
            raise BackendError(explained) from None

    def _run_body(self, spec: ContainerSpec, io: JobIO, body: dict[str, Any], notes: list[str]) -> RunResult:
        for note in notes:
            log.info("runtime-option-ignored", container=spec.name, note=note)
        if "resource_limits" in body and _limits_unenforced():
            log.warning("resource-limits-not-enforced", container=spec.name, reason="rootless podman on cgroups v1")
        if self.rootful:
            hand_workdir_to_job_user(spec.workdir, body)
        sock = self.socket_file
        try:
            return self._run_attempts(body, spec, io)
        finally:
            if sock is not None:
                reap_retired(sock)  # a service retired for a late mount, once its last stream (maybe ours) ended

    def _run_attempts(self, body: dict[str, Any], spec: ContainerSpec, io: JobIO) -> RunResult:
        for attempt in range(3):
            t0, loaded = time.monotonic(), io.phases.get("image_load", 0.0)
            cid = self._create(body, spec, io.phases)  # starts the service if need be, and loads the main image
            loaded = io.phases["image_load"] - loaded
            _add(io.phases, "container_start", time.monotonic() - t0 - loaded)
            try:
                if attempt == 0 and spec.dependencies:
                    t0 = time.monotonic()
                    self._ensure_dependencies(spec)
                    _add(io.phases, "image_load", time.monotonic() - t0)
                return self._run(cid, spec, io)
            except BackendError as exc:
                self._remove(cid)  # podman's auto-removal needs the container to have run and exited
                # the keep-id race (see KEEPID_RACE) can also hit attach/start, before the job began: go again
                if attempt == 2 or not str(exc).startswith(START_FAILED) or "preparing container" not in str(exc):
                    raise
                log.warning("container-start-retried", container=spec.name, error=str(exc))
            except BaseException:
                self._remove(cid)
                raise
        raise AssertionError("unreachable")

    # --- steps ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _create_lock(self) -> Iterator[None]:
        """One keep-id create at a time per service, across threads and worker processes.

        podman 4.3.1 reads the subuid ranges for keep-id through libsubid, which is not thread-safe: concurrent
        creates fail with "keep-id requires additional UIDs or GIDs" or crash the whole API service (SIGSEGV in
        subid_get_uid_ranges, seen at concurrency 2). A create takes ~15 ms, so queueing them costs little.
        """
        sock = self.socket_file
        with _CREATE_THREADS:
            if sock is None:
                yield
                return
            try:
                fd = os.open(f"{sock}.create.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:  # a socket dir we cannot write: the thread lock still covers this process
                yield
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _create(self, body: dict[str, Any], spec: ContainerSpec, phases: dict[str, float] | None = None) -> str:
        tried: set[str] = set()  # each remedy at most once
        phases = {} if phases is None else phases
        phases.setdefault("image_load", 0.0)
        while True:
            try:
                sock = self.socket_file
                if sock is not None and self.rootful:  # the service's limits, asked on each try: it may be new
                    body_now = fit_rootful_rlimits(body, service_rlimits(sock))
                else:
                    body_now = body
                with self._create_lock():
                    return str(self.api.call("POST", "/containers/create", body=body_now, what="create")["Id"])
            except ServiceUnreachable:
                if "service" in tried or not self.start_service:
                    raise
                tried.add("service")
                self.service_pid = start_service(self.api, env=self.env, runtime=self.service_runtime)
            except APIError as exc:
                if "image" not in tried and (exc.status == 404 or "image not known" in exc.message):
                    tried.add("image")
                    assert spec.image is not None  # build_create_body refused image-less specs
                    t0 = time.monotonic()
                    try:
                        ensure_image(self.api, spec.image, spec.image_url, self.image_cache, pull=self.pull)
                    finally:
                        _add(phases, "image_load", time.monotonic() - t0)
                elif "name" not in tried and "already in use" in exc.message and self._remove_stale(spec.name):
                    tried.add("name")
                elif KEEPID_RACE in exc.message and len(tried) < 8:
                    # podman 4.3's API service intermittently fails concurrent keep-id creates (~1% at
                    # concurrency 2, measured by benchmarks/throughput.py); the same create then succeeds
                    tried.add(f"keep-id-{len(tried)}")
                    time.sleep(0.02 * len(tried))
                elif (late := self._late_mount(exc.message, body_now, retried="mount" in tried)) is not None:
                    tried.add("mount")  # the service now sees every mount: the job has not begun, create again
                    self.service_pid = late or self.service_pid
                else:
                    raise BackendError(f"could not create the job's container: {exc.message}") from None

    def _late_mount(self, message: str, body: dict[str, Any], *, retried: bool) -> int | None:
        """A bind source that exists here but not in the service (mounted after it started, see
        :mod:`.podman_mountns`): restart a service we started and return its pid (0: someone else restarted it);
        BackendError naming the cause and the fix for one we did not. None: not this case."""
        sock = self.socket_file
        missing = statfs_missing(message)
        if sock is None or missing is None or not os.path.exists(missing):
            return None
        prefix = "could not create the job's container: "
        if retried:
            raise BackendError(prefix + late_mount_message(self.socket_url, missing, owned=True, after_restart=True))
        if not self.start_service or owned_service(sock) is None:
            raise BackendError(prefix + late_mount_message(self.socket_url, missing, owned=False))
        log.warning("podman-service-restarting", socket=sock, path=missing,
                    reason=late_mount_message(self.socket_url, missing, owned=True))
        sources = [missing, *(str(m["source"]) for m in body.get("mounts", []) if m.get("source") != missing)]
        try:
            with self._create_lock():  # no other worker creates a container on the old service meanwhile
                pid = restart_for_mounts(self.api, env=self.env, runtime=self.service_runtime, paths=sources)
        except BackendError as exc:
            raise BackendError(prefix + str(exc)) from None
        log.info("podman-service-restarted", socket=sock, pid=pid)
        return pid or 0

    def _ensure_dependencies(self, spec: ContainerSpec) -> None:
        """Every dependency image present before the job (HySDS loads them as it loads the main image)."""
        for dep in spec.dependencies:
            try:
                ensure_image(self.api, dep.image, dep.image_url, self.image_cache, pull=self.pull)
            except ImageError as exc:
                raise ImageError(f"dependency image '{dep.image}' could not be made present: {exc}") from None

    def _remove_stale(self, name: str) -> bool:
        """A container left by a worker that died (same job name, not running) is removed; others are not."""
        try:
            info = self.api.call("GET", f"/containers/{name}/json")
        except BackendError:
            return False
        if JOB_LABEL not in (info.get("Config", {}).get("Labels") or {}) or info.get("State", {}).get("Running"):
            return False
        log.warning("stale-container-removed", container=name, id=info.get("Id"))
        self._remove(str(info["Id"]))
        return True

    def _run(self, cid: str, spec: ContainerSpec, io: JobIO) -> RunResult:
        with open(io.stdout, "wb") as out, open(io.stderr, "wb") as err:
            started, t0 = time.time(), time.monotonic()
            try:
                stream = self.api.open(
                    "POST", f"/containers/{cid}/attach", params={"stream": True, "stdout": True, "stderr": True},
                    timeout=None, what="attach",
                )  # fmt: skip
                follower = Follower(self.api, cid, stream, out, err)
                follower.start()
                # attach has initialised the container: its process exists (waiting for start) and has its
                # host pid now, which stays valid however fast the job then exits
                info = self.api.call("GET", f"/containers/{cid}/json", what="inspect")
                started = time.time()
                self.api.call("POST", f"/containers/{cid}/start", what="start")
            except APIError as exc:
                _add(io.phases, "container_start", time.monotonic() - t0)
                code = next((c for text, c in _EXEC_FAILURES.items() if text in exc.message), None)
                if code is None:
                    raise BackendError(f"{START_FAILED}{exc.message}") from None
                err.write(f"podman: {exc.message}\n".encode())
                return RunResult(code, 0, started, time.time(), cid, None, engine_error=f"{START_FAILED}{exc.message}",
                                 phases=dict(io.phases))
            _add(io.phases, "container_start", time.monotonic() - t0)
            pid = int((info.get("State") or {}).get("Pid") or 0)
            io.on_start(pid, cid)
            self._follow(cid, spec, io, follower)
            if follower.error is not None:
                if isinstance(follower.error, SandboxRunnerError):
                    raise follower.error
                raise BackendError(f"lost track of the job's container: {follower.error}") from None
            assert follower.exit_code is not None
        return RunResult(follower.exit_code, pid, started, time.time(), cid, info.get("Image"),
                         engine_error=_init_exec_failure(follower.exit_code, io, spec), phases=dict(io.phases))

    def _follow(self, cid: str, spec: ContainerSpec, io: JobIO, follower: Follower) -> None:
        """Block until the job has exited; stop it if ``io.cancel`` gets set meanwhile."""
        deadline: float | None = None
        while True:
            if deadline is None and io.cancel.is_set():  # checked first: a cancel may predate the start
                grace = max(0, math.ceil(spec.stop_grace))  # the API takes whole seconds
                deadline = time.monotonic() + grace + 30
                self._stop(cid, grace)
            elif deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"container {cid[:12]} did not exit after being stopped")
            if follower.done.wait(CANCEL_TICK):
                if deadline is not None:
                    # stopped (revoke, signal, time limit): the slot frees only once the container is gone, not
                    # when podman's auto-removal gets to it, or the next job starts beside what is left of it
                    self._remove(cid)
                return

    def _stop(self, cid: str, grace: int) -> None:
        """The image's stop signal (SIGTERM by default, forwarded by the init), ``grace`` seconds, then SIGKILL."""
        log.info("container-stopping", container=cid, grace=grace)
        try:
            self.api.call("POST", f"/containers/{cid}/stop", params={"timeout": grace}, timeout=grace + 30)
        except APIError as exc:
            if exc.status != 304 and not exc.gone:  # already stopped / gone: nothing to do
                log.warning("container-stop-failed", container=cid, error=exc.message)
        except BackendError as exc:
            log.warning("container-stop-failed", container=cid, error=str(exc))

    def _remove(self, cid: str) -> None:
        try:
            self.api.call("DELETE", f"/containers/{cid}", params={"force": True, "v": True}, what="remove")
        except APIError as exc:
            if not exc.gone:
                log.warning("container-not-removed", container=cid, error=exc.message)
        except BackendError as exc:
            log.warning("container-not-removed", container=cid, error=str(exc))
