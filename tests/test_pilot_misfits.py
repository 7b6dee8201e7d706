"""The record of jobs pilots handed back for walltime (hpc/misfits.py), on the real status Redis: a pilot's worker
writes it, any worker that admits the job clears it, and autoscale reads it to submit no pilot that cannot run
those jobs. Each test has a queue of its own on the shared Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.jobs import make_job

from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.hpc.admission import WalltimeGate
from sandbox_runner.hpc.autoscale import Autoscaler
from sandbox_runner.hpc.misfits import TTL, MisfitBook, misfit_key
from sandbox_runner.hpc.pilot import PilotRequest
from sandbox_runner.hpc.walltime import Walltime
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import capture_events
from sandbox_runner.worker.delivery import TaskInfo
from sandbox_runner.worker.service import WorkerService


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"sr-test-misfits-{uuid.uuid4().hex[:12]}"
    yield name
    redis.Redis.from_url(redis_url).delete(misfit_key(name))


def _job(limit: float) -> dict[str, Any]:
    job = make_job("/run.sh")
    job["job_info"].pop("soft_time_limit", None)
    job["job_info"]["time_limit"] = limit
    return job


def _worker(tmp_path: Path, redis_url: str, walltime: Walltime | None) -> WorkerService:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "SANDBOX_RUNNER_BACKEND": "fake",
                              "SANDBOX_RUNNER_REDIS_URL": redis_url, "SANDBOX_RUNNER_STOP_GRACE": "0"},
                             min_free_percent=0.0, worker_name="celery@q.01.h")
    backend = FakeBackend()
    return WorkerService(settings, capture_events(settings.worker_name)[0], None,
                         backend_for=lambda s, spec: backend, walltime=walltime)


def test_a_pilot_records_the_job_it_hands_back_and_the_worker_that_runs_it_clears_it(
        tmp_path: Path, redis_url: str, queue: str) -> None:
    r = redis.Redis.from_url(redis_url)
    job = _job(600)
    task = TaskInfo(job["task_id"], {"routing_key": queue, "exchange": ""})
    pilot = _worker(tmp_path / "p", redis_url, Walltime(time.time() + 180, grace=30, pilot="slurm:7"))
    assert pilot.run_task(task, dict(job)) is None  # handed back
    entry = json.loads(r.hget(misfit_key(queue), job["task_id"]) or b"{}")
    assert entry["limit"] == 600 and entry["pilot"] == "slurm:7" and 140 < entry["time_left"] <= 150
    assert abs(entry["at"] - time.time()) < 30
    assert TTL - 10 < r.ttl(misfit_key(queue)) <= TTL
    assert MisfitBook(redis_url).limits(queue) == [600.0]
    # a worker with no walltime runs it: the record goes
    big = _worker(tmp_path / "b", redis_url, None)
    result = big.run_task(task, dict(job))
    assert result is not None and result["status"] == "job-completed"
    assert r.hget(misfit_key(queue), job["task_id"]) is None


def test_autoscale_reads_the_record_from_redis(redis_url: str, queue: str) -> None:
    book = MisfitBook(redis_url)
    gate = WalltimeGate(Walltime(time.time() + 150, grace=30, pilot="slurm:8"), capture_events("p")[0], None, book)
    assert not gate.fits("long-1", None, {"job_info": {"time_limit": 600}, "delivery_info": {"routing_key": queue}})
    submitted: list[PilotRequest] = []
    emitter, sink = capture_events("autoscale")

    def scaler(time_: str) -> Autoscaler:
        return Autoscaler(PilotRequest(queue=queue, time=time_, grace=30), 1, depth=lambda: 1, pilots=lambda: [],
                          submit=lambda req: submitted.append(req) or "42", emitter=emitter, book=book)

    decision = scaler("3:00").step()
    assert (decision.submit, submitted) == (0, [])
    assert decision.reason == ("the waiting jobs need 600 s; a pilot with -t 3:00 and --grace 30 gives 150 s: "
                               "raise --time")
    assert sink.events("autoscale")[-1]["event"]["reason"] == decision.reason
    assert scaler("15:00").step().submit == 1  # raised --time: a pilot at once
    # the job admitted somewhere: it is no one's misfit, the short pilot is submitted again
    assert WalltimeGate(Walltime(), capture_events("b")[0], None, book).fits(
        "long-1", None, {"job_info": {"time_limit": 600}, "delivery_info": {"routing_key": queue}})
    assert book.limits(queue) == [] and scaler("3:00").step().submit == 1
    # nothing waiting, no pilot: the record goes
    gate.fits("long-2", None, {"job_info": {"time_limit": 600}, "delivery_info": {"routing_key": queue}})
    assert book.limits(queue) == [600.0]
    Autoscaler(PilotRequest(queue=queue, time="3:00", grace=30), 1, depth=lambda: 0, pilots=lambda: [],
               submit=lambda req: "x", emitter=emitter, book=book).step()
    assert not redis.Redis.from_url(redis_url).exists(misfit_key(queue))


def test_an_unreachable_redis_never_changes_admission(queue: str) -> None:
    book = MisfitBook("redis://127.0.0.1:1/0", timeout=0.5)
    gate = WalltimeGate(Walltime(time.time() + 100, grace=10, pilot="slurm:9"), capture_events("p")[0], None, book)
    long_job = {"job_info": {"time_limit": 600}, "delivery_info": {"routing_key": queue}}
    short_job = {"job_info": {"time_limit": 5}, "delivery_info": {"routing_key": queue}}
    assert not gate.fits("long", None, long_job) and gate.refused("long")
    t0 = time.monotonic()
    assert gate.fits("short", None, short_job)  # and Redis is left alone for a while after the error
    assert not gate.fits("long-2", None, long_job)
    assert time.monotonic() - t0 < 0.2
    assert book.limits(queue) == []
