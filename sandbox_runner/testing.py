"""Helpers for testing code that runs jobs, shipped in the package (as structlog ships ``structlog.testing``).

Our own tests use these, and so can a project that drives sandbox_runner::

    runner, events = fake_runner(tmp_path / "work", FakeBackend(exit_code=3))
    runner.run(job)
    assert events.terminal()["status"] == "job-failed"

Nothing here touches a container engine, Redis or a broker: :class:`CapturedEvents` keeps every document the run
emits, round-tripped through msgpack so a test sees exactly what a consumer of the status stream would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.events.emitter import Emitter
from sandbox_runner.events.sinks import MemorySink
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.settings import Settings, load_settings

__all__ = ["CapturedEvents", "FakeBackend", "capture_events", "fake_runner"]


class CapturedEvents(MemorySink):
    """Every document a run emitted, in order, with the views tests ask for most."""

    def jobs(self) -> list[dict[str, Any]]:
        """The job status documents (``resource: job``), in the order they were sent."""
        return [d for d in self.docs() if d.get("resource") == "job"]

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The event documents (``resource: event``), or only those of one ``type`` (``filesystem``, ...)."""
        return [d for d in self.docs()
                if d.get("resource") == "event" and (event_type is None or d.get("type") == event_type)]

    def status_history(self) -> list[str]:
        """The job statuses in the order they were sent (``job-started``, ``job-completed``, ...)."""
        return [str(d["status"]) for d in self.jobs()]

    def terminal(self) -> dict[str, Any]:
        """The one terminal status document; AssertionError (naming what was sent) unless exactly one."""
        ends = [d for d in self.jobs() if d.get("status") in TERMINAL_STATUSES]
        assert len(ends) == 1, f"expected exactly one terminal status, got {self.status_history()}"
        return ends[0]


def capture_events(hostname: str = "celery@test") -> tuple[Emitter, CapturedEvents]:
    """An emitter whose documents stay in memory, and the sink to read them back from."""
    sink = CapturedEvents()
    return Emitter(sink, hostname=hostname), sink


def fake_runner(work_root: Path | None = None, backend: FakeBackend | None = None, *,
                settings: Settings | None = None, env: Mapping[str, str] | None = None,
                hostname: str = "celery@test", **overrides: Any) -> tuple[JobRunner, CapturedEvents]:
    """A :class:`JobRunner` whose every job runs on ``backend`` (a fresh :class:`FakeBackend` by default).

    Settings come from ``settings`` when given, else from ``env`` (never the test process's own environment,
    so a developer's ``SANDBOX_RUNNER_*`` cannot change a test) plus ``overrides``; ``work_root`` sets
    ``SANDBOX_RUNNER_WORK_ROOT``. The disk threshold defaults to 0 % free, as test dirs live on whatever disk
    the machine has.
    """
    if settings is None:
        values = dict(env or {})
        if work_root is not None:
            values["SANDBOX_RUNNER_WORK_ROOT"] = str(work_root)
        overrides.setdefault("min_free_percent", 0.0)
        settings = load_settings(values, **overrides)
    chosen = backend if backend is not None else FakeBackend()
    emitter, events = capture_events(hostname)
    return JobRunner(settings, emitter, backend_for=lambda _settings, _spec: chosen), events
