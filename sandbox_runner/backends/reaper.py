"""The plain-mode job's supervisor: whatever the job forks dies with the job, and with the worker.

Run by the subprocess backend (no bubblewrap) as ``python -I -S reaper.py <fd> <parent pid> -- argv...``, as the
leader of the job's own session. It makes itself a *child subreaper* (PR_SET_CHILD_SUBREAPER), so every process
the job leaves behind -- a ``sleep &``, a double-forked ``setsid`` daemon -- is re-parented to it rather than to
init, and stays findable in its process tree whatever session or group it moved to. It then spawns the command
and waits for:

* the command exits: what it left running is killed (as a container's or a bwrap sandbox's pid namespace dies
  with its pid 1), and the reaper exits with the command's status (128+n for a signal);
* ``<fd>`` (the read end of a pipe whose write end only the backend holds) reaches EOF: the worker died (SIGKILL,
  OOM) or asked for a kill. The whole tree is SIGKILLed. A pipe closes whenever and however its holder dies,
  even before this process started; PR_SET_PDEATHSIG (also set) fires only on the death of the parent thread;
* SIGTERM/SIGINT/SIGHUP: the backend signals the job's process group, so the command got the signal too; the
  reaper survives it to do the sweep.

If this process itself is SIGKILLed, none of that runs. For that, the job's environment carries
``SANDBOX_RUNNER_SUPERVISOR=<pid>:<start time>`` (the job dir's ``_pid``/``_pid_start``): inherited by all it
forks, in any session, it lets the backend, or the next worker's reconcile, find what is left (``procstat``).

Standard library only, and started with ``-S``: it runs between the worker and the job for the job's whole
life, so it must start fast and import nothing of the worker.
"""

from __future__ import annotations

import _signal as signal  # the C module: ``signal`` would import enum, 3 ms of start-up on every job
import ctypes
import os
import select
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: how long a sweep keeps at it: a process stuck in uninterruptible sleep (a hung NFS mount) cannot die, and
#: must not keep the job from ending
SWEEP_LIMIT = 30.0
#: the signal PR_SET_PDEATHSIG sends: one the backend never sends the job's group
_PDEATH = signal.SIGUSR2


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _descendants() -> list[int]:
    """Every process under this one (by ppid in /proc/<pid>/stat), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def sweep() -> None:
    """SIGKILL the whole tree until nothing is left: a process forked during a pass is re-parented to us (the
    subreaper) when its parent dies, so the next pass finds it; no child at all means no descendant at all."""
    deadline = time.monotonic() + SWEEP_LIMIT
    while True:
        left = _descendants()
        if time.monotonic() > deadline:
            sys.stderr.write(f"sandbox-runner: processes {left} of the job did not die of SIGKILL within "
                             f"{SWEEP_LIMIT:.0f}s (uninterruptible sleep? see their /proc/<pid>/stack); left behind\n")
            return
        for pid in left:
            try:  # noqa: SIM105 (contextlib costs 2 ms of start-up, on every job)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # gone meanwhile
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return
        select.poll().poll(5)  # ms: let the kernel deliver the kills and re-parent


def _job_env() -> dict[str, str]:
    """The job's environment plus this run's token (``procstat.SUPERVISOR_ENV``, kept in step by hand: nothing of
    sandbox_runner is imported here): ``<pid>:<start time>``, as the job dir's ``_pid``/``_pid_start``."""
    with open("/proc/self/stat", "rb") as f:
        start = f.read().rsplit(b")", 1)[1].split()[19].decode()
    return {**os.environ, "SANDBOX_RUNNER_SUPERVISOR": f"{os.getpid()}:{start}"}


def _status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def main(argv: list[str]) -> int:
    death_fd, parent, command = int(argv[1]), int(argv[2]), argv[4:]
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)  # a wake-up is all we need of it
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, _PDEATH):
        signal.signal(sig, lambda *_: None)  # a handler (not SIG_IGN, which exec would keep) that wakes poll
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, _PDEATH)
    if os.getppid() != parent:  # the worker died before PDEATHSIG was armed (the pipe's EOF tells too)
        return 137
    os.set_inheritable(death_fd, False)  # the job must not hold it: only the worker's end counts
    reset = {s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}
    try:
        child = os.posix_spawnp(command[0], command, _job_env(), setsigdef=reset, setsigmask=())
    except OSError as exc:
        sys.stderr.write(f'Unable to exec "{command[0]}": {exc.strerror}\n')
        return 127
    # poll, not select: the worker may have more than 1024 fds open, and <fd> keeps its number here
    poller = select.poll()
    for fd in (death_fd, wake_r):
        poller.register(fd, select.POLLIN)
    status: int | None = None
    while status is None:
        ready = {fd for fd, _ in poller.poll()}
        if death_fd in ready and not os.read(death_fd, 64):
            sweep()  # the worker is gone, or the backend asked for a kill
            return 137
        if wake_r in ready:
            woke = os.read(wake_r, 512)
            if _PDEATH in woke:
                sweep()
                return 137
        try:  # reap the command, and any orphan of the job that ended meanwhile
            while True:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == child:
                    status = _status(wait_status)
        except ChildProcessError:
            break
    sweep()  # what the job left behind ends with it
    return 137 if status is None else status


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BaseException:
        sweep()  # a supervisor that fails must not leave the job unsupervised
        raise
    sys.exit(code)
