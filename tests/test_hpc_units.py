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


def test_autoscale_submits_no_pilot_for_jobs_its_walltime_cannot_fit() -> None:
    """A job pilots handed back for walltime (limit 600 s) and a request of -t 3:00 --grace 30 (150 s): the old
    decide submitted a pilot on every step, each handed the job back, forever."""
    from sandbox_runner.hpc.autoscale import decide
    from sandbox_runner.hpc.slurm import Pilot

    short = PilotRequest(queue="q", time="3:00", grace=30)
    nothing = decide(1, [], 1, 1, misfits=[600], request=short)
    assert nothing.submit == 0
    assert nothing.reason == ("the waiting jobs need 600 s; a pilot with -t 3:00 and --grace 30 gives 150 s: "
                              "raise --time")
    # several misfits of different lengths: the range
    assert "need 300-600 s" in decide(2, [], 1, 3, misfits=[600, 300], request=short).reason
    # a misfit that a longer pilot fits does not count: raising --time submits at once
    longer = PilotRequest(queue="q", time="20:00", grace=30)
    assert decide(1, [], 1, 1, misfits=[600], request=longer).submit == 1
    # only the others get pilots: 3 waiting, 1 cannot fit -> 2 jobs, 1 slot each
    mixed = decide(3, [], 1, 5, misfits=[600], request=short)
    assert mixed.submit == 2 and "2 job(s) waiting" in mixed.reason and "raise --time" in mixed.reason
    # a misfit recorded by a pilot whose walltime left was shorter than this request gives: not a misfit here
    assert decide(1, [], 1, 1, misfits=[100], request=short).submit == 1
    # pending pilots and the cap still come first; a running pilot does not change the misfits' answer
    assert "pending" in decide(1, [Pilot("2", "PENDING")], 1, 3, misfits=[600], request=short).reason
    assert decide(1, [Pilot("1", "RUNNING")], 1, 3, misfits=[600], request=short).submit == 0
    # without a request or misfits: as before
    assert decide(1, [], 1, 1, misfits=[600]).submit == 1 and decide(1, [], 1, 1, request=short).submit == 1


def test_autoscaler_step_reads_the_misfits_and_says_why() -> None:
    from sandbox_runner.hpc.autoscale import Autoscaler
    from sandbox_runner.hpc.slurm import Pilot
    from sandbox_runner.testing import capture_events

    class Book:
        def __init__(self) -> None:
            self.forgotten: list[str] = []

        def limits(self, queue: str) -> list[float]:
            return [600.0] if queue == "q" else []

        def forget(self, queue: str) -> None:
            self.forgotten.append(queue)

    emitter, sink = capture_events("autoscale")
    book, submitted = Book(), list[PilotRequest]()
    depth: list[int] = [1]
    pilots: list[list[Pilot]] = [[]]
    scaler = Autoscaler(PilotRequest(queue="q", time="3:00", grace=30), 1, depth=lambda: depth[0],
                        pilots=lambda: pilots[0], submit=lambda r: submitted.append(r) or "9",
                        emitter=emitter, book=book)  # type: ignore[arg-type]
    decision = scaler.step()
    assert decision.submit == 0 and submitted == [] and "raise --time" in decision.reason
    event = sink.events("autoscale")[-1]["event"]
    assert event["reason"] == decision.reason and event["misfits"] == [600.0] and event["submitted"] == []
    depth[0], pilots[0] = 0, [Pilot("1", "RUNNING")]
    scaler.step()
    assert book.forgotten == []  # a running pilot may hold the job: keep the record
    pilots[0] = []
    scaler.step()
    assert book.forgotten == ["q"]
