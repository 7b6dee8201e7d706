"""Scrubbing shared scratch: job dirs of another user and busy mount points are skipped, named, and the ladder goes on.

Real parts: a second real user (created here, as root), the worker user ``srunner`` running the real
``sandbox-runner scrub``, and a tmpfs mounted on a job dir (the kernel refuses to rename a mount point: EBUSY).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fsjobs import T0, make_job_dir, tmpfs
from support.machine import REPO, Worker, require

from sandbox_runner.fspolicy import FsPolicy, admit
from sandbox_runner.testing import capture_events

MiB = 1 << 20
OTHER = "srforeign"


@pytest.fixture(scope="session")
def other_user() -> pwd.struct_passwd:
    """A second real user, the owner of someone else's old job dirs on shared scratch."""
    require(os.getuid() == 0, "creating a second user needs root")
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(OTHER)
    proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER],
                          capture_output=True, text=True)
    require(proc.returncode == 0 or "already exists" in proc.stderr, f"useradd {OTHER}: {proc.stderr.strip()}")
    return pwd.getpwnam(OTHER)


@contextlib.contextmanager
def busy(path: Path) -> Iterator[Path]:
    """A tmpfs mounted on ``path``: the dir is a mount point, and renaming it fails with EBUSY."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, text=True)
    require(proc.returncode == 0, f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
    try:
        # the mount hides the dir's own markers: give the mounted tree the same ones, as old
        st = os.stat(path.parent)
        (path / "_exit_code").write_text("0\n")
        (path / ".done").write_text("2025-01-01T00:00:00Z")
        for p in (*path.iterdir(), path):
            os.lchown(p, st.st_uid, st.st_gid)
            os.utime(p, (T0, T0), follow_symlinks=False)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def scratch(shared_dir: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs work root every user can reach (pytest's tmp_path is mode 700)."""
    with tmpfs(shared_dir / "mnt") as mnt:
        os.chmod(mnt, 0o755)
        root = mnt / "work"
        root.mkdir()
        yield root


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))):
            os.lchown(name, uid, gid)


def _policy(tmp_path: Path, percent: float) -> Path:
    path = tmp_path / "fs.toml"
    path.write_text(f"[free]\nspace_percent = {percent}\n")
    path.chmod(0o644)
    return path


def test_scrub_as_the_worker_skips_another_users_dir_and_a_busy_mount_and_frees_the_rest(
        scratch: Path, shared_dir: Path, worker: Worker, other_user: pwd.struct_passwd) -> None:
    # oldest first: someone else's dir, then a mount point, then three of the worker's own
    foreign = make_job_dir(scratch, 0, "foreign", "succeeded", size=2 * MiB)
    mounted = make_job_dir(scratch, 1, "mounted", "succeeded")
    own = [make_job_dir(scratch, 2 + i, f"own{i}", "succeeded", size=MiB) for i in range(3)]
    _chown_tree(scratch, worker.uid, worker.gid)
    _chown_tree(foreign, other_user.pw_uid, other_user.pw_gid)
    policy = _policy(shared_dir, 82)  # 20 MiB tmpfs, 5 MiB used, at most 3.6 may be: two own dirs must go
    with busy(mounted):
        proc = worker.run([str(REPO / ".venv/bin/sandbox-runner"), "scrub", "--work-root", str(scratch)],
                          env=worker.env(SANDBOX_RUNNER_POLICY=str(policy)))
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        lines = out.splitlines()
        assert lines[0].startswith("skipped") and str(foreign) in lines[0] and "EACCES" in lines[0], out
        assert lines[1].startswith("skipped") and str(mounted) in lines[1] and "EBUSY" in lines[1], out
        assert foreign.exists() and mounted.exists()
        assert [p.exists() for p in own] == [False, False, True], out
        assert "2 skipped" in lines[-1], out
        st = os.statvfs(scratch)
        assert st.f_bavail >= 0.82 * st.f_blocks


def test_scrub_names_the_shortfall_when_only_untouchable_dirs_are_left(
        scratch: Path, shared_dir: Path, worker: Worker, other_user: pwd.struct_passwd) -> None:
    foreign = make_job_dir(scratch, 0, "foreign", "succeeded", size=4 * MiB)
    _chown_tree(scratch, worker.uid, worker.gid)
    _chown_tree(foreign, other_user.pw_uid, other_user.pw_gid)
    proc = worker.run([str(REPO / ".venv/bin/sandbox-runner"), "scrub", "--work-root", str(scratch)],
                      env=worker.env(SANDBOX_RUNNER_POLICY=str(_policy(shared_dir, 95))))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and str(foreign) in proc.stdout and "Permission denied (EACCES)" in proc.stdout
    assert "is still" in proc.stdout and "short" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_admission_scrubs_past_a_busy_dir(fs: Path) -> None:
    mounted = make_job_dir(fs, 0, "mounted", "succeeded")
    own = [make_job_dir(fs, 1 + i, f"own{i}", "succeeded", size=4 * MiB) for i in range(3)]
    emitter, sink = capture_events("h")
    with busy(mounted):
        # 20 MiB with ~12 MiB used; 10 MiB must stay free and the job wants 2 MiB: one or two of own must go
        reservation = admit(fs, FsPolicy(space_percent=50), need_bytes=2 * MiB, job_id="new", emitter=emitter)
        reservation.release()
        skipped = [d["event"] for d in sink.docs() if d.get("status") == "skipped"]
        assert len(skipped) == 1 and skipped[0]["path"] == str(mounted) and "EBUSY" in skipped[0]["error"]
        assert mounted.exists() and not own[0].exists()
