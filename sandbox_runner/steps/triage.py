"""Triage post-step (placeholder until the data-in/out issue lands)."""

from __future__ import annotations

from sandbox_runner.steps.base import JobContext


def triage(ctx: JobContext) -> None:
    return None
