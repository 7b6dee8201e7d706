"""Job-drain guard: a worker that fails jobs much faster than jobs can honestly fail is broken, not unlucky.

HySDS counts contiguous job failures per worker and calls it a drain when there are more than 10 of them at 2 or
more per second (``WORKER_CONTIGUOUS_FAILURE_THRESHOLD`` / ``..._TIME``): a full disk, a dead podman service or a
bad mount would otherwise empty the whole queue into job-failed in minutes. Any other outcome ends the streak.
"""

from __future__ import annotations

import threading
import time


class DrainGuard:
    def __init__(self, threshold: int, window: float) -> None:
        self.threshold, self.window = threshold, window
        self.count = 0
        self.started = 0.0
        self.tripped = False
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self.threshold / self.window

    def record(self, failed: bool, now: float | None = None) -> bool:
        """Count one outcome; True exactly once, when the streak first becomes a drain."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not failed:
                self.count = 0
                return False
            if self.count == 0:
                self.started = now
            self.count += 1
            elapsed = max(now - self.started, 1e-6)
            if self.tripped or self.count <= self.threshold or self.count / elapsed < self.rate:
                return False
            self.tripped = True
            return True

    def snapshot(self) -> dict[str, float | int]:
        with self._lock:
            return {"count": self.count, "seconds": round(time.monotonic() - self.started, 3) if self.count else 0.0,
                    "threshold": self.threshold, "rate": self.rate}
