"""The logic of pilots, without a scheduler: sbatch's time format, the walltime arithmetic, the script."""

from __future__ import annotations

import time

import pytest

from sandbox_runner.errors import ConfigError
from sandbox_runner.hpc.pilot import PilotRequest, parse_walltime, worker_pattern
from sandbox_runner.hpc.walltime import Walltime, job_time_limit, parse_end


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), ("1:30", 90), ("1:00:00", 3600), ("2-0", 172800), ("1-2:03", 93780), ("1-2:03:04", 93784),
])
def test_sbatch_time_formats(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "0", "1:2:3:4", "-5", "a-1"])
def test_bad_times_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--time"):
        parse_walltime(text)


def test_request_checks_before_anything_is_submitted() -> None:
    with pytest.raises(ConfigError, match="grace"):
        PilotRequest("q", time="1", grace=60)
    with pytest.raises(ConfigError, match="nodes"):
        PilotRequest("q", nodes=0)
    with pytest.raises(ConfigError, match="queue"):
        PilotRequest("...")


def test_the_script_names_workers_by_pilot_and_asks_for_the_warning() -> None:
    req = PilotRequest("ops.big-q", time="2:00:00", workers_per_node=3, concurrency=2, grace=90, partition="p",
                       account="a", sbatch_args=("--qos=x",))
    argv = req.sbatch_argv()
    assert "--signal=B:TERM@90" in argv and argv[argv.index("--partition") + 1] == "p" and argv[-1] == "--qos=x"
    script = req.script()
    assert "celery@ops-big-q-slurm${SLURM_JOB_ID}." in script and "--ntasks-per-node=3" in script
    assert "SANDBOX_RUNNER_PILOT_GRACE=90" in script and "slurm drain -Q ops.big-q" in script
    assert worker_pattern("ops.big-q", "42") == "celery@ops-big-q-slurm42.*"


def test_walltime_admits_what_fits_before_the_grace() -> None:
    now = 1000.0
    wt = Walltime(end=now + 600, grace=120)
    assert wt.left(now) == 480
    assert wt.admits(480, now) and not wt.admits(481, now)
    assert wt.admits(None, now)  # a job without a limit is not refused on a guess
    assert Walltime().admits(10**9) and Walltime().left() is None


def test_squeue_end_times() -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1_800_000_000))
    assert parse_end(stamp) == 1_800_000_000
    assert parse_end("Unknown") is None and parse_end("N/A") is None


def test_job_time_limit_from_task_or_job_info() -> None:
    assert job_time_limit(300, {"job_info": {"time_limit": 60}}) == 300
    assert job_time_limit(None, {"job_info": {"time_limit": 60}}) == 60
    assert job_time_limit(None, {"job_info": {"time_limit": True}}) is None
    assert job_time_limit(None, {"job_info": "damaged"}) is None


def test_autoscale_decisions() -> None:
    from sandbox_runner.hpc.autoscale import decide
    from sandbox_runner.hpc.slurm import Pilot

    running, pending = Pilot("1", "RUNNING"), Pilot("2", "PENDING")
    assert decide(0, [], 4, 3).submit == 0
    assert decide(5, [], 4, 3).submit == 2  # ceil(5 / 4)
    assert decide(100, [], 4, 3).submit == 3  # the cap
    assert decide(100, [running], 4, 3).submit == 2
    assert decide(100, [running, pending], 4, 3).submit == 0  # never more while one is pending
    assert "cap" in decide(9, [running, running], 4, 2).reason
