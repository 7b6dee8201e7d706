"""Jobs a pilot handed back because they could not fit its walltime, on the status Redis, so ``autoscale`` does
not submit pilots that cannot run them either.

One hash per queue, ``sandbox-runner-pilot-misfits-<queue>``: a field per task id, its value JSON
``{"limit", "time_left", "pilot", "at"}``. A refusal writes its field and refreshes the hash's TTL (an hour), so
the record forgets jobs nobody refuses any more. Any worker that admits a task deletes its field: a worker with
the time ran it. ``autoscale`` reads the limits (:func:`MisfitBook.limits`).

Redis is advisory here: every error is logged and swallowed, and after one the book stays quiet for
:data:`BACKOFF` seconds, so a worker's admission never waits on an unreachable Redis more than once a minute.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog

log = structlog.get_logger("sandbox_runner.hpc")

KEY_PREFIX = "sandbox-runner-pilot-misfits-"
TTL = 3600
#: seconds to leave Redis alone after an error
BACKOFF = 60.0


def misfit_key(queue: str) -> str:
    return f"{KEY_PREFIX}{queue}"


class MisfitBook:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        import redis  # imported here: a worker without a status Redis does not pay for it

        self.url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._error: type[Exception] = redis.RedisError
        self._quiet_until = 0.0
        self._lock = threading.Lock()

    def _usable(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._quiet_until

    def _failed(self, action: str, queue: str, exc: Exception) -> None:
        with self._lock:
            self._quiet_until = time.monotonic() + BACKOFF
        log.warning("pilot-misfits-unavailable", action=action, queue=queue, redis=self.url, error=str(exc))

    def record(self, queue: str, task_id: str, limit: float, time_left: float | None, pilot: str | None) -> None:
        """A pilot refused the task for its walltime."""
        if not self._usable():
            return
        value = json.dumps({"limit": limit, "time_left": None if time_left is None else round(time_left, 1),
                            "pilot": pilot, "at": round(time.time(), 3)})
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(misfit_key(queue), task_id, value)
            pipe.expire(misfit_key(queue), TTL)
            pipe.execute()
        except self._error as exc:
            self._failed("record", queue, exc)

    def admitted(self, queue: str, task_id: str) -> None:
        """A worker admitted the task: it is nobody's misfit any more."""
        if not self._usable():
            return
        try:
            self._redis.hdel(misfit_key(queue), task_id)
        except self._error as exc:
            self._failed("admitted", queue, exc)

    def entries(self, queue: str) -> dict[str, dict[str, Any]]:
        """Task id -> its record; {} when Redis cannot say."""
        try:
            raw = self._redis.hgetall(misfit_key(queue))
        except self._error as exc:
            self._failed("read", queue, exc)
            return {}
        found: dict[str, dict[str, Any]] = {}
        for field, value in raw.items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("limit"), int | float):
                found[field.decode() if isinstance(field, bytes) else str(field)] = entry
        return found

    def limits(self, queue: str) -> list[float]:
        """The time limits of the jobs pilots refused on this queue."""
        return [float(e["limit"]) for e in self.entries(queue).values()]

    def forget(self, queue: str) -> None:
        """Nothing waits on the queue: drop its record."""
        try:
            self._redis.delete(misfit_key(queue))
        except self._error as exc:
            self._failed("forget", queue, exc)

    def close(self) -> None:
        self._redis.close()
