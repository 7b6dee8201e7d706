"""SubprocessBackend: the container-less path, sandboxed by bubblewrap when it is installed.

With bwrap the job sees the host root read-only, private /tmp, /dev and /proc, its work dir and the
policy-checked mounts as asked, and (unless ``network == "host"``) no network: ``--unshare-all`` gives it
fresh user/pid/net/ipc/uts namespaces, which works for a plain user. Without bwrap it is a plain subprocess
in its own session, like HySDS's MonitoredRunner, and nothing but the environment is restricted; a small
supervisor (``reaper.py``, a child subreaper) runs it so that nothing it forks outlives the job or the worker.

``spec.image``, ``uid``/``gid`` and ``runtime_options`` do not apply here: the command runs as the worker user
on the host's own root filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

import structlog

from sandbox_runner.backends.base import ContainerSpec, JobIO, RunResult
from sandbox_runner.errors import BackendError
from sandbox_runner.procstat import kill_run, start_time

log = structlog.get_logger("sandbox_runner.subprocess")

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: How often the cancel waiter notices that the job ended by itself (the exit itself is a blocking wait).
_CANCEL_TICK = 0.05
#: (path in the sandbox, host path or None for an in-sandbox tmpfs, writable)
_View = list[tuple[str, str | None, bool]]
_Std = tuple[BinaryIO, BinaryIO]
#: Warnings already given by this process: the runner builds a backend per job, so "once" is per process.
_WARNED: set[str] = set()
#: plain mode's supervisor, run as a script by path (``-S``: no site, it imports only the standard library)
_REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")


def _warn_once(event: str, **fields: Any) -> None:
    if event not in _WARNED:
        _WARNED.add(event)
        log.warning(event, once_per_process=True, **fields)


def base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """PATH, HOME and LANG only: the worker's environment may hold broker/cloud credentials."""
    home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return {
        "PATH": environ.get("PATH") or _DEFAULT_PATH,
        "HOME": home,
        "LANG": environ.get("LANG") or "C.UTF-8",
    }


def _exit_code(returncode: int) -> int:
    # Popen reports a signal death as -signum; a shell, bwrap or a container engine reports 128+signum.
    return 128 - returncode if returncode < 0 else returncode


def _is_under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _lookup(path: str, view: _View) -> tuple[str | None, bool]:
    """Where ``path`` inside the sandbox comes from: (host path or None if on a tmpfs, writable)."""
    best = max((e for e in view if _is_under(path, e[0])), key=lambda e: len(e[0]))  # "/" is always there
    target, host, writable = best
    rest = path[len(target.rstrip("/")) :]
    return (host.rstrip("/") + rest if host is not None else None), writable


class _Job:
    """The running process and the lock that keeps signals from reaching a reaped (reusable) pid."""

    def __init__(self, proc: subprocess.Popen[bytes], sandbox_pid: int | None, death_w: int = -1) -> None:
        self.proc = proc
        self.sandbox_pid = sandbox_pid  # bwrap's init: pid 1 of the sandbox, leader of its session
        self.death_w = death_w  # plain mode: closing it makes the reaper SIGKILL the job's whole tree
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def signal(self, sig: int) -> None:
        with self.lock:
            if self.finished.is_set():
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                if self.sandbox_pid is None and sig == signal.SIGKILL and self.death_w >= 0:
                    # Not killpg: the reaper would die with the group before it could find what the job
                    # moved out of it (setsid daemons). A second SIGKILL (the reaper did not exit) is a killpg.
                    os.close(self.death_w)
                    self.death_w = -1
                elif self.sandbox_pid is None:  # plain mode (or bwrap failed before making a sandbox)
                    os.killpg(self.proc.pid, sig)
                elif sig != signal.SIGKILL and _has_other_members(self.sandbox_pid):
                    # The job runs in the sandbox's session (--new-session), led by bwrap's init; the init has
                    # no handler, so only the job sees the SIGTERM and can clean up.
                    os.killpg(self.sandbox_pid, sig)
                else:
                    # SIGKILL, or a stop before the command even exists: kill the sandbox's pid 1 and the
                    # kernel kills its whole pid namespace. Never the outer bwrap: when it dies before the
                    # sandbox has armed --die-with-parent, the sandbox lives on (seen under load in testing).
                    os.kill(self.sandbox_pid, signal.SIGKILL)

    def mark_finished(self) -> None:
        with self.lock:
            self.finished.set()
            if self.death_w >= 0:
                os.close(self.death_w)
                self.death_w = -1


def _has_other_members(pgid: int) -> bool:
    """Does process group ``pgid`` hold a process besides its leader? (stat: pid (comm) S ppid pgrp)"""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != pgid:
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            if int(fields[2]) == pgid:
                return True
    return False


def _watch_cancel(job: _Job, cancel: threading.Event, grace: float) -> None:
    while not cancel.wait(_CANCEL_TICK):
        if job.finished.is_set():
            return
    job.signal(signal.SIGTERM)
    if not job.finished.wait(grace):
        job.signal(signal.SIGKILL)
        if not job.finished.wait(max(grace, 5.0)):  # plain mode: the reaper was asked, and did not end
            job.signal(signal.SIGKILL)


class SubprocessBackend:
    """Runs ``spec.argv`` on this host: in a bubblewrap sandbox if available, else setsid'ed."""

    name = "subprocess"

    def __init__(self, *, use_bwrap: bool | None = None, env: Mapping[str, str] | None = None) -> None:
        """``env``: the worker environment to take PATH/HOME/LANG from (default: os.environ, read now)."""
        found = shutil.which("bwrap")
        if use_bwrap and found is None:
            raise BackendError("bubblewrap (bwrap) was requested but is not on PATH")
        self.bwrap: str | None = found if use_bwrap is not False else None
        self.base_env = base_env(os.environ if env is None else env)
        if self.bwrap is None:
            _warn_once("subprocess-unsandboxed", detail="no bubblewrap: jobs get the host network and filesystem")

    def run(self, spec: ContainerSpec, io: JobIO) -> RunResult:
        if not spec.argv:
            raise BackendError(f"job {spec.name}: empty command")
        if not os.path.isabs(spec.workdir) or not os.path.isdir(spec.workdir):
            raise BackendError(f"job {spec.name}: work dir {spec.workdir} is not an absolute directory")
        if spec.engine_socket is not None:  # the sharing policy grants it to podman jobs only
            raise BackendError(f"job {spec.name}: the engine socket is given only by the podman backend")
        if spec.image:
            detail = "the subprocess backend runs no container: the command runs on the host's root filesystem"
            _warn_once("subprocess-image-ignored", job=spec.name, image=spec.image, detail=detail)
        env = {**self.base_env, **spec.env}
        # Append: never clobber what the runner may already have written; O_APPEND also keeps lines whole when
        # stdout and stderr are the same file.
        with open(io.stdout, "ab") as out, open(io.stderr, "ab") as err:
            if self.bwrap is None:
                # behind the reaper an exec failure would be its exit code, not "Unable to exec": check first
                problem = _exec_problem(spec.argv[0], env, spec.workdir, [("/", "/", False)])
                if problem:
                    return _unable_to_exec(spec.argv[0], problem, err)
                return self._spawn(spec, io, [*spec.argv], env, (out, err))
            args, view = self._bwrap_args(spec)
            problem = _exec_problem(spec.argv[0], env, spec.workdir, view)
            if problem:
                return _unable_to_exec(spec.argv[0], problem, err)
            return self._spawn(spec, io, [self.bwrap, *args, "--", *spec.argv], env, (out, err))

    def _bwrap_args(self, spec: ContainerSpec) -> tuple[list[str], _View]:
        binds = [(spec.workdir, spec.workdir, True)] + [(m.container, m.host, m.mode == "rw") for m in spec.mounts]
        args = _root_args([target for target, _, _ in binds])
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        view: _View = [("/", "/", False), ("/dev", None, True), ("/proc", None, False), ("/tmp", None, True),
                       ("/run", None, True)]
        # Parents before children (as docker orders mounts): HySDS mounts <root>/jobs, which contains the work
        # dir; mounted after the work dir it would hide it.
        binds.sort(key=lambda b: len([p for p in b[0].split("/") if p]))
        for target, host, writable in binds:
            args += ["--bind" if writable else "--ro-bind", host, target]
            view.append((target, host, writable))
        # the root was assembled on a tmpfs so mount points could be made; now it becomes read-only
        args += ["--remount-ro", "/", "--unshare-all"]
        if spec.network == "host":
            args.append("--share-net")
        args += ["--die-with-parent", "--new-session", "--chdir", spec.workdir]
        return args, view

    def _spawn(self, spec: ContainerSpec, io: JobIO, argv: list[str], env: dict[str, str], std: _Std) -> RunResult:
        out, err = std
        info_r, info_w = os.pipe() if self.bwrap else (-1, -1)
        if self.bwrap:
            argv[1:1] = ["--info-fd", str(info_w)]  # bwrap reports the sandbox's pid (= its session) there
        # Plain mode: the reaper holds the read end, this process the write end (close-on-exec, so no other
        # child keeps it): its EOF, however this process dies, makes the reaper kill all of the job.
        death_r, death_w = (-1, -1) if self.bwrap else os.pipe()
        if not self.bwrap:
            argv = [sys.executable, "-I", "-S", _REAPER, str(death_r), str(os.getpid()), "--", *argv]
        passed = (info_w,) if self.bwrap else (death_r,)
        started = time.time()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=spec.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,  # the files' own descriptors: output lands while the job runs, nothing is copied
                stderr=err,
                start_new_session=True,  # one process group to signal; the worker's signals don't reach it
                pass_fds=passed,
            )
        except OSError as e:
            if death_w >= 0:
                os.close(death_w)
            # bwrap or the plain-mode supervisor (the command itself was checked above, and the supervisor
            # reports its own exec failure as "Unable to exec")
            raise BackendError(f"job {spec.name}: cannot start {argv[0]}: {e.strerror or e}") from e
        finally:
            os.close(passed[0])
        sandbox_pid = _read_child_pid(info_r) if info_r >= 0 else None
        supervisor_start = None if self.bwrap else start_time(proc.pid)
        job = _Job(proc, sandbox_pid, death_w)
        try:
            io.on_start(proc.pid, None)
        except BaseException:
            job.signal(signal.SIGKILL)
            proc.wait()
            raise
        # A daemon thread waits for cancel; it ends by itself within a tick of the job's exit (no join needed:
        # once finished is set it can no longer signal anything).
        threading.Thread(target=_watch_cancel, args=(job, io.cancel, spec.stop_grace), daemon=True).start()
        try:
            # Wait without reaping (WNOWAIT): while the zombie exists its pid/pgid cannot be reused, so the
            # cancel thread never signals a stranger. Reap only after marking the job finished under the lock.
            ended = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            if not self.bwrap and ended is not None and ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                # The reaper itself was killed (it exits, never dies of a signal, when it can): what it
                # supervised is found by its token, in any session. Its zombie holds the pid meanwhile.
                if supervisor_start is not None:
                    kill_run(proc.pid, supervisor_start)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # and its group, for a job that cleared its environment
        except ChildProcessError:
            pass  # reaped elsewhere (SIGCHLD ignored); proc.wait() below copes
        except BaseException:
            job.signal(signal.SIGKILL)  # the worker itself is being interrupted: leave no orphan job behind
            raise
        finally:
            job.mark_finished()
            returncode = proc.wait()
        if self.bwrap and sandbox_pid is None:
            raise BackendError(
                f"job {spec.name}: bubblewrap failed to create the sandbox (exit {returncode}): {io.stderr}"
            )
        return RunResult(exit_code=_exit_code(returncode), pid=proc.pid, started=started, ended=time.time())


#: Top-level host paths the sandbox gets its own instance of instead of the host's (``/run`` holds the
#: engine sockets: a job must never reach them).
_PRIVATE_TOP = frozenset({"/dev", "/proc", "/tmp", "/run"})


def _root_args(targets: list[str]) -> list[str]:
    """bwrap arguments for a read-only view of the host root in which every mount target can be created.

    ``--ro-bind / /`` cannot host a mount at ``/data/in`` or ``/home/ops/.netrc`` when those don't exist on
    the host (bwrap cannot mkdir on a read-only bind). So the root is a tmpfs, and the host's entries are bound
    into it one by one; a directory on the way to a missing target is "exploded" the same way, one level
    down, so the missing part can be made in tmpfs while everything else the host has stays visible.
    """
    explode = {"/"}
    for target in targets:
        if os.path.lexists(target) or any(_is_under(target, p) for p in _PRIVATE_TOP):
            continue
        ancestor = posixpath.dirname(target)
        while not os.path.isdir(ancestor) or os.path.islink(ancestor):
            ancestor = posixpath.dirname(ancestor)
        while ancestor != "/":
            explode.add(ancestor)
            ancestor = posixpath.dirname(ancestor)
    args: list[str] = []

    def emit(directory: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise BackendError(f"cannot prepare sandbox root: {directory}: {exc.strerror}") from None
        args.extend(["--dir", directory])
        for name in names:
            path = posixpath.join(directory, name)
            if path in _PRIVATE_TOP:
                continue
            if path in explode:
                emit(path)
            elif os.path.islink(path):
                args.extend(["--symlink", os.readlink(path), path])
            else:
                args.extend(["--ro-bind", path, path])

    emit("/")
    return args[2:]  # "/" itself needs no --dir


def _read_child_pid(fd: int) -> int | None:
    # bwrap writes this JSON right after clone() and closes the fd, so EOF comes at once, not at job end.
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None  # bwrap failed before creating the sandbox


def _exec_problem(cmd: str, env: Mapping[str, str], workdir: str, view: _View) -> str | None:
    """Why ``cmd`` could not be exec'ed inside the sandbox, or None. Checked up front because bwrap's own
    execvp failure is an exit 1 indistinguishable from the job's."""
    dirs = ["."] if "/" in cmd else env.get("PATH", _DEFAULT_PATH).split(":")
    reason = "No such file or directory"
    for d in dirs:
        path = posixpath.normpath(posixpath.join(workdir, d or ".", cmd))
        host, _ = _lookup(path, view)
        if host is None or not os.path.exists(host):
            continue
        if os.path.isdir(host) or not os.access(host, os.X_OK):
            reason = "Permission denied"
            continue
        return None
    return reason


def _unable_to_exec(cmd: str, reason: str, err: BinaryIO) -> RunResult:
    # HySDS's MonitoredRunner fails the job (not the worker) with this line in _stderr.txt; 127 is what a
    # shell reports for a command it cannot run.
    err.write(f'Unable to exec "{cmd}": {reason}\n'.encode())
    err.flush()
    now = time.time()
    what = "executable file not found" if reason == "No such file or directory" else reason.lower()
    return RunResult(exit_code=127, pid=0, started=now, ended=now,
                     engine_error=f"the sandbox could not start the job: {what}: {cmd}")
