"""The worker service and the runner's interrupt contract, in process: the shipped FakeBackend, an in-memory
sink, real timers and (for the fencing check) a real Redis. The same paths run for real in test_celery_worker.py."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from support.jobs import make_job

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.job.steps import registry
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, capture_events, fake_runner
from sandbox_runner.worker.delivery import TaskInfo
from sandbox_runner.worker.lease import LeaseGuard
from sandbox_runner.worker.service import WorkerService

TRIAGED: list[str] = []


def _record_triage(ctx: Any) -> None:
    TRIAGED.append(str(ctx.job["job_id"]))


@pytest.fixture(autouse=True)
def recorded_triage(monkeypatch: pytest.MonkeyPatch) -> None:
    TRIAGED.clear()
    monkeypatch.setitem(registry.BUILTINS, "triage", f"{__name__}:_record_triage")


def _waits_for_cancel(spec: ContainerSpec, io: JobIO) -> int:
    assert io.cancel.wait(30), "never cancelled"
    return 128 + signal.SIGTERM


def _service(tmp_path: Path, backend: FakeBackend,
             guard: LeaseGuard | None = None) -> tuple[WorkerService, CapturedEvents]:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "SANDBOX_RUNNER_BACKEND": "fake",
                              "SANDBOX_RUNNER_DRAIN_THRESHOLD": "3"}, min_free_percent=0.0,
                             worker_name="celery@q.01.h")
    emitter, sink = capture_events(settings.worker_name)
    service = WorkerService(settings, emitter, guard,
                            backend_for=lambda s, spec: backend)
    return service, sink


def _job(**spec: Any) -> dict[str, Any]:
    job = make_job("/run.sh")
    job["params"]["job_specification"].update(spec)
    return job


def _statuses(sink: CapturedEvents, task_id: str) -> list[str]:
    return [d["status"] for d in sink.docs() if d.get("resource") == "job" and d["uuid"] == task_id]


def test_soft_limit_fails_the_job_naming_it_and_triage_still_runs(tmp_path: Path) -> None:
    service, sink = _service(tmp_path, FakeBackend(script=_waits_for_cancel))
    job = _job(post=["hysds.triage.triage"])
    result = service.run_task(TaskInfo(job["task_id"], soft_limit=0.3, hard_limit=30), job)
    assert result is not None and result["status"] == "job-failed" and result["exit_code"] == 143
    assert _statuses(sink, job["task_id"]) == ["job-started", "job-failed"]
    assert result["error"] == "SoftTimeLimitExceeded()"  # HySDS's text: sites match on it
    doc = next(d for d in sink.docs() if d.get("status") == "job-failed")
    assert doc["error"] == "SoftTimeLimitExceeded()" and doc["dedup_job"] is None
    assert doc["traceback"].startswith(f"Soft time limit (0.3s) exceeded for {job['job_id']}")
    assert [job["job_id"]] == TRIAGED


def test_a_signal_stops_the_job_once_without_post_processing(tmp_path: Path) -> None:
    service, sink = _service(tmp_path, FakeBackend(script=_waits_for_cancel))
    job = _job(post=["hysds.triage.triage"])
    threading.Timer(0.3, service.interrupt_all, (signal.SIGTERM,)).start()
    result = service.run_task(TaskInfo(job["task_id"]), job)
    assert result is not None and result["status"] == "job-terminated"
    docs = [d for d in sink.docs() if d.get("resource") == "job"]
    assert [d["status"] for d in docs] == ["job-started", "job-terminated"] and docs[-1]["signum"] == 15
    assert TRIAGED == []
    later = make_job("/run.sh")
    assert service.run_task(TaskInfo(later["task_id"]), later) is None  # stopping: back to the queue


def test_an_interrupt_before_the_job_starts_is_not_lost(tmp_path: Path) -> None:
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend)
    assert runner.interrupt("job-revoked", "Job was revoked with signal 15.", 15) is False
    outcome = runner.run(make_job("/run.sh"))
    assert outcome.status == "job-revoked" and backend.calls == []
    assert sink.terminal()["status"] == "job-revoked"


def test_a_revoke_before_delivery_sends_one_job_revoked_and_the_job_never_runs(tmp_path: Path) -> None:
    backend = FakeBackend()
    service, sink = _service(tmp_path, backend)
    job = _job()
    service.revoked(job["task_id"], job, None)
    result = service.run_task(TaskInfo(job["task_id"]), job)
    assert result is not None and result["status"] == "job-revoked" and backend.calls == []
    assert _statuses(sink, job["task_id"]) == ["job-revoked"]


def test_drain_guard_fires_once_and_stops_consuming(tmp_path: Path) -> None:
    service, sink = _service(tmp_path, FakeBackend(exit_code=1))
    stopped: list[bool] = []
    service.on_drain = lambda: stopped.append(True)
    for _ in range(6):
        job = _job()
        service.run_task(TaskInfo(job["task_id"]), job)
    anomalies = [d for d in sink.docs() if d.get("type") == "worker_anomaly"]
    assert len(anomalies) == 1 and anomalies[0]["status"] == "job_drain" and anomalies[0]["event"]["count"] == 4
    assert stopped == [True]


def test_a_run_fenced_out_before_publishing_publishes_nothing(tmp_path: Path, redis_url: str) -> None:
    import redis

    guard = LeaseGuard(redis_url, "celery@q.01.h", ttl=30)
    job = _job(post=["hysds.triage.triage"])
    lease_key = f"sandbox-runner-lease-{job['task_id']}"

    def taken_over_meanwhile(spec: ContainerSpec, io: JobIO) -> int:
        r = redis.Redis.from_url(redis_url)
        r.hset(lease_key, mapping={"token": 99, "worker": "celery@other.01.h"})  # a newer owner's token
        return 0

    service, sink = _service(tmp_path, FakeBackend(script=taken_over_meanwhile), guard)
    try:
        result = service.run_task(TaskInfo(job["task_id"]), job)
    finally:
        redis.Redis.from_url(redis_url).delete(lease_key, f"sandbox-runner-fence-{job['task_id']}",
                                               f"hysds-job-status-{job['task_id']}",
                                               f"hysds-task-worker-{job['task_id']}")
        service.close()
    assert result is not None and result["status"] == "job-deduped"
    assert "fencing token 1 was superseded" in result["error"]
    assert _statuses(sink, job["task_id"]) == ["job-started", "job-deduped"]
    assert TRIAGED == []  # post-processing (publish, triage) did not run


def test_the_worker_scrubs_between_jobs_once_per_interval(tmp_path: Path) -> None:
    import time

    from support.fsjobs import make_job_dir

    from sandbox_runner.fspolicy.quarantine import entry_name

    root = tmp_path / "work"
    stale = root / "quarantine" / entry_name(4096, 2, "202501010000", "old", time.time_ns() - int(3 * 86400e9))
    stale.mkdir(parents=True)
    crashed = make_job_dir(root, 0, "crashed_before", "crashed")
    service, sink = _service(tmp_path, FakeBackend())
    first = _job()
    assert service.run_task(TaskInfo(first["task_id"]), first)["status"] == "job-completed"  # type: ignore[index]
    assert not stale.exists()  # past the quarantine TTL: purged after the job, by the worker itself
    found = [d["event"] for d in sink.docs() if d.get("status") == "crashed-job"]
    assert [e["path"] for e in found] == [str(crashed)]
    stale.mkdir()
    second = _job()
    service.run_task(TaskInfo(second["task_id"]), second)
    assert stale.exists()  # the next scrub waits for scrub.interval (10 min by default)
