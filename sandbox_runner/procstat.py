"""What /proc tells of a process: its session and start time (a pid told from its reuse), a run's token, and who
listens on a unix socket."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields after ``comm`` (state, ppid, pgrp, session, ..., starttime at 19), or None if ``pid`` is gone.
    Split after the last ``)``: a command name may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def session_of(pid: int | str) -> int | None:
    fields = stat_fields(pid)
    return int(fields[3]) if fields else None


def start_time(pid: int | str) -> int | None:
    """When ``pid`` started, in clock ticks since boot: with the pid, a process's identity."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


#: Set by the plain-mode supervisor (``backends/reaper.py``) in its job's environment to ``<its pid>:<its start
#: time>``, which the job dir records as ``_pid``/``_pid_start``: inherited by everything the job forks, in any
#: session, it tells the run's processes from all others once the supervisor is gone (as Jenkins' build cookie).
SUPERVISOR_ENV = "SANDBOX_RUNNER_SUPERVISOR"


def processes_of_run(pid: int, start: int) -> list[int]:
    """This user's processes whose environment carries the token of supervisor ``pid`` started at ``start``."""
    token = f"{SUPERVISOR_ENV}={pid}:{start}".encode()
    me = os.getuid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if me != 0 and os.stat(f"/proc/{name}").st_uid != me:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()  # empty for a zombie: it is dead already
        except OSError:
            continue  # gone, or not readable by us (then not killable either)
        if token in env.split(b"\0"):
            found.append(int(name))
    return found


def kill_run(pid: int, start: int) -> list[int]:
    """SIGKILL the run's processes until none is left (a fork during a pass carries the token: the next pass
    finds it); the pids killed."""
    killed: list[int] = []
    for _ in range(100):
        found = [p for p in processes_of_run(pid, start) if p != os.getpid()]
        if not found:
            break
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                continue
            if p not in killed:
                killed.append(p)
        time.sleep(0.005)
    return killed


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
