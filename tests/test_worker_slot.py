"""SlotRequest (worker/slot.py): the ack Celery asks for while announcing a revoke is held back; the job
thread's ack, when its job ends, always goes through -- also when it ends while the revoke is being announced."""

from __future__ import annotations

import threading
from typing import Any

from sandbox_runner.worker.slot import SlotRequest


class Pool:
    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        pass


class Probe(SlotRequest):
    """A started request with Celery's revoke announcement reduced to its ack (plus, optionally, the job's
    thread finishing meanwhile)."""

    def __init__(self, *, job_ends_meanwhile: bool = False) -> None:  # no Celery message behind it
        self.acks: list[str] = []
        self.acknowledged = False
        self.time_start = 1.0
        self._worker_pid = None
        self._apply_result = None
        self._on_ack = lambda *_: self.acks.append(threading.current_thread().name)
        self._connection_errors = ()
        self.job_ends_meanwhile = job_ends_meanwhile

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        if self.job_ends_meanwhile:
            self.job_thread_ends()
        self.acknowledge()  # what Celery's own _announce_revoked does

    def job_thread_ends(self) -> None:
        t = threading.Thread(target=self.acknowledge, name="job-thread")
        t.start()
        t.join()


def test_the_revoke_does_not_ack_a_running_job_its_thread_does_when_it_ends() -> None:
    req = Probe()
    req.terminate(Pool(), 15)
    assert req.acks == [] and not req.acknowledged
    req.job_thread_ends()
    assert req.acks == ["job-thread"]


def test_a_job_ending_while_its_revoke_is_announced_is_acked_once() -> None:
    req = Probe(job_ends_meanwhile=True)
    req.terminate(Pool(), 15)
    assert req.acks == ["job-thread"]


def test_a_request_not_started_yet_is_left_to_celery() -> None:
    req = Probe()
    req.time_start = None
    req._terminate_on_ack = None
    req.terminate(Pool(), 15)  # Celery only notes it, to terminate it when accepted
    req.acknowledge()
    assert req.acks == ["MainThread"]
