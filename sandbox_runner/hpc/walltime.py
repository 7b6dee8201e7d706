"""When the allocation a worker runs in ends, and whether a job fits before then.

Slurm 22.05 sets no ``SLURM_JOB_END_TIME``, so a worker inside a pilot asks ``squeue`` once, at start, for its
job's end time (``%e``, the node's local time). Outside an allocation, or when Slurm cannot say, nothing is
limited: a worker never refuses work because a scheduler was unreachable.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sandbox_runner.events.documents import job_info_of
from sandbox_runner.units import limit_seconds

log = structlog.get_logger("sandbox_runner.hpc")


@dataclass(frozen=True)
class Walltime:
    """The allocation's end (epoch seconds; None: not in one, or unknown), the grace kept before it, and the
    scheduler's seconds between its TERM and its KILL when it ends or cancels the job (Slurm's ``KillWait``,
    PBS's ``kill_delay``)."""

    end: float | None = None
    grace: float = 0.0
    pilot: str | None = None
    kill_wait: float = 30.0

    def left(self, now: float | None = None) -> float | None:
        """Seconds a job may still take here: to the end, minus the grace."""
        if self.end is None:
            return None
        return self.end - self.grace - (time.time() if now is None else now)

    def admits(self, seconds: float | None, now: float | None = None) -> bool:
        left = self.left(now)
        return left is None or seconds is None or seconds <= left


def parse_end(text: str) -> float | None:
    """squeue's ``%e`` (``2026-12-03T10:15:00``, local time) as epoch seconds; None for Unknown, N/A, NONE."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def ask_slurm(env: Mapping[str, str], grace: float) -> Walltime:
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        return Walltime()
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                              timeout=30, check=False)
        end = parse_end(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc, end = None, None
        log.warning("walltime-unknown", pilot=job_id, reason=str(exc))
    if end is None and proc is not None:
        log.warning("walltime-unknown", pilot=job_id, reason=(proc.stderr or proc.stdout).strip())
    return Walltime(end, grace, f"slurm:{job_id}", kill_wait=slurm_kill_wait())


#: Slurm's default KillWait, used when ``scontrol`` cannot say
_SLURM_KILL_WAIT = 30.0


def parse_kill_wait(config: str) -> float | None:
    """``KillWait = 30 sec`` from ``scontrol show config``."""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "KillWait":
            number = value.split()[0] if value.split() else ""
            return float(number) if number.isdigit() else None
    return None


def slurm_kill_wait() -> float:
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return _SLURM_KILL_WAIT
    found = parse_kill_wait(proc.stdout) if proc.returncode == 0 else None
    return _SLURM_KILL_WAIT if found is None else found


def from_pilot_env(env: Mapping[str, str], grace: float) -> Walltime:
    """A pilot whose scheduler cannot be asked for its end (PBS): its script exports the end it computed at
    start (``SANDBOX_RUNNER_PILOT_END``, epoch seconds) and the scheduler's kill delay
    (``SANDBOX_RUNNER_PILOT_KILL_WAIT``). Internal to the pilot script, like ``SLURM_JOB_ID``."""
    job_id = env.get("PBS_JOBID", "").split(".")[0]
    try:
        end = float(env["SANDBOX_RUNNER_PILOT_END"])
    except (KeyError, ValueError):
        end = None
    try:
        kill_wait = float(env.get("SANDBOX_RUNNER_PILOT_KILL_WAIT", "10"))
    except ValueError:
        kill_wait = 10.0
    return Walltime(end, grace, f"pbs:{job_id}" if job_id else None, kill_wait=kill_wait)


def ask_scheduler(env: Mapping[str, str], grace: float) -> Walltime:
    """The allocation this worker runs in, whichever scheduler gave it; nothing limited outside one."""
    if env.get("SLURM_JOB_ID"):
        return ask_slurm(env, grace)
    if env.get("PBS_JOBID"):
        return from_pilot_env(env, grace)
    return Walltime()


def job_time_limit(hard_limit: float | None, job: Mapping[str, Any]) -> float | None:
    """The longest the job may run: the task's hard limit, else job_info's (HySDS puts it in both)."""
    return limit_seconds(hard_limit) or limit_seconds(job_info_of(job).get("time_limit"))
