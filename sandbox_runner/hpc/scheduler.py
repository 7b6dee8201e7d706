"""The one interface a batch scheduler is used through: a pilot's submit command and script, submitting it, and
listing a queue's pilots. Slurm (hpc/slurm.py) and PBS (hpc/pbs.py) implement it; ``submit``, ``drain`` and
``autoscale`` know nothing else of either."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Protocol

from sandbox_runner.errors import ConfigError, SchedulerError
from sandbox_runner.hpc.pilot import PilotRequest


@dataclass(frozen=True)
class Pilot:
    job_id: str
    state: str  # Slurm's long state names: PENDING, RUNNING, COMPLETING, ... (PBS's are mapped onto them)


class Scheduler(Protocol):
    #: the word in the workers' names (``celery@<queue>-<name><jobid>.<NN>.<host>``) and in ``pilot`` events
    name: str

    def submit_argv(self, request: PilotRequest) -> list[str]:
        """The submit command (the script goes to its stdin)."""
        ...

    def script(self, request: PilotRequest) -> str:
        ...

    def submit(self, request: PilotRequest) -> str:
        """Submit the pilot; its job id as the scheduler prints it."""
        ...

    def pilots(self, request: PilotRequest) -> list[Pilot]:
        """This user's pilots for the request's queue."""
        ...


def run(argv: list[str], stdin: str | None = None) -> str:
    """A scheduler command's stdout; its own error text when it refuses."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SchedulerError(f"{argv[0]} not found: is the scheduler's client installed here?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{argv[0]} did not answer within 60s: is the scheduler's server up?") from None
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
        raise SchedulerError(f"{argv[0]} refused: {reason}")
    return proc.stdout


def scheduler_for(name: str) -> Scheduler:
    if name == "slurm":
        from sandbox_runner.hpc.slurm import Slurm

        return Slurm()
    if name == "pbs":
        from sandbox_runner.hpc.pbs import PBS

        return PBS()
    raise ConfigError(f"scheduler {name!r} is not supported (slurm, pbs)", field="scheduler")
