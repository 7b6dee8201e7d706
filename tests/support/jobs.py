"""Job documents as HySDS's orchestrator sends them, and the status documents a run leaves on Redis."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from support.machine import BUSYBOX


def read_status_list(redis_url: str, key: str) -> list[dict[str, Any]]:
    import msgpack
    import redis

    return [msgpack.unpackb(raw, raw=False) for raw in redis.Redis.from_url(redis_url).lrange(key, 0, -1)]


def make_job(command: str, *, image: str | None = BUSYBOX, job_type: str = "sr_test", **extra: Any) -> dict[str, Any]:
    """A job JSON as HySDS's orchestrator would send it (HYSDS-WORKER.md section 2)."""
    job_id = f"{job_type}-{uuid.uuid4().hex[:10]}"
    job: dict[str, Any] = {
        "job_id": job_id,
        "name": job_id,
        "type": job_type,
        "task_id": str(uuid.uuid4()),
        "priority": 0,
        "tag": "test",
        "username": "ops",
        "params": {"_command": command, "_disk_usage": "1MB", "localize_urls": [],
                   "job_specification": {"command": command.split()[0], "params": [], "disk_usage": "1MB",
                                         "soft_time_limit": 60, "time_limit": 120}},
        "localize_urls": [],
        "job_info": {
            "id": job_id, "job_queue": "test-queue", "time_queued": "2026-01-01T00:00:00.000000Z",
            "index": "job_status-2026.01.01", "time_limit": 120, "soft_time_limit": 60,
            "payload_hash": uuid.uuid4().hex, "dedup": False,
            "job_payload": {"job_type": f"job:{job_type}", "payload_task_id": str(uuid.uuid4())},
        },
    }
    if image:
        job["container_image_name"] = image
    job.update(extra)
    return job


def write_job(directory: Path, job: dict[str, Any] | str, name: str = "job.json") -> Path:
    path = directory / name
    path.write_text(job if isinstance(job, str) else json.dumps(job))
    path.chmod(0o644)
    return path
