"""The Slurm adapter: submit a pilot with ``sbatch``, list a queue's pilots with ``squeue``. Slurm's own error
text is what the user sees when it refuses."""

from __future__ import annotations

from sandbox_runner.errors import SchedulerError
from sandbox_runner.hpc.pilot import PilotRequest
from sandbox_runner.hpc.scheduler import Pilot, run

__all__ = ["Pilot", "Slurm", "pilots", "submit"]


def submit(request: PilotRequest) -> str:
    """Submit the pilot; its Slurm job id."""
    try:
        out = run(request.sbatch_argv(), stdin=request.script()).strip()
    except SchedulerError as exc:
        if "not found" in str(exc):
            raise SchedulerError("sbatch not found: is Slurm installed here? (make setup installs it)") from None
        raise
    job_id = out.split(";")[0]  # --parsable prints "<id>" or "<id>;<cluster>"
    if not job_id.isdigit():
        raise SchedulerError(f"sbatch printed no job id: {out!r}")
    return job_id


def pilots(request: PilotRequest) -> list[Pilot]:
    """This user's pilots for the request's queue, as squeue sees them."""
    out = run(["squeue", "--me", "-h", "-n", request.job_name, "-o", "%i %T"])
    return [Pilot(*line.split(maxsplit=1)) for line in out.splitlines() if line.strip()]


class Slurm:
    name = "slurm"

    def submit_argv(self, request: PilotRequest) -> list[str]:
        return request.sbatch_argv()

    def script(self, request: PilotRequest) -> str:
        return request.script()

    def submit(self, request: PilotRequest) -> str:
        return submit(request)

    def pilots(self, request: PilotRequest) -> list[Pilot]:
        return pilots(request)
