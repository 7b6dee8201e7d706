"""The HySDS work dir contract (HYSDS-WORKER.md section 1.4).

``<root>/jobs/YYYY/MM/DD/HH/MI/<job_id>/`` holds ``.running`` (then ``.done``), ``_context.json``, ``_job.json``,
``_docker_params.json``, ``_run.sh``, ``_stdout.txt``, ``_stderr.txt``, ``_pid`` and ``_exit_code``.

``.running`` is also the job's liveness lock: the worker holds an ``flock`` on it for as long as the job runs, so a
scrubber can tell a running job (lock held) from a crashed one (marker present, lock free) without trusting
timestamps or PIDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runner.errors import BackendError
from sandbox_runner.workroot import WorkRoot

RUNNING = ".running"
DONE = ".done"


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1000000:06d}Z"


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write to a temp file and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class WorkDir:
    path: Path
    _lock_fd: int | None = field(default=None, repr=False)

    @classmethod
    def create(cls, root: Path, job_id: str, when: float | None = None) -> WorkDir:
        """Make a fresh, unique job dir and mark it running (with its lock held)."""
        if not job_id or "/" in job_id or job_id in (".", ".."):
            raise BackendError(f"job_id {job_id!r} cannot name a directory")
        base = WorkRoot(root).job_dir(job_id, time.time() if when is None else when)
        path = base
        for n in range(1, 1000):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()
                break
            except FileExistsError:
                # same job id started twice in one minute (a retry): keep both dirs, never reuse one
                path = base.with_name(f"{job_id}.{n}")
            except OSError as exc:
                raise BackendError(f"cannot create job dir {path}: {exc.strerror}") from None
        wd = cls(path)
        wd.mark_running()
        return wd

    # -- markers -------------------------------------------------------------------------------------------------
    def mark_running(self) -> None:
        fd = os.open(self.path / RUNNING, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _stamp().encode())
        self._lock_fd = fd

    def mark_done(self) -> None:
        """``.running`` -> ``.done`` (rename, then rewrite the timestamp), then let go of the lock."""
        running, done = self.path / RUNNING, self.path / DONE
        with contextlib.suppress(FileNotFoundError):
            os.replace(running, done)
        write_atomic(done, _stamp())
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def is_done(self) -> bool:
        return (self.path / DONE).exists()

    # -- files ---------------------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        write_atomic(self.path / name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def write_text(self, name: str, text: str, mode: int = 0o644) -> None:
        write_atomic(self.path / name, text, mode)

    def read_optional(self, name: str, limit: int = 1 << 20) -> str | None:
        """A job-written file (``_alt_error.txt`` ...), read bounded: a PGE could write gigabytes."""
        try:
            with (self.path / name).open("rb") as fh:
                return fh.read(limit).decode(errors="replace")
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return None

    def size_bytes(self) -> int:
        """``du -sb`` of the job dir (HySDS's job_dir_size), without following symlinks out of it."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in filenames + dirnames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total
