"""The pipeline's tiny protocol: a step has a name and ``run(ctx)``; the runner calls them in order.

:class:`JobContext` is the one mutable object a job's steps share. ``ctx.job`` is the job JSON as a dict (HySDS
steps mutate it, e.g. ``job_info.metrics``); ``ctx.model`` is its typed, validated view.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from sandbox_runner.backends.base import Backend, ContainerSpec, RunResult
    from sandbox_runner.events.emitter import Emitter
    from sandbox_runner.job.workdir import WorkDir
    from sandbox_runner.models import DatasetsConfig, Job, WorkConfig
    from sandbox_runner.settings import Settings


@dataclass
class JobContext:
    job: dict[str, Any]
    settings: Settings
    emitter: Emitter
    model: Job | None = None
    work_cfg: WorkConfig | None = None
    datasets_cfg: DatasetsConfig | None = None
    work_root: Path | None = None
    workdir: WorkDir | None = None
    #: the ``_context.json`` document (HySDS passes it to every pre/post step as ``ctx``)
    context: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    spec: ContainerSpec | None = None
    backend: Backend | None = None
    result: RunResult | None = None
    #: set by another thread (signal, time limit, revoke) to stop the job's command
    cancel: threading.Event = field(default_factory=threading.Event)
    #: a status other than job-failed to end with when cancelled (``job-terminated`` ...), and its signum
    interrupt: tuple[str, str, int | None] | None = None
    started_emitted: bool = False
    pre_steps: list[str] = field(default_factory=list)
    post_steps: list[str] = field(default_factory=list)
    #: facts for steps to share (e.g. the datasets published), keyed by step name
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def job_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.job.setdefault("job_info", {})
        return info

    @property
    def job_dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("job dir not created yet")  # a pipeline ordering bug, not user input
        return self.workdir.path

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code if self.result is not None else None


class Step(Protocol):
    """One stage of the job pipeline."""

    name: ClassVar[str]
    #: runs even after an earlier step failed (as long as the job dir exists): post-processing, triage.
    always: ClassVar[bool]

    def run(self, ctx: JobContext) -> None: ...
