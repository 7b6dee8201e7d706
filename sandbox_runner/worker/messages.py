"""Task messages that are not task bodies: refused before Celery trips over them, and reported once.

Celery unpacks a task message's body as ``(args, kwargs, embed)`` inside its consumer loop; a body that is a
string, a number or a list of another length raises ``ValueError`` there, which Celery treats as an
*unrecoverable* worker error: the worker dies with the message unacked, the broker redelivers it to the next
worker, which dies too -- forever. :class:`CheckedTask` checks the shape first and raises Celery's own
``InvalidTaskError``, for which Celery rejects the message without requeueing it (gone from the queue, never
redelivered). :func:`report_rejected` (the ``task_rejected`` signal) then reports it once: a ``job-failed`` under
the message's task id when one can be read, else a ``worker_anomaly/invalid_message`` event.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import InvalidTaskError
from kombu.exceptions import DecodeError


def body_problem(payload: Any) -> str | None:
    """Why ``payload`` is not a protocol-2 task body ``[args, kwargs, embed]``; None when it is one."""
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        kind = type(payload).__name__ if not isinstance(payload, list | tuple) else f"{len(payload)} items"
        return f"the task message's body is not [args, kwargs, embed] (got {kind})"
    args, kwargs, _ = payload
    if not isinstance(args, list | tuple):
        return f"the task message's args are not an array (got {type(args).__name__})"
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return "the task message's kwargs are not an object with string keys"
    return None


class CheckedTask(Task):
    """A task whose consumer-side handler refuses a body of the wrong shape with InvalidTaskError (Celery then
    rejects the message without requeueing it) before Celery's own handler would crash the worker on it."""

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        handler = super().start_strategy(app, consumer, **kwargs)

        def checked(message: Any, body: Any, *args: Any, **kw: Any) -> Any:
            headers = getattr(message, "headers", None) or {}
            if isinstance(headers, dict) and "task" in headers:  # protocol 2 (protocol 1 bodies Celery converts)
                try:
                    payload = message.payload if body is None else body
                except DecodeError as exc:  # Celery would only log it and ack: the job would vanish unreported
                    content = getattr(message, "content_type", None) or "no content type"
                    raise InvalidTaskError(f"the task message's body cannot be decoded ({content}): {exc}") from None
                problem = body_problem(payload)
                if problem is not None:
                    raise InvalidTaskError(problem)
            return handler(message, body, *args, **kw)

        return checked


def report_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    """``task_rejected``: Celery dropped a message it could not take as a task; tell the job tracker once."""
    from sandbox_runner.worker.service import service_of

    service = service_of(getattr(sender, "app", None))  # the sender is the worker's consumer
    if service is None or message is None:
        return
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    reason = str(exc) if exc is not None else "the message is not a Celery task"
    error = f"the task message is not a job, dropped: {reason}"
    if isinstance(task_id, str) and task_id:
        service.emitter.job_status({"task_id": task_id}, "job-failed", error=error)
        _mark_failed(sender, task_id, error)
    else:
        delivery = getattr(message, "delivery_info", None) or {}
        service.emitter.event("worker_anomaly", "invalid_message", {
            "error": error, "routing_key": delivery.get("routing_key"), "task": headers.get("task")})



def _mark_failed(consumer: Any, task_id: str, error: str) -> None:
    """Celery's result for a rejected message stays PENDING (it never became a task): say FAILURE, as for every
    other failed job, so Flower and a client's ``AsyncResult`` agree with the status document."""
    from celery.backends.base import DisabledBackend

    backend = getattr(getattr(consumer, "app", None), "backend", None)
    if backend is None or isinstance(backend, DisabledBackend):
        return
    try:
        backend.mark_as_failure(task_id, InvalidTaskError(error), call_errbacks=False)
    except Exception as exc:  # the result store is a convenience; the status document was sent
        structlog.get_logger("sandbox_runner.worker").warning("result-not-stored", task_id=task_id, error=str(exc))
