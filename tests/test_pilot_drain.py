"""A pilot's drain in process: the real WorkerService and JobRunner on the shipped FakeBackend, an in-memory sink,
real timers. Which running jobs finish and which are handed back, against the deadline; the same path runs on
the real Slurm in test_slurm_handback.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from support.jobs import make_job

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.hpc.handback import PREEMPTED, PilotDrain
from sandbox_runner.hpc.walltime import Walltime, ask_scheduler, parse_kill_wait
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, capture_events
from sandbox_runner.worker.delivery import TaskInfo
from sandbox_runner.worker.service import WorkerService


def _sleeps(seconds: float) -> Any:
    def script(spec: ContainerSpec, io: JobIO) -> int:
        return 143 if io.cancel.wait(seconds) else 0

    return script


def _pilot(tmp_path: Path, backend: FakeBackend, *, end_in: float, kill_wait: float = 30.0,
           ) -> tuple[WorkerService, PilotDrain, CapturedEvents]:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "SANDBOX_RUNNER_BACKEND": "fake",
                              "SANDBOX_RUNNER_DRAIN_THRESHOLD": "1", "SANDBOX_RUNNER_DRAIN_WINDOW": "100",
                              "SANDBOX_RUNNER_STOP_GRACE": "0"}, min_free_percent=0.0,
                             worker_name="celery@q-slurm7.01.h")
    emitter, sink = capture_events(settings.worker_name)
    walltime = Walltime(time.time() + end_in, grace=1.0, pilot="slurm:7", kill_wait=kill_wait)
    service = WorkerService(settings, emitter, None,
                            backend_for=lambda s, spec: backend, walltime=walltime)
    service.pilot = PilotDrain(service, walltime, settings.stop_grace)
    return service, service.pilot, sink


def _job(limit: float | None) -> dict[str, Any]:
    job = make_job("/run.sh")
    for key in ("time_limit", "soft_time_limit"):
        job["job_info"].pop(key)
    if limit is not None:
        job["job_info"]["time_limit"] = limit
    return job


class _Run(threading.Thread):
    def __init__(self, service: WorkerService, job: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.service, self.job = service, job
        self.result: Any = "not returned"
        self.start()

    def run(self) -> None:
        self.result = self.service.run_task(TaskInfo(self.job["task_id"]), self.job)


def _statuses(sink: CapturedEvents, task_id: str) -> list[str]:
    return [d["status"] for d in sink.docs() if d.get("resource") == "job" and d["uuid"] == task_id]


def _wait_started(sink: CapturedEvents, *jobs: dict[str, Any]) -> None:
    deadline = time.monotonic() + 10
    while not all("job-started" in _statuses(sink, job["task_id"]) for job in jobs):
        assert time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.01)


def test_a_job_whose_limit_ends_after_the_deadline_is_handed_back_at_once_and_one_that_fits_finishes(
        tmp_path: Path) -> None:
    service, pilot, sink = _pilot(tmp_path, FakeBackend(script=_sleeps(2.0)), end_in=60)
    # admitted (57 s fits the 60 s less the 1 s grace), but ends after the cutoff: 60 s less the 5 s margin
    fits, too_long = _job(limit=20), _job(limit=57)
    runs = [_Run(service, fits), _Run(service, too_long)]
    _wait_started(sink, fits, too_long)
    t0 = time.monotonic()
    pilot.at_walltime("walltime warning")
    runs[1].join(10)
    assert runs[1].result is None and time.monotonic() - t0 < 1.0  # back to the broker, without waiting
    assert runs[0].is_alive()
    runs[0].join(10)
    assert _statuses(sink, too_long["task_id"]) == ["job-started", PREEMPTED]
    doc = [d for d in sink.docs() if d.get("uuid") == too_long["task_id"]][-1]
    assert doc["error"].startswith("preempted: pilot slurm:7 ends in") and "(57s)" in doc["error"]
    assert runs[0].result["status"] == "job-completed"
    assert _statuses(sink, fits["task_id"]) == ["job-started", "job-completed"]
    events = [d for d in sink.docs() if d.get("type") == "pilot" and d.get("status") == "preempted"]
    assert [e["event"]["task_id"] for e in events] == [too_long["task_id"]]
    # no failure counted (threshold 1 would have tripped the job-drain guard), no new job taken
    assert not service.drain.tripped and service.drain.count == 0
    late = _job(limit=None)
    assert service.run_task(TaskInfo(late["task_id"]), late) is None and _statuses(sink, late["task_id"]) == []
    assert not list((tmp_path / "work").glob("jobs/**/.running"))


def test_a_job_without_a_limit_runs_until_the_cutoff_then_is_handed_back(tmp_path: Path) -> None:
    # deadline 5.5 s away, stop grace 0 + report margin 5 s: cut off ~0.5 s after the drain begins
    service, pilot, sink = _pilot(tmp_path, FakeBackend(script=_sleeps(30)), end_in=5.5)
    job = _job(limit=None)
    run = _Run(service, job)
    _wait_started(sink, job)
    t0 = time.monotonic()
    pilot.at_walltime("walltime warning")
    time.sleep(0.2)
    assert run.is_alive()  # not stopped at once: it might have finished in time
    run.join(10)
    assert run.result is None and 0.2 < time.monotonic() - t0 < 3
    assert _statuses(sink, job["task_id"]) == ["job-started", PREEMPTED]
    assert "it has no time limit" in [d for d in sink.docs() if d.get("uuid") == job["task_id"]][-1]["error"]


def test_term_brings_the_deadline_to_the_kill_and_a_later_warning_cannot_push_it_back(tmp_path: Path) -> None:
    service, pilot, sink = _pilot(tmp_path, FakeBackend(script=_sleeps(30)), end_in=3600, kill_wait=30)
    job = _job(limit=600)  # fits the allocation, not the 30 s before scancel's KILL
    run = _Run(service, job)
    _wait_started(sink, job)
    deadline = pilot.on_term()
    assert deadline is not None and abs(deadline - (time.time() + 30)) < 1
    assert pilot.at_walltime("walltime warning") == deadline  # the earlier deadline stays
    run.join(10)
    assert run.result is None and _statuses(sink, job["task_id"]) == ["job-started", PREEMPTED]
    assert next(d["event"]["reason"] for d in sink.docs() if d.get("type") == "pilot").startswith(
        "the pilot is being cancelled")


def test_a_job_that_ended_on_its_own_is_not_handed_back(tmp_path: Path) -> None:
    _service, pilot, _ = _pilot(tmp_path, FakeBackend(), end_in=60)
    assert not pilot.handed_back("t1", "job-completed")
    pilot._preempted.add("t1")
    assert not pilot.handed_back("t1", "job-completed") and pilot.handed_back("t1", PREEMPTED)


def test_pilot_facts_from_the_scheduler() -> None:
    assert parse_kill_wait("AuthType = auth/munge\nKillWait                = 45 sec\n") == 45
    assert parse_kill_wait("KillWait = (null)") is None and parse_kill_wait("") is None
    pbs = ask_scheduler({"PBS_JOBID": "1234.pbs-server", "SANDBOX_RUNNER_PILOT_END": "1800000000",
                         "SANDBOX_RUNNER_PILOT_KILL_WAIT": "20"}, 60)
    assert (pbs.pilot, pbs.end, pbs.kill_wait, pbs.grace) == ("pbs:1234", 1_800_000_000, 20, 60)
    assert ask_scheduler({}, 60) == Walltime()


def test_the_pilot_stops_when_a_handed_back_job_comes_round_with_nothing_run_since() -> None:
    from sandbox_runner.hpc.admission import WalltimeGate

    stops: list[bool] = []
    gate = WalltimeGate(Walltime(time.time() + 100, grace=10, pilot="slurm:7"),
                        capture_events("h")[0], lambda: stops.append(True))
    long_job, short_job = {"job_info": {"time_limit": 600}}, {"job_info": {"time_limit": 30}}
    assert not gate.fits("long", None, long_job) and gate.refused("long") and not gate.refused("long")
    assert not gate.fits("other-long", None, long_job) and stops == []  # a different job: the queue goes on
    assert gate.fits("short", None, short_job) and not gate.refused("short")
    assert not gate.fits("long", None, long_job) and stops == []  # something ran since it was first seen
    assert not gate.fits("long", None, long_job) and stops == [True]  # round again, nothing run: give up
    assert gate.fits("x", 60, long_job)  # the message's own hard limit wins over job_info's
