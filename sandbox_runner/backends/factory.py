"""Which backend runs a job: the one choice the pipeline leaves to its caller (tests pass their own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sandbox_runner.backends.base import Backend, ContainerSpec

if TYPE_CHECKING:
    from sandbox_runner.settings import Settings

#: Given the settings and the job's container spec, the backend that will run it.
BackendFactory = Callable[["Settings", ContainerSpec], Backend]


def default_backend_for(settings: Settings, spec: ContainerSpec) -> Backend:
    """podman for a job with an image (unless configured otherwise); subprocess for a job with none.

    The concrete backends are imported only when chosen: a dry run or a subprocess job never loads podman's."""
    if settings.backend == "fake":
        from sandbox_runner.backends.fake import FakeBackend

        return FakeBackend()
    if settings.backend == "subprocess" or spec.image is None:
        from sandbox_runner.backends.subprocess import SubprocessBackend

        use_bwrap = {"on": True, "off": False}.get(settings.bwrap)  # "auto": None, bwrap if installed
        return SubprocessBackend(env=settings.env, use_bwrap=use_bwrap)
    from sandbox_runner.backends.podman.backend import PodmanBackend

    return PodmanBackend(settings.podman_socket, worker=settings.worker_name)
