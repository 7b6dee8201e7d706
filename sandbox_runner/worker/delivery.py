"""What the Celery edge hands the worker service about one delivery of a job message (and nothing of Celery)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    """One delivery: the task id, the broker's delivery info (queue, redelivered flag), the time limits."""

    task_id: str
    delivery_info: dict[str, Any] = field(default_factory=dict)
    hard_limit: float | None = None
    soft_limit: float | None = None
