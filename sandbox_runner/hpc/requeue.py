"""Hand a message back to the *tail* of its queue.

A pilot refuses a job that does not fit its remaining walltime. Rejecting it with ``requeue=True`` puts it back
at the head of a RabbitMQ queue, so with prefetch 1 the same worker is handed the same job again at once and
never reaches the short jobs queued behind it. Instead the worker publishes a copy of the message (same task
id, name, arguments, queue, priority and time limits) to the queue's tail, then drops the original; the copy is
published first, so a broker that refuses it only costs the fallback, a requeue at the head.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("sandbox_runner.hpc")


def to_tail(task: Any) -> bool:
    """Republish the task being run (a bound Celery task) to its queue's tail. False if it could not be."""
    req = task.request
    info = dict(req.delivery_info or {})
    queue = info.get("routing_key")
    if not queue:
        return False
    hard, soft = (*tuple(req.timelimit or ()), None, None)[:2]
    options: dict[str, Any] = {"queue": queue, "priority": info.get("priority")}
    if hard:
        options["time_limit"] = hard
    if soft:
        options["soft_time_limit"] = soft
    try:
        task.app.send_task(task.name, args=list(req.args or ()), kwargs=dict(req.kwargs or {}), task_id=req.id,
                           add_to_parent=False, **options)
    except Exception as exc:  # the broker refused the copy: the original goes back to the head instead
        log.warning("hand-back-to-tail-failed", task_id=req.id, queue=queue, error=str(exc))
        return False
    return True
