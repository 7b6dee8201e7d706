"""FakeBackend: a test double for the runner, shipped in the package so other projects' tests can use it too.

It runs nothing. It records each spec, appends the canned stdout/stderr to the job's files, optionally calls a
python ``script(spec, io)`` that plays the job (writes files into ``spec.workdir``, waits on ``io.cancel``,
raises :class:`~sandbox_runner.errors.BackendError` to simulate an engine failure) and returns its exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sandbox_runner.backends.base import ContainerSpec, JobIO, RunResult

#: Never a real pid (Linux pid_max is at most 2**22, pids are below it), so a runner that signals the pid it
#: was given cannot hit anything - least of all the test process itself.
FAKE_PID = 2**22

Script = Callable[[ContainerSpec, JobIO], "int | None"]


class FakeBackend:
    """Pretends to run jobs. ``calls`` lists every spec given to :meth:`run`, in order."""

    name = "fake"

    def __init__(self, script: Script | None = None, exit_code: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.script = script
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.calls: list[ContainerSpec] = []

    def run(self, spec: ContainerSpec, io: JobIO) -> RunResult:
        self.calls.append(spec)
        started = time.time()
        # Append like the real backends do (they never clobber what the runner wrote first).
        with open(io.stdout, "a", encoding="utf-8") as f:
            f.write(self.stdout)
        with open(io.stderr, "a", encoding="utf-8") as f:
            f.write(self.stderr)
        io.on_start(FAKE_PID, None)
        code = self.exit_code
        if self.script is not None:
            returned = self.script(spec, io)
            code = self.exit_code if returned is None else returned
        elif io.cancel.is_set():
            code = 128 + 15  # as if the stop signal (SIGTERM) had killed it
        return RunResult(
            exit_code=code,
            pid=FAKE_PID,
            started=started,
            ended=time.time(),
            container_id="fake-" + spec.name if spec.image else None,
            image_id=spec.image,
        )
