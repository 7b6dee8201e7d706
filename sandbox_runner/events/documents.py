"""The HySDS document shapes (HYSDS-WORKER.md section 7): job status, job_info and custom events."""

from __future__ import annotations

import copy
import re
import time
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

TERMINAL_STATUSES = frozenset(
    {"job-completed", "job-failed", "job-deduped", "job-offline", "job-revoked",
     "job-terminated", "job-interrupted", "job-hangup", "job-quit", "job-aborted"}
)
HARD_TIME_LIMIT_GAP = 300


def iso_now() -> str:
    """HySDS timestamps: UTC, microseconds, a literal Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short_error(error: str) -> str:
    """HySDS's utils.get_short_error: first 20 and last 10 characters when longer than 35."""
    return error if len(error) <= 35 else f"{error[:20]}.....{error[-10:]}"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _job_info(job: dict[str, Any]) -> dict[str, Any]:
    return _mapping(job.get("job_info"))


def job_info_of(job: Any) -> dict[str, Any]:
    """``job["job_info"]`` when both are objects, else ``{}``: for readers that must not fail on a damaged job."""
    return _job_info(job) if isinstance(job, dict) else {}


def job_ids(job: Any) -> dict[str, Any]:
    """The identifiers HySDS documents carry (uuid, job_id, payload_id, payload_hash, dedup), read best-effort:
    a damaged job (job_info a number, task_id a list...) gives null for what cannot be read, never an error."""
    job = job if isinstance(job, dict) else {}
    info = _job_info(job)
    dedup = info.get("dedup")
    return {
        "uuid": _text(job.get("task_id")),
        "job_id": _text(job.get("job_id")),
        "payload_id": _text(_mapping(info.get("job_payload")).get("payload_task_id")),
        "payload_hash": _text(info.get("payload_hash")),
        "dedup": dedup if isinstance(dedup, bool) else None,
    }


def status_ttl(job: dict[str, Any], default: int) -> int:
    """TTL of the status key: long enough to outlive the job's hard time limit."""
    limit = _job_info(job).get("time_limit")
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit < 10**9:
        return max(default, int(limit) + 2 * HARD_TIME_LIMIT_GAP)
    return default


def job_status_doc(
    job: dict[str, Any],
    status: str,
    hostname: str,
    *,
    error: str | None = None,
    traceback: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Built from whatever can be read: a damaged job (job_info a number, task_id a list...) still gets its one
    # terminal document; identifiers of the wrong type are left out (null) rather than crash the close-up.
    doc: dict[str, Any] = {
        **job_ids(job),
        "status": status,
        "job": copy.deepcopy(job),
        "celery_hostname": hostname,
        "resource": "job",
        "type": _text(job.get("type")) or "unknown",
        "@version": "1",
        "@timestamp": iso_now(),
    }
    given = job.get("tags")
    tags = [t for t in given if isinstance(t, str)] if isinstance(given, list) else []
    if _text(job.get("tag")):
        tags.append(job["tag"])
    if tags:
        doc["tags"] = tags
    if error is not None:
        doc["error"] = error
        doc["short_error"] = short_error(error)
        doc["traceback"] = traceback or error
    if status == "job-failed":  # HySDS's failed-job documents name no duplicate, as an explicit null
        doc["dedup_job"] = None
    if extra:
        doc.update(extra)
    return doc


def job_info_doc(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_info", "job_id", "task_id", "delivery_info", "tag", "priority",
            "container_image_name", "container_image_url", "container_image_urls", "name")
    return {
        "type": "job_info",
        "@version": "1",
        "@timestamp": iso_now(),
        "job": {k: copy.deepcopy(job.get(k)) for k in keys},
        "job_type": _text(job.get("type")),
    }


def custom_event_doc(
    event_type: str, status: str, event: dict[str, Any], hostname: str, tags: list[str] | None = None
) -> dict[str, Any]:
    return {
        "resource": "event",
        "type": event_type,
        "status": status,
        "@timestamp": iso_now(),
        "@version": "1",
        "hostname": hostname,
        "uuid": str(uuidlib.uuid4()),
        "tags": list(tags or []),
        "event": event,
    }


#: HySDS's process_events types a worker document by the part of the Celery hostname between ``celery@`` and
#: the first dot that is followed by more (``celery@factotum-job_worker-small.01.host`` -> factotum-job_worker-small)
_HYSDS_WORKER_TYPE = re.compile(r"^celery@(.+?)\..+$")


def hysds_worker_type(hostname: str) -> str:
    """The ``type`` process_events gives a worker document; ``unknown`` for a name not of that form (as there)."""
    m = _HYSDS_WORKER_TYPE.search(hostname)
    return m.group(1) if m else "unknown"


def worker_event_doc(status: str, event: dict[str, Any], hostname: str) -> dict[str, Any]:
    """A worker event (``worker-online`` / ``-heartbeat`` / ``-offline``) in the shape mozart's process_events
    writes for the same Celery event: ``uuid`` an empty list (worker events have none), ``type`` from the
    hostname, and ``event`` Celery's event as a receiver hands it over (Celery's fields plus ``local_received``,
    the receiving side's clock). ``celery_hostname`` is the event's hostname."""
    name = event.get("hostname")
    name = name if isinstance(name, str) else hostname
    return {
        "resource": "worker",
        "type": hysds_worker_type(name),
        "status": status,
        "celery_hostname": name,
        "uuid": [],
        "@version": "1",
        "@timestamp": iso_now(),
        "event": {**event, "local_received": time.time()},
    }
