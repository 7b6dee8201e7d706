"""Execution backends: one method, ``run(spec, io) -> RunResult``.

``PodmanBackend`` (rootless Podman through its REST API), ``SubprocessBackend`` (bubblewrap or a plain subprocess
in its own session) and ``FakeBackend`` (a test double shipped with the package) share the contract in
:mod:`sandbox_runner.backends.base`. Import the concrete backends from their modules: they pull in heavy
dependencies (podman-py) that a dry run or the subprocess path should not pay for.
"""

from sandbox_runner.backends.base import Backend, ContainerSpec, JobIO, Mount, RunResult

__all__ = ["Backend", "ContainerSpec", "JobIO", "Mount", "RunResult"]
