"""The PBS adapter (PBS Pro / OpenPBS): the same pilot as Slurm's, as a ``qsub`` script. Untested on a real PBS
(none can be installed on our machines): tests check the script it writes.

What differs from Slurm, and what the script does about it:

* One worker per ``mpiprocs`` slot on every chunk: ``-l select=<nodes>:ncpus=<w*c>:mpiprocs=<w>`` with
  ``-l place=scatter`` (one chunk per node), started by ``pbsdsh`` (PBS's task manager, so the workers belong to
  the job on every node). Worker ``NN`` is the task's ``PBS_VNODENUM`` + 1; names are
  ``celery@<queue>-pbs<jobid>.<NN>.<host>``, the job id without its ``.server`` suffix.
* PBS sends no warning before the walltime (there is no ``--signal=B:TERM@grace``): the script starts its own
  timer, which TERMs the batch shell ``grace`` seconds before the end; the same trap as Slurm's then drains.
* No scheduler command tells a worker when the allocation ends: the script exports the end it computes at start
  (``SANDBOX_RUNNER_PILOT_END``) and the site's ``kill_delay`` (``SANDBOX_RUNNER_PILOT_KILL_WAIT``).
* ``qdel`` (and the walltime itself) sends TERM to every process of the job and KILL ``kill_delay`` seconds later
  (PBS Pro's default: 10): each worker takes that TERM as a drain, as under a plain ``scancel``. A job only gets
  handed back if its container stops within that time: keep ``SANDBOX_RUNNER_STOP_GRACE`` below ``kill_delay``.
"""

from __future__ import annotations

import shlex

from sandbox_runner.hpc.pilot import PilotRequest, parse_walltime
from sandbox_runner.hpc.scheduler import Pilot, run
from sandbox_runner.worker.naming import program_for

#: PBS job states (qselect -s) as the autoscaler reads them: queued, held, waiting -> pending; running, begun
#: (array), exiting -> running
_STATES = {"PENDING": "QHW", "RUNNING": "RBE"}


def pbs_walltime(text: str) -> str:
    """sbatch's ``--time`` formats as PBS's ``HH:MM:SS``."""
    seconds = parse_walltime(text)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PBS:
    name = "pbs"

    def submit_argv(self, request: PilotRequest) -> list[str]:
        return ["qsub", *request.sbatch_args]  # the directives are in the script

    def script(self, request: PilotRequest) -> str:
        program = program_for(request.queue)
        walltime = parse_walltime(request.time)
        worker = request.worker_command()
        # single quotes: expanded by each task's own shell, where PBS_VNODENUM is that task's
        task = (f'exec {worker} -n "celery@{program}-pbs${{PBS_JOBID%%.*}}.$(printf %02d $((PBS_VNODENUM + 1)))'
                '.%h"')
        drain = request.drain_command("pbs")
        directives = [
            f"#PBS -N {request.job_name}",
            f"#PBS -l walltime={pbs_walltime(request.time)}",
            f"#PBS -l select={request.nodes}:ncpus={request.workers_per_node * request.concurrency}"
            f":mpiprocs={request.workers_per_node}",
            "#PBS -l place=scatter",
            "#PBS -V",  # the submitting environment (settings) reaches the workers, as sbatch's --export=ALL
            "#PBS -j oe",
        ]
        if request.partition:
            directives.append(f"#PBS -q {request.partition}")
        if request.account:
            directives.append(f"#PBS -A {request.account}")
        if request.log_dir is not None:
            directives.append(f"#PBS -o {request.log_dir}/")  # a directory: PBS names the file <name>.o<seq>
        return "\n".join([
            "#!/bin/bash",
            *directives,
            f"# sandbox-runner pilot for queue {request.queue}: {request.nodes} node(s) x {request.workers_per_node}"
            f" worker(s), -c {request.concurrency}, walltime {request.time}, drain {request.grace}s before the end.",
            "set -u",
            'id="${PBS_JOBID%%.*}"',
            f"export SANDBOX_RUNNER_PILOT_GRACE={request.grace}",
            f"export SANDBOX_RUNNER_PILOT_END=$(( $(date +%s) + {walltime} ))",
            f"export SANDBOX_RUNNER_PILOT_KILL_WAIT={request.kill_delay}",
            f"pbsdsh -- bash -c {shlex.quote(task)} &",
            "step=$!",
            # the walltime warning PBS does not send: TERM to this shell `grace` seconds before the end (the
            # timer's own sleep is ended with it, so nothing of the pilot outlives it)
            f"( sleep {walltime - request.grace} & s=$!; trap 'kill $s; exit 0' TERM; wait $s; kill -TERM $$ ) &",
            "timer=$!",
            f'trap \'echo "pilot ${{id}}: draining"; {drain} --pilot "${{id}}"\' TERM',
            'wait "$step"',
            'while kill -0 "$step" 2>/dev/null; do wait "$step"; done',
            'wait "$step"; rc=$?',  # the step's own status, as the Slurm pilot's
            'kill "$timer" 2>/dev/null',
            'echo "pilot ${id}: workers stopped (exit $rc)"',
            'exit "$rc"',
            "",
        ])

    def submit(self, request: PilotRequest) -> str:
        return run(self.submit_argv(request), stdin=self.script(request)).strip()

    def pilots(self, request: PilotRequest) -> list[Pilot]:
        found: list[Pilot] = []
        for state, codes in _STATES.items():
            out = run(["qselect", "-u", _user(), "-N", request.job_name, "-s", codes])
            found += [Pilot(line.strip(), state) for line in out.splitlines() if line.strip()]
        return found


def _user() -> str:
    import getpass

    return getpass.getuser()
