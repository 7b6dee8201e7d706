"""Scrubs outside admission: the periodic one a long-running worker runs between jobs, and ``sandbox-runner scrub``.

Both do the same thing: housekeeping (quarantine past its TTL, the cache over its cap, crashed jobs reported),
then the ladder up to the policy's thresholds plus what running jobs have reserved, all under the root lock so
they never race an admission.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_runner.fspolicy.admission import live_reservations, root_lock
from sandbox_runner.fspolicy.ladder import Scrubber
from sandbox_runner.fspolicy.policy import FsPolicy
from sandbox_runner.fspolicy.report import Action, Report, Space

if TYPE_CHECKING:
    from sandbox_runner.events.emitter import Emitter


def scrub_once(root: str | Path, policy: FsPolicy, emitter: Emitter | None = None, *, dry_run: bool = False,
               on_action: Callable[[Action], None] | None = None, protect: Iterable[str | Path] = ()) -> Report:
    real = os.path.realpath(root)
    with root_lock(real):
        scrubber = Scrubber(real, policy, emitter, protect=protect, dry_run=dry_run, on_action=on_action)
        scrubber.housekeeping()
        reserved = live_reservations(real, clean=not dry_run)
        space = Space.of(real)
        keep_b, keep_i = policy.keep_free(space.capacity, space.files)
        scrubber.ladder(keep_b + reserved.bytes, keep_i + reserved.inodes)
    return scrubber.report


class PeriodicScrubber:
    """Call :meth:`maybe_run` between jobs; it scrubs at most once per ``scrub.interval`` of the policy.

    The first call scrubs at once: a worker that starts after a crash should find its predecessor's mess early.
    """

    def __init__(self, root: str | Path, policy: FsPolicy, emitter: Emitter | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.policy, self.emitter, self.clock = root, policy, emitter, clock
        self._next: float | None = None
        self.last: Report | None = None

    def due(self) -> bool:
        return self._next is None or self.clock() >= self._next

    def maybe_run(self, protect: Iterable[str | Path] = ()) -> Report | None:
        if not self.due():
            return None
        # schedule from the start: a scrub that fails (root gone, permissions) is retried next interval, not
        # on every call in a tight loop between jobs
        self._next = self.clock() + self.policy.scrub_interval
        try:
            self.last = scrub_once(self.root, self.policy, self.emitter, protect=protect)
        except OSError as exc:
            if self.emitter is not None:
                self.emitter.log.warning("scrub failed", root=str(self.root), error=str(exc))
            return None
        return self.last
