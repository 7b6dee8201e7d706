"""Pilots from the queue: read how many jobs wait on the broker and which pilots Slurm already has for the queue,
and submit what the waiting jobs need, within a cap.

Never more while any pilot is pending: a pending pilot's workers will take the waiting jobs when it starts, and
submitting on every step while the scheduler is busy would fill the queue with pilots nobody needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox_runner.events.emitter import Emitter
from sandbox_runner.hpc.pilot import PilotRequest
from sandbox_runner.hpc.scheduler import Pilot


@dataclass(frozen=True)
class Decision:
    submit: int
    reason: str


def decide(depth: int, pilots: list[Pilot], slots_per_pilot: int, max_pilots: int) -> Decision:
    pending = sum(1 for p in pilots if p.state in ("PENDING", "CONFIGURING"))
    if depth <= 0:
        return Decision(0, "no jobs waiting")
    if pending:
        return Decision(0, f"{pending} pilot(s) pending: they take the waiting jobs when they start")
    room = max_pilots - len(pilots)
    if room <= 0:
        return Decision(0, f"at the cap: {len(pilots)} pilot(s), --max {max_pilots}")
    return Decision(min(room, math.ceil(depth / slots_per_pilot)), f"{depth} job(s) waiting")


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

    def step(self) -> Decision:
        depth, pilots = self.depth(), self.pilots()
        slots = self.request.nodes * self.request.workers_per_node * self.request.concurrency
        decision = decide(depth, pilots, slots, self.max_pilots)
        submitted = [self.submit(self.request) for _ in range(decision.submit)]
        event: dict[str, Any] = {
            "queue": self.request.queue, "depth": depth, "reason": decision.reason, "max": self.max_pilots,
            "pilots": {p.job_id: p.state for p in pilots}, "submitted": submitted}
        self.emitter.event("autoscale", "submitted" if submitted else "unchanged", event)
        return decision

    def loop(self, interval: float) -> None:
        while True:
            self.step()
            time.sleep(interval)
