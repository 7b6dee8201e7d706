"""Pilots from the queue: read how many jobs wait on the broker and which pilots Slurm already has for the queue,
and submit what the waiting jobs need, within a cap.

Never more while any pilot is pending: a pending pilot's workers will take the waiting jobs when it starts, and
submitting on every step while the scheduler is busy would fill the queue with pilots nobody needs.

Never one for jobs it cannot run: a job a pilot handed back for its walltime is on the status Redis
(hpc/misfits.py) with its time limit; when that limit exceeds this request's walltime less its grace, no pilot is
submitted for it, and the reason says to raise ``--time``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox_runner.events.emitter import Emitter
from sandbox_runner.hpc.misfits import MisfitBook
from sandbox_runner.hpc.pilot import PilotRequest, parse_walltime
from sandbox_runner.hpc.scheduler import Pilot


@dataclass(frozen=True)
class Decision:
    submit: int
    reason: str


def decide(depth: int, pilots: list[Pilot], slots_per_pilot: int, max_pilots: int,
           misfits: Sequence[float] = (), request: PilotRequest | None = None) -> Decision:
    """``misfits``: the time limits of jobs pilots handed back for their walltime (hpc/misfits.py). Those longer
    than the ``request``'s walltime less its grace cannot run in the pilot it would submit: no pilot for them."""
    pending = sum(1 for p in pilots if p.state in ("PENDING", "CONFIGURING"))
    if depth <= 0:
        return Decision(0, "no jobs waiting")
    if pending:
        return Decision(0, f"{pending} pilot(s) pending: they take the waiting jobs when they start")
    note = ""
    if request is not None:
        gives = parse_walltime(request.time) - request.grace
        too_long = sorted(limit for limit in misfits if limit > gives)
        if too_long:
            need = f"{_seconds(too_long[0])} s" if too_long[0] == too_long[-1] else \
                f"{_seconds(too_long[0])}-{_seconds(too_long[-1])} s"
            why = (f"a pilot with -t {request.time} and --grace {request.grace} gives {gives} s: raise --time")
            if depth <= len(too_long):
                return Decision(0, f"the waiting jobs need {need}; {why}")
            depth -= len(too_long)
            note = f" ({len(too_long)} more need {need}; {why})"
    room = max_pilots - len(pilots)
    if room <= 0:
        return Decision(0, f"at the cap: {len(pilots)} pilot(s), --max {max_pilots}{note}")
    return Decision(min(room, math.ceil(depth / slots_per_pilot)), f"{depth} job(s) waiting{note}")


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def queue_depth(broker_url: str, queue: str) -> int:
    """Messages ready on the queue (not those a worker already holds); 0 for a queue not declared yet."""
    from kombu import Connection
    from kombu.exceptions import ChannelError

    with Connection(broker_url, connect_timeout=10) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            return 0


@dataclass
class Autoscaler:
    request: PilotRequest
    max_pilots: int
    depth: Callable[[], int]
    pilots: Callable[[], list[Pilot]]
    submit: Callable[[PilotRequest], str]
    emitter: Emitter
    #: the jobs pilots handed back for their walltime (hpc/misfits.py); None without a status Redis
    book: MisfitBook | None = None

    def step(self) -> Decision:
        depth, pilots = self.depth(), self.pilots()
        slots = self.request.nodes * self.request.workers_per_node * self.request.concurrency
        misfits: list[float] = []
        if self.book is not None:
            if depth <= 0 and not pilots:
                self.book.forget(self.request.queue)  # nothing waits and no pilot holds a job
            else:
                misfits = self.book.limits(self.request.queue)
        decision = decide(depth, pilots, slots, self.max_pilots, misfits, self.request)
        submitted = [self.submit(self.request) for _ in range(decision.submit)]
        event: dict[str, Any] = {
            "queue": self.request.queue, "depth": depth, "reason": decision.reason, "max": self.max_pilots,
            "pilots": {p.job_id: p.state for p in pilots}, "submitted": submitted, "misfits": misfits}
        self.emitter.event("autoscale", "submitted" if submitted else "unchanged", event)
        return decision

    def loop(self, interval: float) -> None:
        while True:
            self.step()
            time.sleep(interval)
