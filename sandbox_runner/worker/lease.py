"""Redelivery guard: a job is run once, however often the broker delivers it.

With ``acks_late`` a job's message is redelivered whenever its worker's broker connection goes before the ack:
the worker was killed, or only cut off from the broker while it keeps running the job. HySDS tells these apart by
sleeping 60 s and looking again; here each delivery is judged from Redis, without fixed sleeps:

1. ``hysds-revoked-task-<task_id>`` set -> revoked, not run (HySDS's revoke tools set it).
2. ``hysds-job-status-<task_id>`` terminal (completed, failed, revoked, deduped, ...) -> already finished, not
   run. Not ``job-offline``: a restarted worker's reconcile says that of a run whose worker died, and the broker
   redelivers the message exactly because that run never finished; the lease below fences the rerun.
3. Otherwise take the lease ``sandbox-runner-lease-<task_id>`` (a hash: fencing ``token``, ``worker``, ``beat``;
   a time to live renewed every third of it while the job runs). Free -> ours, with a token one higher than any
   before it (``sandbox-runner-fence-<task_id>`` counts). Held -> watch it for at most one TTL: if its ``beat``
   moves, its owner is alive and running the job (this delivery is a duplicate, not run); if it expires, the owner
   is dead and this worker takes the job over with a new token.

The token fences the old owner: before publishing (and on every renewal) a run checks it still holds the lease;
a run that finds a newer token stops its container and publishes nothing. Redis being unreachable fails open:
the job runs (events are spooled), since refusing every job during an outage is the worse failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.events.sinks import STATUS_KEY_PREFIX

log = structlog.get_logger("sandbox_runner.worker")

#: statuses after which a redelivered job is not run again (job-offline: its worker died, the job did not finish)
FINISHED_STATUSES = TERMINAL_STATUSES - {"job-offline"}

LEASE_PREFIX = "sandbox-runner-lease-"
FENCE_PREFIX = "sandbox-runner-fence-"
REVOKED_PREFIX = "hysds-revoked-task-"
#: HySDS's run_job records which worker runs a task (log_task_worker); mozart's process_events reads it
TASK_WORKER_PREFIX = "hysds-task-worker-"
#: "this worker is alive": process_events keeps it from Celery's worker events (60 s, deleted at worker-offline);
#: HySDS's own redelivery check reads it to tell a live worker's duplicate from a dead worker's job
WORKER_STATUS_PREFIX = "hysds-worker-status-"

# KEYS: lease, fence counter, HySDS's task-worker key; ARGV: worker, ttl ms, fence ttl s
# -> {token, worker, beat} (token 0: held by another worker)
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'worker'), redis.call('HGET', KEYS[1], 'beat')}
end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'token', token, 'worker', ARGV[1], 'beat', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
return {token, ARGV[1], '0'}
"""
# KEYS: lease; ARGV: token, ttl ms -> 1 renewed, 0 lost
_RENEW = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'beat', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Lease:
    guard: LeaseGuard
    task_id: str
    token: int

    @property
    def key(self) -> str:
        return f"{LEASE_PREFIX}{self.task_id}"

    def renew(self) -> bool | None:
        """True renewed, False lost to a newer owner, None Redis unreachable (cannot tell yet)."""
        try:
            return bool(self.guard._renew(keys=[self.key], args=[self.token, self.guard.ttl_ms]))
        except redis.RedisError as exc:
            log.warning("lease-renew-failed", task_id=self.task_id, error=str(exc))
            return None

    def holds(self) -> bool:
        """The fencing check: is our token still the lease's? Fails open when Redis is unreachable."""
        try:
            raw = self.guard.redis.hget(self.key, "token")
        except redis.RedisError:
            return True
        return raw is not None and int(raw) == self.token

    def release(self) -> None:
        try:
            self.guard._release(keys=[self.key], args=[self.token])
        except redis.RedisError as exc:
            log.warning("lease-release-failed", task_id=self.task_id, error=str(exc))  # it expires by itself


@dataclass(frozen=True)
class Admission:
    run: bool
    #: new | taken-over | unguarded (Redis unreachable) | revoked | finished | running-elsewhere
    reason: str
    lease: Lease | None = None
    status: str | None = None  # the status key as found
    holder: str | None = None  # the live owner, for running-elsewhere


class LeaseGuard:
    def __init__(self, redis_url: str, worker: str, ttl: float, fence_ttl: int = 86400) -> None:
        self.redis: Any = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.worker, self.ttl = worker, ttl
        self.ttl_ms = max(1, int(ttl * 1000))
        self.fence_ttl = fence_ttl
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    def mark_worker(self, status: str, heartbeat_interval: float) -> None:
        """Keep ``hysds-worker-status-<worker>`` as process_events does, for verdis and mozart tools beside us:
        set to the event's type, for 60 s (or two beats, when beats are slower), deleted at worker-offline."""
        key = f"{WORKER_STATUS_PREFIX}{self.worker}"
        try:
            if status == "worker-offline":
                self.redis.delete(key)
            else:
                self.redis.set(key, status, ex=max(60, int(2 * heartbeat_interval) + 1))
        except redis.RedisError as exc:  # the documents are spooled; the key only says "alive" and comes back
            log.warning("worker-status-key-not-written", key=key, error=str(exc))

    def admit(self, task_id: str) -> Admission:
        try:
            return self._admit(task_id)
        except redis.RedisError as exc:
            log.warning("redelivery-guard-unavailable", task_id=task_id, error=str(exc))
            return Admission(True, "unguarded")

    def _statuses(self, task_id: str) -> tuple[str | None, bool]:
        status, revoked = self.redis.mget(f"{STATUS_KEY_PREFIX}{task_id}", f"{REVOKED_PREFIX}{task_id}")
        return (status.decode() if status else None), revoked is not None

    def _admit(self, task_id: str) -> Admission:
        status, revoked = self._statuses(task_id)
        if revoked:
            return Admission(False, "revoked", status=status)
        if status in FINISHED_STATUSES:
            return Admission(False, "finished", status=status)
        keys = [f"{LEASE_PREFIX}{task_id}", f"{FENCE_PREFIX}{task_id}", f"{TASK_WORKER_PREFIX}{task_id}"]
        deadline = time.monotonic() + self.ttl + 1.0
        first_beat: bytes | None = None
        while True:
            token, holder, beat = self._acquire(keys=keys, args=[self.worker, self.ttl_ms, self.fence_ttl])
            if int(token):
                taken_over = status == "job-started" or int(token) > 1
                return Admission(True, "taken-over" if taken_over else "new", Lease(self, task_id, int(token)),
                                 status=status)
            holder = holder.decode() if isinstance(holder, bytes) else str(holder)
            if first_beat is None:
                first_beat = beat
            elif beat != first_beat or time.monotonic() > deadline:
                # the owner renewed: it is alive and running this job (or a lease that never expires: not ours)
                return Admission(False, "running-elsewhere", status=status, holder=holder)
            status, revoked = self._statuses(task_id)
            if revoked or status in FINISHED_STATUSES:
                return Admission(False, "revoked" if revoked else "finished", status=status)
            time.sleep(min(0.5, self.ttl / 10))

    def finished(self, task_id: str) -> bool:
        """Has the job finished (a terminal status other than job-offline)? (False when Redis cannot say.)"""
        try:
            return self._statuses(task_id)[0] in FINISHED_STATUSES
        except redis.RedisError:
            return False

    def status(self, task_id: str) -> str | None:
        try:
            return self._statuses(task_id)[0]
        except redis.RedisError:
            return None

    def holder(self, task_id: str) -> str | None:
        """Who holds the job's lease now (None: nobody, or Redis unreachable)."""
        try:
            raw = self.redis.hget(f"{LEASE_PREFIX}{task_id}", "worker")
        except redis.RedisError:
            return None
        return raw.decode() if raw else None

    def clear(self, task_id: str, worker: str) -> None:
        """Drop a lease left by ``worker`` (our dead predecessor), so a redelivery need not wait for it."""
        try:
            if self.holder(task_id) == worker:
                self.redis.delete(f"{LEASE_PREFIX}{task_id}")
        except redis.RedisError:
            pass

    def close(self) -> None:
        self.redis.close()
