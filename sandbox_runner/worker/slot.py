"""One job at a time per slot, a revoked one included: its message is acked when its job has ended, not before.

Celery's ``revoke(terminate=True)`` of a running task announces the revoke (task-revoked, REVOKED, the
``task_revoked`` signal, which stops the job's container) and *acks the message at once*. With ``acks_late`` and
prefetch 1, that unacked message is what keeps a busy slot from being handed another job: once it is acked, the
broker delivers the next message to this worker while the revoked container is still stopping (its stop grace,
up to SIGKILL), so the next job sits reserved here instead of going to an idle worker, and starts the moment the
old job's thread returns.

:class:`SlotRequest` holds that ack back: during ``terminate`` of a running request, the ack Celery asks for is
skipped, and it is done when the job's thread finishes (Celery acks an ``Ignore``d or finished ``acks_late`` task
then, from that thread, as it does for every task of a thread pool). The job's thread finishes only when its
container is gone: the backend removes a container it had to stop before ``run`` returns.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.worker.request import Request


class SlotRequest(Request):
    """Celery's Request whose ack at ``terminate`` waits for the running job's end (see the module docstring)."""

    #: the thread running ``terminate`` of a started request: the ack *it* asks for is the one held back. Told
    #: apart by thread, not by a flag, so the job's own ack -- its thread may finish while the revoke is being
    #: announced -- is never the one skipped (a skipped last ack would leave the slot taken for good).
    _revoking_thread: int | None = None

    def terminate(self, pool: Any, signal: Any = None) -> None:
        if self.time_start:  # running: its thread acks when it ends; a reserved request is dropped as Celery does
            self._revoking_thread = threading.get_ident()
        try:
            super().terminate(pool, signal)
        finally:
            self._revoking_thread = None

    def acknowledge(self) -> None:
        if self._revoking_thread == threading.get_ident():
            return  # the job's thread acks when it ends (Celery's on_success / on_failure, acks_late)
        super().acknowledge()
