"""Helpers for the filesystem-policy tests: a real small filesystem (tmpfs) and HySDS job dirs in known states."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from sandbox_runner.workroot import WorkRoot
from support.machine import require

#: the layout's clock for test jobs: minute i of 2025-01-01 (UTC); paths sort by i
T0 = 1735689600.0
PAGE = 4096


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "20m", inodes: int = 2000) -> Iterator[Path]:
    """Mount a size- and inode-limited tmpfs at ``path`` (root only: skipped locally without, fails under CI)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    require(proc.returncode == 0, f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, size: int) -> None:
    """A file that really occupies ``size`` bytes (written, not sparse)."""
    with path.open("wb") as fh:
        chunk = b"x" * (1 << 20)
        left = size
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


def make_job_dir(root: Path, minute: int, job_id: str, state: str, *, size: int = 0, files: int = 0,
                 age: float = 30 * 86400, locks: list[int] | None = None) -> Path:
    """A job dir at start minute ``minute``, last touched ``age`` seconds ago.

    ``state``: succeeded | failed (``.done`` + ``_exit_code``), running (``.running`` with its flock held on an fd
    appended to ``locks``), crashed (``.running``, lock free), bare (no marker at all).
    """
    path = WorkRoot(root).job_dir(job_id, T0 + 60 * minute)
    path.mkdir(parents=True)
    if size:
        fill(path / "data.bin", size)
    for i in range(files):
        (path / f"f{i}").write_bytes(b"1")
    if state in ("succeeded", "failed"):
        (path / "_exit_code").write_text("0\n" if state == "succeeded" else "1\n")
        (path / ".done").write_text("2025-01-01T00:00:00Z")
    elif state in ("running", "crashed"):
        fd = os.open(path / ".running", os.O_RDWR | os.O_CREAT, 0o644)
        if state == "running":
            assert locks is not None, "a running job needs somewhere to keep its lock"
            fcntl.flock(fd, fcntl.LOCK_EX)
            locks.append(fd)
        else:
            os.close(fd)
    else:
        assert state == "bare", state
    when = time.time() - age
    for p in (*path.iterdir(), path):
        os.utime(p, (when, when), follow_symlinks=False)
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
