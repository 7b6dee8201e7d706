"""On start, clean up after a predecessor that was killed (SIGKILL, OOM, a lost node): nothing catches SIGKILL.

Two kinds of leftovers, both found without trusting PIDs or timestamps:

* **containers** labelled ``sandbox_runner.worker=<this worker's name>``: the podman service (conmon) keeps them
  running after their worker died. Each is stopped (stop signal, grace, kill) and removed, unless a live process
  holds its job dir's lock (then it is not a predecessor's; with the name lock that cannot happen, but a check
  is cheaper than a wrong kill).
* **job dirs** under the work root whose ``.running`` lock nobody holds: the process that ran them is gone. Each is
  closed (``_exit_code`` from its container when we stopped one, ``.done``) and gets one ``job-offline`` status --
  unless its status is already terminal, or another worker has since taken the job over (it holds the lease).

* **processes** of such a job still running (plain-mode subprocess jobs: the supervisor normally takes them along
  when the worker dies; this is for when the supervisor was killed with it). Found by ``_pid``/``_pid_start``,
  never by pid alone: those whose environment holds the supervisor's token ``<pid>:<start time>`` (inherited by
  all the job forked, in any session), and, while ``_pid`` is still that same process (same start time, e.g. an
  unreaped zombie), the members of its session. A process that merely got the pid again is never touched.

A ``.running`` that exists but is still empty may belong to a job whose worker is between creating the marker and
locking it (the stamp is written under the lock): such a marker is left alone until it is a minute old.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.backends.podman.api import APIError, PodmanAPI
from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.events.emitter import Emitter
from sandbox_runner.fspolicy.jobdirs import iter_job_paths, lock_held
from sandbox_runner.job.workdir import RUNNING, WorkDir
from sandbox_runner.procstat import kill_run, session_of, start_time
from sandbox_runner.settings import Settings
from sandbox_runner.worker.lease import LeaseGuard

log = structlog.get_logger("sandbox_runner.worker")

WORKER_LABEL = "sandbox_runner.worker"
JOB_DIR_LABEL = "sandbox_runner.job_dir"
UNLOCKED_WINDOW = 60.0


@dataclass
class Reconciled:
    containers: list[str] = field(default_factory=list)  # ids stopped/removed
    offline: list[str] = field(default_factory=list)  # task ids that got job-offline
    closed: list[str] = field(default_factory=list)  # job dirs closed


def _podman_leftovers(settings: Settings, exit_codes: dict[str, int], result: Reconciled) -> None:
    from sandbox_runner.backends.podman.service import default_socket_url
    from sandbox_runner.errors import BackendError

    api = PodmanAPI(default_socket_url(settings.env, settings.uid, settings.podman_socket))
    label = f"{WORKER_LABEL}={settings.worker_name}"
    try:
        found = api.call("GET", "/containers/json",
                         params={"all": True, "filters": json.dumps({"label": [label]})}) or []
    except BackendError as exc:
        log.warning("reconcile-podman-unavailable", error=str(exc))
        return
    grace = max(0, int(settings.stop_grace))

    def reap(info: dict[str, Any]) -> None:
        cid, labels = str(info["Id"]), info.get("Labels") or {}
        job_dir = labels.get(JOB_DIR_LABEL)
        if job_dir and lock_held(os.path.join(job_dir, RUNNING)):
            return
        try:
            if info.get("State") == "running":
                log.warning("orphan-container-stopping", container=cid, job_dir=job_dir, grace=grace)
                try:
                    api.call("POST", f"/containers/{cid}/stop", params={"timeout": grace}, timeout=grace + 30)
                except APIError as exc:
                    if exc.status != 304 and not exc.gone:  # it ended (and may be auto-removed) meanwhile
                        raise
            code = _exit_code(api, cid)
            if job_dir and code is not None:
                exit_codes[job_dir] = code
            try:
                api.call("DELETE", f"/containers/{cid}", params={"force": True, "v": True})
            except APIError as exc:
                if not exc.gone:  # podman's own auto-removal got there first
                    raise
            result.containers.append(cid)
        except BackendError as exc:
            log.error("orphan-container-not-removed", container=cid, error=str(exc))

    # all at once: each stop may take the whole grace period, and the worker takes no job until they are done
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(found)))) as pool:
        list(pool.map(reap, found))


def _exit_code(api: PodmanAPI, cid: str) -> int | None:
    """From inspect, or, once podman has auto-removed the stopped container, from its ``died`` event."""
    from sandbox_runner.backends.podman.follow import died_exit_code

    try:
        state = (api.call("GET", f"/containers/{cid}/json") or {}).get("State") or {}
    except APIError as exc:
        if not exc.gone:
            raise
        return died_exit_code(api, cid)
    return int(state["ExitCode"]) if state.get("ExitCode") is not None else None


def _claim(path: str) -> int | None:
    """The fd of ``.running`` with its lock taken, if it is an abandoned marker; else None."""
    marker = os.path.join(path, RUNNING)
    try:
        fd = os.open(marker, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if st.st_size == 0 and time.time() - st.st_mtime < UNLOCKED_WINDOW:
            raise BlockingIOError  # maybe a job between creating and locking its marker
    except OSError:
        os.close(fd)
        return None
    return fd


def _sweep_session(path: str) -> list[int]:
    """SIGKILL what is left of the dead run's processes (see the module doc); the pids killed."""
    try:
        pid = int(Path(path, "_pid").read_text().strip())
        recorded = int(Path(path, "_pid_start").read_text().strip())
    except (OSError, ValueError):
        return []  # no record of which process it was: never guess by pid alone
    if pid <= 1:
        return []
    killed = kill_run(pid, recorded)  # by the token in their environment, in any session
    if start_time(pid) == recorded:  # the leader is still that same process (alive, or an unreaped zombie)
        for name in os.listdir("/proc"):
            if name.isdigit() and session_of(name) == pid:  # then its session's members are the job's
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    continue  # exited meanwhile, or not ours
                killed.append(int(name))
    if killed:
        log.warning("orphan-processes-killed", job_dir=path, supervisor=pid, pids=sorted(set(killed)))
    return killed


def _read_job(path: str) -> dict[str, Any]:
    try:
        job = json.loads(Path(path, "_job.json").read_text())
    except (OSError, ValueError):
        job = None
    return job if isinstance(job, dict) else {"job_id": os.path.basename(path)}


def _close(path: str, fd: int, exit_code: int | None, emitter: Emitter, guard: LeaseGuard | None,
           me: str, result: Reconciled) -> None:
    wd = WorkDir(Path(path), _lock_fd=fd)
    _sweep_session(path)
    job = _read_job(path)
    if exit_code is not None and not wd.file("_exit_code").exists():
        wd.write_text("_exit_code", f"{exit_code}\n")
    wd.mark_done()
    result.closed.append(path)
    task_id = job.get("task_id")
    status = holder = None
    if guard is not None and task_id:
        status, holder = guard.status(str(task_id)), guard.holder(str(task_id))
    if status in TERMINAL_STATUSES or (holder is not None and holder != me):
        log.info("orphan-job-closed", job_dir=path, status=status, lease_holder=holder)
        return
    emitter.job_status(job, "job-offline",
                       error=f"The worker went away while the job ran; {me} found it on start and closed it.")
    if guard is not None and task_id:
        guard.clear(str(task_id), me)
    result.offline.append(str(task_id))


def reconcile(settings: Settings, emitter: Emitter, guard: LeaseGuard | None, *,
              use_podman: bool = True) -> Reconciled:
    result = Reconciled()
    exit_codes: dict[str, int] = {}
    if use_podman:
        _podman_leftovers(settings, exit_codes, result)
    candidates = list(exit_codes)
    seen = set(candidates)
    for path in iter_job_paths(str(settings.workroot.jobs)):
        if path not in seen and os.path.lexists(os.path.join(path, RUNNING)):
            candidates.append(path)
    for path in candidates:
        fd = _claim(path)
        if fd is not None:
            _close(path, fd, exit_codes.get(path), emitter, guard, settings.worker_name, result)
    if result.containers or result.closed:
        log.warning("reconciled", containers=len(result.containers), closed=len(result.closed),
                    offline=len(result.offline))
    return result
