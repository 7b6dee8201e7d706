"""A *pilot*: one batch job whose allocation runs our Celery workers until its walltime ends.

The script is plain bash so an operator can read what will run (``slurm submit --dry-run`` prints it). Inside the
allocation one ``srun`` step starts ``workers_per_node`` workers on every node, each named
``celery@<queue>-slurm<jobid>.<NN>.<host>``: the naming convention of ``sandbox-runner worker`` with the Slurm job
id in the program part, so events, ``sandbox-runner workers`` and a job tracker tell pilots apart.

Slurm sends the batch shell TERM ``grace`` seconds before the walltime (``--signal=B:TERM@<grace>``) and on
``scancel --batch --signal=TERM``; the shell then asks the pilot's workers, over the broker, to drain
(hpc/handback.py): each stops taking jobs, lets a running job that fits before the allocation's end finish, and
stops and hands back to the broker one that does not. A plain ``scancel`` (and the walltime itself) sends TERM to
every process of the job and KILL ``KillWait`` seconds later: the workers take that TERM as a drain against the
KILL. PBS gets the same pilot from hpc/pbs.py.

No secrets are written into the script: settings reach the workers through the submitting environment (sbatch's
``--export=ALL``, given on the command line so a site's ``SBATCH_EXPORT`` cannot take it away), as they reach
``sandbox-runner worker``.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_runner.errors import ConfigError
from sandbox_runner.worker.naming import program_for

# sbatch's --time: minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_WALLTIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_walltime(text: str) -> int:
    """Seconds in an sbatch ``--time`` value (``30``, ``1:30:00``, ``2-12``, ...)."""
    m = _WALLTIME.match(text.strip())
    if m is None:
        raise ConfigError(f"--time {text!r} is not in sbatch's format (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]])",
                          field="time")
    a, b, c = (int(m[g]) if m[g] is not None else None for g in "abc")
    if m["d"] is not None:  # D-H, D-H:M, D-H:M:S
        seconds = int(m["d"]) * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = (a or 0) * 3600 + (b or 0) * 60 + c
    elif b is not None:  # M:S
        seconds = (a or 0) * 60 + b
    else:  # M
        seconds = (a or 0) * 60
    if seconds <= 0:
        raise ConfigError(f"--time {text!r} gives no time at all", field="time")
    return seconds


@dataclass(frozen=True)
class PilotRequest:
    """What one ``slurm submit`` asks for."""

    queue: str
    time: str = "1:00:00"
    nodes: int = 1
    workers_per_node: int = 1
    concurrency: int = 1
    partition: str | None = None
    account: str | None = None
    grace: int = 120
    log_dir: Path | None = None
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)  # extra submit arguments (sbatch's or qsub's)
    #: PBS only: the site's kill_delay, seconds from qdel's TERM to its KILL (PBS Pro's default 10)
    kill_delay: int = 10
    python: str = sys.executable

    def __post_init__(self) -> None:
        program_for(self.queue)  # refuses a queue that gives no worker name, before anything is submitted
        for name in ("nodes", "workers_per_node", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}",
                                  field=name)
        walltime = parse_walltime(self.time)
        if not 0 <= self.grace < walltime:
            raise ConfigError(f"--grace {self.grace}s must be shorter than the walltime ({walltime}s)",
                              field="grace")

    @property
    def job_name(self) -> str:
        """The Slurm job name: how ``autoscale`` and ``squeue -n`` find the pilots of a queue."""
        return f"sr-pilot-{program_for(self.queue)}"

    def sbatch_argv(self) -> list[str]:
        # --export=ALL on the line: the settings reach the workers through the environment, and a site's (or
        # user's) SBATCH_EXPORT=NONE would otherwise win -- then not even bash is found and no worker starts
        argv = ["sbatch", "--parsable", "--export=ALL", "--job-name", self.job_name, "--time", self.time,
                "--nodes", str(self.nodes),
                "--ntasks-per-node", str(self.workers_per_node), "--cpus-per-task", str(self.concurrency),
                f"--signal=B:TERM@{self.grace}"]
        if self.partition:
            argv += ["--partition", self.partition]
        if self.account:
            argv += ["--account", self.account]
        if self.log_dir is not None:
            argv += ["--output", str(self.log_dir / f"{self.job_name}-%j.out")]
        return argv + list(self.sbatch_args)

    def worker_command(self) -> str:
        """The shell words that start one of the pilot's workers (its ``-n`` name is the scheduler's to add)."""
        return " ".join(shlex.quote(a) for a in [
            self.python, "-m", "sandbox_runner.cli", "worker", "-Q", self.queue, "-c", str(self.concurrency)])

    def drain_command(self, scheduler: str) -> str:
        """The shell words the pilot's TERM trap runs: ``sandbox-runner <scheduler> drain -Q <queue>``."""
        return " ".join(shlex.quote(a) for a in [
            self.python, "-m", "sandbox_runner.cli", scheduler, "drain", "-Q", self.queue])

    def script(self) -> str:
        program = program_for(self.queue)
        worker = self.worker_command()
        # Single quotes: the name is expanded by each task's own shell, where SLURM_LOCALID is that task's.
        task = (f'exec {worker} -n "celery@{program}-slurm${{SLURM_JOB_ID}}.$(printf %02d $((SLURM_LOCALID + 1)))'
                '.%h"')
        drain = self.drain_command("slurm")
        return "\n".join([
            "#!/bin/bash",
            f"# sandbox-runner pilot for queue {self.queue}: {self.nodes} node(s) x {self.workers_per_node} "
            f"worker(s), -c {self.concurrency}, walltime {self.time}, drain {self.grace}s before the end.",
            "set -u",
            f"export SANDBOX_RUNNER_PILOT_GRACE={self.grace}",
            f"srun --export=ALL --kill-on-bad-exit=0 --ntasks-per-node={self.workers_per_node} "
            f"bash -c {shlex.quote(task)} &",
            "step=$!",
            # The walltime warning and `scancel --batch --signal=TERM` come to this shell only (B:): ask the
            # pilot's workers, through the broker, to drain against the allocation's end (the workers run on
            # every node; the broker reaches them all). `wait` returns early on a trapped signal: wait again.
            f'trap \'echo "pilot ${{SLURM_JOB_ID}}: draining"; {drain} --pilot "${{SLURM_JOB_ID}}"\' TERM',
            'wait "$step"',
            'while kill -0 "$step" 2>/dev/null; do wait "$step"; done',
            # the step's own status (a wait cut short by the trap said 143): a pilot whose workers failed to
            # start or died must not be recorded COMPLETED 0:0; a drain or a give-up ends them with 0
            'wait "$step"; rc=$?',
            'echo "pilot ${SLURM_JOB_ID}: workers stopped (exit $rc)"',
            'exit "$rc"',
            "",
        ])


def worker_pattern(queue: str, pilot_id: str, scheduler: str = "slurm") -> str:
    """A glob matching the names of every worker of one pilot, on any node (a PBS id without its server)."""
    return f"celery@{program_for(queue)}-{scheduler}{pilot_id.split('.')[0]}.*"
