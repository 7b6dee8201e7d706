"""The backend contract: what a job's command needs to run, and what comes back.

A backend turns a :class:`ContainerSpec` into a running process (a container, a bubblewrap sandbox, a plain
subprocess), streams its stdout/stderr into the files named by :class:`JobIO` *while it runs*, and returns a
:class:`RunResult` once it has exited and been cleaned up (container removed). Backends raise only
:class:`sandbox_runner.errors.BackendError` / :class:`~sandbox_runner.errors.ImageError`; the job's own non-zero exit
is a normal result, not an exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

MountMode = Literal["ro", "rw"]


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``host`` is already normalized (realpath) and checked against the allow-list."""

    host: str
    container: str
    mode: MountMode = "ro"

    def as_dict(self) -> dict[str, str]:
        return {"host": self.host, "container": self.container, "mode": self.mode}


@dataclass(frozen=True)
class DependencyImage:
    """A job-spec ``dependency_images[]`` entry: an image loaded before the job (PGEs start it themselves)."""

    image: str
    image_url: str | None = None
    mounts: tuple[Mount, ...] = ()
    runtime_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to run one job's command, independent of the backend.

    ``workdir`` is the job dir; it is bind-mounted read-write at the same path inside the container and is the
    command's working directory. ``image`` is None for container-less jobs (subprocess backend only).
    """

    name: str
    image: str | None
    argv: tuple[str, ...]
    workdir: str
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    uid: int | None = None
    gid: int | None = None
    network: str = "none"
    labels: Mapping[str, str] = field(default_factory=dict)
    #: job-spec ``runtime_options`` (already ``$VAR``-expanded), mapped by each backend onto what it supports.
    runtime_options: Mapping[str, Any] = field(default_factory=dict)
    #: where to find/load the image when it is not present locally (``container_image_url``).
    image_url: str | None = None
    #: seconds between the stop signal and SIGKILL when the job is stopped from outside.
    stop_grace: float = 10.0
    #: images the backend makes present before the job starts (``job_specification.dependency_images``)
    dependencies: tuple[DependencyImage, ...] = ()
    #: the engine's socket, given to this job by the sharing policy (sandbox_runner.policy.sharing); None = not given
    engine_socket: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to ``_docker_params.json`` and printed by ``--dry-run``."""
        return {
            "name": self.name,
            "image": self.image,
            "image_url": self.image_url,
            "argv": list(self.argv),
            "workdir": self.workdir,
            "env": dict(self.env),
            "mounts": [m.as_dict() for m in self.mounts],
            "uid": self.uid,
            "gid": self.gid,
            "network": self.network,
            "labels": dict(self.labels),
            "runtime_options": dict(self.runtime_options),
            "dependency_images": [{"image": d.image, "image_url": d.image_url} for d in self.dependencies],
            "engine_socket": self.engine_socket,
        }


@dataclass
class JobIO:
    """Where a backend puts the job's output, and how it reports start and is told to stop.

    ``on_start(pid, container_id)`` is called once the process exists (the runner writes ``_pid``).
    ``cancel`` is set from another thread (signal handler, time limit, revoke): the backend then stops the job
    (stop signal, ``spec.stop_grace`` seconds, then kill) and returns the resulting exit code.
    """

    stdout: Path
    stderr: Path
    on_start: Callable[[int, str | None], None] = lambda pid, cid: None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    pid: int
    started: float  # time.time() when the process started
    ended: float  # time.time() when it exited
    container_id: str | None = None
    image_id: str | None = None
    #: set when the engine could not start the command at all (executable not found or not executable, the OCI
    #: runtime refused): a whole sentence with the engine's own reason. The job then fails with it rather than
    #: with HySDS's "Got non-zero exit code", which is kept for a command that ran and exited non-zero.
    engine_error: str | None = None


class Backend(Protocol):
    """One method: run the spec to completion, streaming output into ``io``."""

    name: str

    def run(self, spec: ContainerSpec, io: JobIO) -> RunResult: ...
