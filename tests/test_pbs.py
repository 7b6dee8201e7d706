"""The PBS pilot (hpc/pbs.py). No PBS can be installed here, so the script ``pbs submit --dry-run`` prints is
checked for its directives, and then *run* under bash with stand-ins for what PBS provides: ``pbsdsh`` starts the
task once per vnode with ``PBS_VNODENUM`` set, the "python" records how it was called. What is real: the
script's own shell logic (worker names from ``PBS_JOBID``, the exported end, its walltime timer, the drain trap,
waiting for the workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox_runner.cli.hpc import slurm_submit
from sandbox_runner.cli.main import _parser
from sandbox_runner.hpc.pbs import PBS, pbs_walltime
from sandbox_runner.hpc.pilot import PilotRequest, worker_pattern
from sandbox_runner.hpc.scheduler import scheduler_for
from sandbox_runner.settings import load_settings

# A worker writes its argv and pid, then waits for TERM; "drain" TERMs the workers, as the broadcast would
# make them stop.
PYTHON_STUB = """#!/bin/bash
if [[ " $* " == *" worker "* ]]; then
    echo "worker vnode=$PBS_VNODENUM end=$SANDBOX_RUNNER_PILOT_END kill=$SANDBOX_RUNNER_PILOT_KILL_WAIT $*" >>"$LOG"
    echo $$ >"$RUN/worker-$PBS_VNODENUM.pid"
    trap 'echo "worker $PBS_VNODENUM stopped" >>"$LOG"; exit 0' TERM
    while :; do sleep 0.05; done
fi
echo "drain $*" >>"$LOG"
for f in "$RUN"/worker-*.pid; do kill -TERM "$(cat "$f")"; done
"""
PBSDSH_STUB = """#!/bin/bash
[[ $1 == -- ]] && shift
for vnode in $(seq 0 $((VNODES - 1))); do PBS_VNODENUM=$vnode "$@" & done
wait
"""


def test_directives_and_names(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # parsed as the command line is, without main()'s logging set-up (global; it would keep pytest's stdout)
    args = _parser().parse_args([
        "pbs", "submit", "-Q", "ops.q", "-t", "2:30:00", "-N", "3", "-w", "2", "-c", "4", "-p", "workq", "-A", "acct7",
        "--grace", "300", "--kill-delay", "25", "--log-dir", str(tmp_path), "--qsub-arg=-W",
        "--qsub-arg=group_list=g1", "--dry-run"])
    code = slurm_submit(args, load_settings({}))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("# qsub -W group_list=g1 <<'EOF'\n#!/bin/bash\n")
    directives = [line for line in out.splitlines() if line.startswith("#PBS ")]
    assert directives == [
        "#PBS -N sr-pilot-ops-q", "#PBS -l walltime=02:30:00", "#PBS -l select=3:ncpus=8:mpiprocs=2",
        "#PBS -l place=scatter", "#PBS -V", "#PBS -j oe", "#PBS -q workq", "#PBS -A acct7", f"#PBS -o {tmp_path}/"]
    assert "export SANDBOX_RUNNER_PILOT_GRACE=300" in out and "SANDBOX_RUNNER_PILOT_KILL_WAIT=25" in out
    assert "( sleep 8700 & s=$!;" in out and "kill -TERM $$ ) &" in out  # 2.5 h less the grace
    assert 'celery@ops-q-pbs${PBS_JOBID%%.*}.$(printf %02d $((PBS_VNODENUM + 1))).%h' in out
    assert "pbs drain -Q ops.q" in out and "--signal" not in out and "srun" not in out


def test_walltime_and_adapter() -> None:
    assert pbs_walltime("30") == "00:30:00" and pbs_walltime("1-2:03:04") == "26:03:04"
    assert scheduler_for("pbs").name == "pbs" and scheduler_for("slurm").name == "slurm"
    assert worker_pattern("ops.q", "1234.pbs-server", "pbs") == "celery@ops-q-pbs1234.*"
    with pytest.raises(Exception, match="scheduler 'lsf' is not supported"):
        scheduler_for("lsf")


def test_the_script_runs_workers_named_by_the_job_and_drains_them_before_the_walltime(tmp_path: Path) -> None:
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    run.mkdir()
    for name, text in (("python", PYTHON_STUB), ("pbsdsh", PBSDSH_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # walltime 4 s, grace 2 s: the script's own timer TERMs it after 2 s
    request = PilotRequest("ops.q", time="0:04", workers_per_node=2, grace=2, python=str(bin_dir / "python"))
    script = tmp_path / "pilot.sh"
    script.write_text(PBS().script(request))
    log = run / "log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PBS_JOBID": "4321.pbs-server", "VNODES": "2",
           "LOG": str(log), "RUN": str(run)}
    t0 = time.time()
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    took = time.time() - t0
    assert proc.returncode == 0, proc.stderr
    assert "pilot 4321: draining" in proc.stdout and "pilot 4321: workers stopped (exit 0)" in proc.stdout
    assert 1.5 < took < 3.5, took  # drained at the grace, not at the walltime
    lines = log.read_text().splitlines()
    workers = sorted(line for line in lines if line.startswith("worker vnode="))
    assert len(workers) == 2, lines
    for n, line in enumerate(workers):
        assert f"-n celery@ops-q-pbs4321.0{n + 1}.%h" in line and "worker -Q ops.q -c 1" in line, line
        end = float(line.split("end=")[1].split()[0])
        assert abs(end - (t0 + 4)) < 2 and " kill=10 " in line
    assert any(line.startswith("drain ") and "pbs drain -Q ops.q --pilot 4321" in line for line in lines), lines
    assert sorted(line for line in lines if line.endswith("stopped")) == ["worker 0 stopped", "worker 1 stopped"]


def test_qdel_term_to_the_batch_shell_drains_too(tmp_path: Path) -> None:
    """qdel TERMs the job's processes: the batch shell's trap drains at once, well before the walltime."""
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    run.mkdir()
    for name, text in (("python", PYTHON_STUB), ("pbsdsh", PBSDSH_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    request = PilotRequest("ops.q", time="10", grace=60, python=str(bin_dir / "python"))
    script = tmp_path / "pilot.sh"
    script.write_text(PBS().script(request))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PBS_JOBID": "77.srv", "VNODES": "1",
           "LOG": str(run / "log"), "RUN": str(run)}
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (run / "worker-0.pid").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the worker never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "pilot 77: draining" in out and "workers stopped" in out, out
    assert "worker 0 stopped" in (run / "log").read_text()
