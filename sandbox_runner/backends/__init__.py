"""Execution backends: one method, ``run(spec, io) -> RunResult``.

``PodmanBackend`` (rootless Podman through its REST API), ``SubprocessBackend`` (bubblewrap or a plain subprocess
in its own session) and ``FakeBackend`` (a test double shipped with the package) share the contract in
:mod:`sandbox_runner.backends.base`. Import the concrete backends from their modules, so a dry run or the
subprocess path does not import the podman client (HTTP over the unix socket, image loading, log following).
"""

from sandbox_runner.backends.base import Backend, ContainerSpec, JobIO, Mount, RunResult

__all__ = ["Backend", "ContainerSpec", "JobIO", "Mount", "RunResult"]
