"""The Slurm adapter: submit a pilot with ``sbatch``, list a queue's pilots with ``squeue``. Slurm's own error
text is what the user sees when it refuses."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from sandbox_runner.errors import SchedulerError
from sandbox_runner.hpc.pilot import PilotRequest


@dataclass(frozen=True)
class Pilot:
    job_id: str
    state: str  # squeue's long state: PENDING, RUNNING, COMPLETING, ...


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SchedulerError(f"{argv[0]} not found: is Slurm installed here? (make setup installs it)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{argv[0]} did not answer within 60s: is slurmctld up?") from None
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
        raise SchedulerError(f"{argv[0]} refused: {reason}")
    return proc.stdout


def submit(request: PilotRequest) -> str:
    """Submit the pilot; its Slurm job id."""
    out = _run(request.sbatch_argv(), stdin=request.script()).strip()
    job_id = out.split(";")[0]  # --parsable prints "<id>" or "<id>;<cluster>"
    if not job_id.isdigit():
        raise SchedulerError(f"sbatch printed no job id: {out!r}")
    return job_id


def pilots(request: PilotRequest) -> list[Pilot]:
    """This user's pilots for the request's queue, as squeue sees them."""
    out = _run(["squeue", "--me", "-h", "-n", request.job_name, "-o", "%i %T"])
    return [Pilot(*line.split(maxsplit=1)) for line in out.splitlines() if line.strip()]
