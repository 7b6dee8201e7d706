"""A one-line progress display for transfers run from a terminal (``sandbox-runner run-job`` by hand).

Off when stderr is not a TTY (a Celery worker, CI, a pipe): log files get the per-file events instead of
carriage-return noise. Redraws at most a few times a second, whatever the number of concurrent downloads.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from sandbox_runner.units import format_size

_INTERVAL = 0.25


class Progress:
    def __init__(self, label: str, files: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.files = files
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done_files = 0
        self.bytes = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_mode(cls, mode: str, label: str, files: int, stream: TextIO | None = None) -> Progress:
        out = stream or sys.stderr
        enabled = mode == "always" or (mode == "auto" and bool(getattr(out, "isatty", lambda: False)()))
        return cls(label, files, stream=out, enabled=enabled)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self._maybe_draw()

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1
            self._maybe_draw(force=self.done_files == self.files)

    def _maybe_draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < _INTERVAL:
            return
        self._last = now
        rate = self.bytes / max(now - self._t0, 1e-6)
        line = (f"\r{self.label}: {self.done_files}/{self.files} files, {format_size(self.bytes)} "
                f"({format_size(int(rate))}/s)")
        self.stream.write(line.ljust(72))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._last:
            with self._lock:
                self._maybe_draw(force=True)
                self.stream.write("\n")
                self.stream.flush()
