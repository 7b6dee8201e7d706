"""Counts that only this process can see as they happen, kept without any dependency so the job path (the
execute step, the transfer retry loop) can update them for free; :mod:`.prom` reads them at scrape time."""

from __future__ import annotations

import threading


class Tally:
    """A thread-safe integer: containers running now, transfer retries so far."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        return self._value


#: job containers (or sandboxes, subprocesses) this process has started and not yet seen exit
CONTAINERS_RUNNING = Tally()
#: transient transfer failures retried after a backoff (localize and publish, every transport), since start
TRANSFER_RETRIES = Tally()
