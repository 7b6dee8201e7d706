"""The Celery edge: the app, its settings, and one thin task registered under two names.

``sandbox_runner.run_job`` is ours; ``hysds.job_worker.run_job`` is HySDS's, so a HySDS orchestrator's
``run_job.apply_async((job,), queue=..., time_limit=..., soft_time_limit=..., priority=...)`` reaches our workers
unchanged. The task decodes the delivery and hands it to :class:`~sandbox_runner.worker.service.WorkerService`,
which runs it through the JobRunner; nothing below knows about Celery.

Settings follow HySDS's celeryconfig (msgpack, ``acks_late``, prefetch 1, ``reject_on_worker_lost``, queue
priorities 0-9) with one deliberate difference: the pool is :class:`~sandbox_runner.worker.pool.JobThreadPool`.
A job is a container the worker waits on, not CPU work, and a thread pool keeps signals, revokes and time limits
in the process that owns the JobRunner -- where they can stop the *container* instead of killing a pool process
and leaving the container behind (HySDS's flaw).

    celery -A sandbox_runner.celery_app worker -Q QUEUE -n QUEUE.01.%h      # or: sandbox-runner worker -Q QUEUE
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.exceptions import Ignore, Reject

from sandbox_runner.errors import WorkerExecutionError
from sandbox_runner.events.documents import job_info_of
from sandbox_runner.settings import Settings, load_settings
from sandbox_runner.worker.messages import CheckedTask, report_rejected

log = structlog.get_logger("sandbox_runner.worker")
TASK_NAME = "sandbox_runner.run_job"
HYSDS_TASK_NAME = "hysds.job_worker.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "msgpack", "result_serializer": "msgpack", "event_serializer": "msgpack",
        "accept_content": ["msgpack", "json"], "result_accept_content": ["msgpack", "json"],
        "task_acks_late": True, "worker_prefetch_multiplier": 1, "task_reject_on_worker_lost": True,
        "task_queue_max_priority": 10, "task_default_priority": 0,
        "worker_send_task_events": True, "task_send_sent_event": True, "task_track_started": True,
        "result_expires": 86400, "broker_heartbeat": 60,
        "broker_connection_retry_on_startup": True,
        # a broker blip must not cancel running jobs; a redelivery meanwhile is caught by the lease
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_pool": "sandbox_runner.worker.pool:JobThreadPool",
        "worker_hijack_root_logger": False,
    }
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        # Redis has no queue priorities; kombu emulates 0-9 with one list per step (0 is served first there)
        conf["broker_transport_options"] = {"priority_steps": list(range(10)), "queue_order_strategy": "priority",
                                            "sep": ":"}
        if settings.broker_visibility_timeout is not None:  # when a dead worker's message comes back
            vt = settings.broker_visibility_timeout
            # kombu sweeps for such messages every interval * throttle seconds (10 * 10 by default): make the
            # sweep keep pace with a short timeout, or the message waits ~100 s more
            conf["broker_transport_options"].update(visibility_timeout=vt, unacked_restore_throttle=1,
                                                    unacked_restore_interval=max(1, min(10, vt // 2)))
    return conf


def make_app(settings: Settings) -> Celery:
    from sandbox_runner.worker.lifecycle import make_lifecycle_step, shutdown

    app = Celery("sandbox_runner", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.steps["worker"].add(make_lifecycle_step(settings))
    signals.worker_shutdown.connect(shutdown, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
    signals.task_rejected.connect(report_rejected, weak=False)  # a message that is not a task body
    for name in (TASK_NAME, HYSDS_TASK_NAME):
        # a failed job is acked, not retried or redelivered (its one job-failed is written); an expected
        # WorkerExecutionError is logged by Celery at INFO without a traceback. CheckedTask refuses a message
        # whose body is not a task's.
        app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True, track_started=True,
                 acks_on_failure_or_timeout=True, throws=(WorkerExecutionError,), base=CheckedTask,
                 Request="sandbox_runner.worker.slot:SlotRequest")(run_job)  # a revoked job's ack waits for its end
    return app


def run_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The task body: HySDS's ``run_job(job, queue_when_finished=True)``. With ``queue_when_finished`` (HySDS's
    default) a finished job is handed to the orchestrator's user rules, as HySDS does. Any arguments are taken,
    so a message with no job (or a list, a string) reaches the runner and ends as one job-failed rather than a
    TypeError in Celery that the job tracker never hears of."""
    from sandbox_runner.worker.delivery import TaskInfo
    from sandbox_runner.worker.service import current_service

    req = self.request
    hard, soft = (*tuple(req.timelimit or ()), None, None)[:2]
    task = TaskInfo(task_id=str(req.id), delivery_info=dict(req.delivery_info or {}), hard_limit=hard,
                    soft_limit=soft)
    job = args[0] if args else kwargs.get("job")
    queue_when_finished = args[1] if len(args) > 1 else kwargs.get("queue_when_finished", True)
    service = current_service(self.app)
    result = service.run_task(task, job)
    if result is None:
        if service.refused_for_walltime(task.task_id):
            from sandbox_runner.hpc.requeue import to_tail

            if to_tail(self):  # a copy at the queue's tail: the jobs behind this one get their turn here
                raise Reject("too long for this pilot's walltime: handed back to the queue's tail", requeue=False)
        raise Reject("the worker is shutting down; back to the queue", requeue=True)
    if queue_when_finished and service.settings.user_rules_queue:
        _queue_user_rules(self, service.settings.user_rules_queue, job, result)
    return _task_outcome(self, result, revoke_announced=service.was_revoked(task.task_id))


USER_RULES_TASK = "hysds.task_worker.run_task"


def _queue_user_rules(task: Task, queue: str, job: Any, result: dict[str, Any]) -> None:
    """HySDS's ``queue_finished_job``: mozart's user rules evaluate the finished job (trigger rules fire).
    Not for a revoked job (HySDS's revoke handler sends none) nor a deduped one: ours is a redelivery or a lost
    lease, whose job the first run already handed over."""
    status = result.get("status")
    if status in ("job-revoked", "job-deduped") or result.get("payload_id") is None:
        return  # (no payload id: a job too malformed to name one; there is nothing to evaluate)
    info = job_info_of(job)
    index = info.get("index") if status == "job-completed" else "job_failed"
    payload = {"type": "user_rules_job", "function": "hysds.user_rules_job.evaluate_user_rules_job",
               "args": [result.get("payload_id")], "kwargs": {"index": index}}
    try:
        task.app.send_task(USER_RULES_TASK, args=(payload,), queue=queue)
    except Exception as exc:  # the job's status is written; a broker that refuses this must not undo it
        log.error("user-rules-not-queued", task_id=result.get("uuid"), queue=queue, error=str(exc))


#: statuses that end the Celery task SUCCESS, as in HySDS (a deduped job returns normally there too)
_SUCCEEDED = frozenset({"job-completed", "job-deduped"})


def _task_outcome(task: Task, result: dict[str, Any], *, revoke_announced: bool) -> dict[str, Any]:
    """The Celery state HySDS's tools see: SUCCESS for a completed job, REVOKED for a revoked one, FAILURE (a
    ``WorkerExecutionError``, HySDS's) for a failed one. Every terminal status document is already written."""
    status = result.get("status")
    if status == "job-revoked":
        if not revoke_announced:  # revoked by HySDS's redis key, not a Celery revoke: announce it as Celery would
            task.backend.mark_as_revoked(task.request.id, "terminated", request=task.request)
            task.send_event("task-revoked", terminated=False, signum=None, expired=False)
        # Celery has stored REVOKED (TaskRevokedError('terminated')) and sent task-revoked; Ignore keeps it from
        # overwriting that with SUCCESS or FAILURE and sending a second event
        raise Ignore()
    if status not in _SUCCEEDED:
        raise WorkerExecutionError(str(result.get("error") or status), result)
    return result


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
                expired: bool = False, **_: Any) -> None:
    if request is None or getattr(sender, "name", None) not in (TASK_NAME, HYSDS_TASK_NAME):
        return
    from sandbox_runner.worker.service import service_of

    service = service_of(getattr(sender, "app", None))  # the sender is the task
    if service is None:
        return
    args = getattr(request, "args", None) or []
    service.revoked(str(request.id), args[0] if args else None, int(signum) if terminated and signum else None)


app = make_app(load_settings())
