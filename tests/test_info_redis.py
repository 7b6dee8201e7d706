"""job_info documents on their own Redis (HySDS's metrics Redis, REDIS_INFO_URL), on two real redis-servers.

The job runs on the shipped FakeBackend (the container is not what is under test); the Emitter is the one every
edge builds from settings, with its spools, so the documents cross real Redis connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.celery_helpers import OwnRedis, free_port, wait_for
from support.jobs import make_job, read_status_list

from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.events import Emitter
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.settings import load_settings


def _run(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), **env}, min_free_percent=0.0)
    emitter = Emitter.from_settings(settings, tmp_path / "work")
    backend = FakeBackend()
    job = make_job("/bin/true")
    try:
        outcome = JobRunner(settings, emitter, backend_for=lambda s, spec: backend).run(job)
    finally:
        emitter.close()
    assert outcome.status == "job-completed"
    return job


def _types(url: str, task_id: str) -> list[str]:
    return [d.get("type") if d.get("type") == "job_info" else d.get("status") for d in read_status_list(url, "logstash")
            if d.get("uuid") == task_id or (d.get("job") or {}).get("task_id") == task_id]


def test_job_info_goes_to_its_own_redis_when_configured(tmp_path: Path, own_redis: OwnRedis) -> None:
    info = OwnRedis(free_port(), tmp_path / "info")
    info.workdir.mkdir()
    info.start()
    try:
        job = _run(tmp_path, {"SANDBOX_RUNNER_REDIS_URL": own_redis.url,
                              "SANDBOX_RUNNER_REDIS_INFO_URL": info.url})
        wait_for(lambda: _types(info.url, job["task_id"]) == ["job_info"], 10, what="job_info on the info redis")
        wait_for(lambda: _types(own_redis.url, job["task_id"]) == ["job-started", "job-completed"], 10,
                 what="status documents on the status redis")
        doc = next(d for d in read_status_list(info.url, "logstash") if d.get("type") == "job_info")
        assert doc["job"]["job_id"] == job["job_id"] and "facts" in doc["job"]["job_info"]
    finally:
        info.stop()


def test_job_info_falls_back_to_the_status_redis(tmp_path: Path, own_redis: OwnRedis) -> None:
    job = _run(tmp_path, {"SANDBOX_RUNNER_REDIS_URL": own_redis.url})
    wait_for(lambda: _types(own_redis.url, job["task_id"]) == ["job-started", "job_info", "job-completed"], 10,
             what="all documents on the status redis")
