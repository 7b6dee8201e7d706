"""Scrubbing shared scratch: job dirs of another user and busy mount points are skipped, named, and the ladder goes on.

Real parts: a second real user (created here, as root), the worker user ``srunner`` running the real
``sandbox-runner scrub``, and a tmpfs mounted on a job dir (the kernel refuses to rename a mount point: EBUSY).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fsjobs import PAGE, T0, fill, make_job_dir, tmpfs
from support.machine import REPO, Worker, require

from sandbox_runner.fspolicy import FsPolicy, admit
from sandbox_runner.fspolicy.quarantine import entry_name
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


def _scrub(worker: Worker, root: Path, policy: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return worker.run([str(REPO / ".venv/bin/sandbox-runner"), "scrub", "--work-root", str(root), *extra],
                      env=worker.env(SANDBOX_RUNNER_POLICY=str(policy)))


def _lock_out(path: Path, mode: int = 0o700) -> None:
    """``path`` owned by root with ``mode``: the worker may not list it (nor anything under it)."""
    os.chown(path, 0, 0)
    os.chmod(path, mode)


def test_scrub_skips_an_unlistable_time_level_and_frees_the_rest(
        scratch: Path, shared_dir: Path, worker: Worker) -> None:
    hidden = make_job_dir(scratch, 0, "hidden", "succeeded", size=2 * MiB)  # hour 00
    own = [make_job_dir(scratch, 60 + i, f"own{i}", "succeeded", size=MiB) for i in range(3)]  # hour 01
    _chown_tree(scratch, worker.uid, worker.gid)
    hour = hidden.parents[1]
    _lock_out(hour)
    proc = _scrub(worker, scratch, _policy(shared_dir, 82))  # 5 MiB used, at most 3.6 may be: two own must go
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and f"{hour} " in skipped[0] and "EACCES" in skipped[0], out
    assert [p.exists() for p in own] == [False, False, True], out
    assert "1 skipped" in out.splitlines()[-1], out
    os.chmod(hour, 0o755)
    assert hidden.exists()


def test_scrub_reports_another_users_private_finished_dir(
        scratch: Path, shared_dir: Path, worker: Worker, other_user: pwd.struct_passwd) -> None:
    foreign = make_job_dir(scratch, 0, "foreign", "succeeded", size=2 * MiB)
    own = [make_job_dir(scratch, 1 + i, f"own{i}", "succeeded", size=MiB) for i in range(3)]
    _chown_tree(scratch, worker.uid, worker.gid)
    _chown_tree(foreign, other_user.pw_uid, other_user.pw_gid)
    foreign.chmod(0o700)  # its lock cannot be probed: not touched, but said so
    proc = _scrub(worker, scratch, _policy(shared_dir, 82))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and str(foreign) in skipped[0] and "EACCES" in skipped[0], out
    assert foreign.exists() and [p.exists() for p in own] == [False, False, True], out
    assert "1 skipped" in out.splitlines()[-1], out


# admission as the worker: what skip events it sends, whether it admitted, as JSON on stdout
ADMIT_AS_WORKER = """
import json, sys
from sandbox_runner.errors import DiskSpaceError
from sandbox_runner.fspolicy import FsPolicy, admit
from sandbox_runner.fspolicy.quarantine import entry_name
from sandbox_runner.testing import capture_events
emitter, sink = capture_events("h")
try:
    admit(sys.argv[1], FsPolicy(space_percent=float(sys.argv[2])), need_bytes=0, job_id="new",
          emitter=emitter).release()
    outcome = "admitted"
except DiskSpaceError as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "events": [d["event"] | {"status": d["status"]} for d in sink.docs()]}))
"""


def _admit_as(worker: Worker, root: Path, percent: float) -> dict[str, Any]:
    proc = worker.run([str(REPO / ".venv/bin/python"), "-c", ADMIT_AS_WORKER, str(root), str(percent)], cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])  # after the log lines
    return doc


def test_admission_as_the_worker_skips_unlistable_and_private_dirs_and_admits(
        scratch: Path, worker: Worker, other_user: pwd.struct_passwd) -> None:
    hidden = make_job_dir(scratch, 0, "hidden", "succeeded", size=MiB)  # hour 00, not listable
    foreign = make_job_dir(scratch, 60, "foreign", "succeeded", size=MiB)  # hour 01, another user's, 0700
    own = [make_job_dir(scratch, 61 + i, f"own{i}", "succeeded", size=MiB) for i in range(3)]
    _chown_tree(scratch, worker.uid, worker.gid)
    _chown_tree(foreign, other_user.pw_uid, other_user.pw_gid)
    foreign.chmod(0o700)
    _lock_out(hidden.parents[1])
    doc = _admit_as(worker, scratch, 82)  # 5 MiB used, at most 3.6 may be: two own must go
    assert doc["outcome"] == "admitted", doc
    skipped = [(e["path"], e["error"]) for e in doc["events"] if e["status"] == "skipped"]
    assert [p for p, _ in skipped] == [str(hidden.parents[1]), str(foreign)], skipped
    assert all("EACCES" in err for _, err in skipped), skipped
    assert [p.exists() for p in own] == [False, False, True]


def _stuck_entry(root: Path, size: int) -> Path:
    """A quarantine entry the worker cannot purge: its data sits in a root-owned 0700 dir (EACCES inside it)."""
    qdir = root / "quarantine"
    qdir.mkdir(exist_ok=True)
    entry = qdir / entry_name(size + 2 * PAGE, 3, "202501010000", "stuck", time.time_ns())
    (entry / "private").mkdir(parents=True)
    fill(entry / "private" / "data.bin", size)
    return entry


def test_an_entry_that_cannot_be_purged_does_not_stop_the_job_rungs(
        scratch: Path, shared_dir: Path, worker: Worker) -> None:
    own = [make_job_dir(scratch, i, f"own{i}", "succeeded", size=MiB) for i in range(4)]
    entry = _stuck_entry(scratch, MiB)
    _chown_tree(scratch, worker.uid, worker.gid)
    _lock_out(entry / "private")
    policy = _policy(shared_dir, 82)  # 5 MiB used, at most 3.6 may be: the entry cannot go, two own must
    for attempt in range(2):  # and the next scrub does the same, not "nothing more may be scrubbed"
        proc = _scrub(worker, scratch, policy)
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        assert f"purged           {entry}" in out and "FAILED" in out and "EACCES" in out, out
        assert [p.exists() for p in own] == [False, False, attempt == 0, True], out
        if attempt == 0:
            for p in own[2:]:  # 4 MiB used again: the entry alone would cover the shortfall, if it could go
                fill(p / "more.bin", MiB // 2)
                os.chown(p / "more.bin", worker.uid, worker.gid)
    assert entry.exists()


def test_admission_purges_past_a_busy_entry_and_counts_what_it_freed(fs: Path) -> None:
    own = [make_job_dir(fs, i, f"own{i}", "succeeded", size=2 * MiB) for i in range(3)]
    qdir = fs / "quarantine"
    qdir.mkdir()
    # measured when it came in, with its mount's contents: 4 MiB, of which 1 MiB sits on this filesystem
    entry = qdir / entry_name(4 * MiB + 3 * PAGE, 4, "202501010000", "busy", time.time_ns())
    entry.mkdir()
    fill(entry / "data.bin", MiB)
    (entry / "mnt").mkdir()
    emitter, sink = capture_events("h")
    with busy(entry / "mnt"):  # a mount inside the entry: its purge ends EBUSY, after the 1 MiB went
        # 20 MiB, 7 MiB used; 15 MiB must stay free: the entry's 1 MiB is not enough, one own dir must go too
        reservation = admit(fs, FsPolicy(space_percent=75), need_bytes=0, job_id="new", emitter=emitter)
        reservation.release()
        purged = [d["event"] for d in sink.docs() if d.get("status") == "purged"]
        assert purged[0]["path"] == str(entry) and "EBUSY" in purged[0]["error"], purged
        assert MiB <= purged[0]["bytes_freed"] <= MiB + 3 * PAGE, purged[0]
        assert [p.exists() for p in own] == [False, True, True]
        assert [p["job_id"] for p in purged[1:]] == ["own0"] and purged[1]["bytes_freed"] >= 2 * MiB, purged


def _outcome(proc: subprocess.CompletedProcess[str], dry: bool) -> tuple[int, list[str], list[str]]:
    """(exit status, dirs skipped, job dirs quarantined) as the scrub printed them."""
    lines = proc.stdout.splitlines()
    skip, move = ("would skip", "would quarantine") if dry else ("skipped", "quarantined")
    skipped = [line.split()[2 if dry else 1] for line in lines if line.startswith(skip)]
    moved = [line.split()[2 if dry else 1].rsplit(".", 1)[-1].rsplit("/", 1)[-1] for line in lines
             if line.startswith(move)]
    return proc.returncode, skipped, moved


@pytest.mark.parametrize("percent", [82, 95])  # met after skipping three dirs; short even with all own dirs gone
def test_a_dry_run_predicts_the_skips_and_the_exit_status_of_the_real_run(
        scratch: Path, shared_dir: Path, worker: Worker, other_user: pwd.struct_passwd, percent: int) -> None:
    foreign = make_job_dir(scratch, 0, "foreign", "succeeded", size=MiB)  # not writable by the worker: EACCES
    sticky = make_job_dir(scratch, 1, "sticky", "succeeded", size=MiB)  # in a sticky dir of root's: EPERM
    mounted = make_job_dir(scratch, 2, "mounted", "succeeded")  # a mount point: EBUSY
    own = [make_job_dir(scratch, 3 + i, f"own{i}", "succeeded", size=MiB) for i in range(3)]
    _chown_tree(scratch, worker.uid, worker.gid)
    for path in (foreign, sticky):
        _chown_tree(path, other_user.pw_uid, other_user.pw_gid)
    sticky.chmod(0o777)
    _lock_out(sticky.parent, 0o1777)
    policy = _policy(shared_dir, percent)  # 5 MiB used; 82 %: at most 3.6 may be, two own dirs must go
    with busy(mounted):
        dry = _outcome(_scrub(worker, scratch, policy, "--dry-run"), True)
        real = _outcome(_scrub(worker, scratch, policy), False)
    assert real[1] == [str(foreign), str(sticky), str(mounted)], real
    assert dry == real
    assert real[0] == (0 if percent == 82 else 1)
    assert real[2] == [p.name for p in own][: 2 if percent == 82 else 3], real


def test_a_purge_that_fails_part_way_reports_what_it_freed(fs: Path) -> None:
    qdir = fs / "quarantine"
    qdir.mkdir()
    entry = qdir / entry_name(3 * MiB + 2 * PAGE, 3, "202501010000", "busy", time.time_ns())
    entry.mkdir()
    fill(entry / "data.bin", 3 * MiB)
    (entry / "mnt").mkdir()
    emitter, sink = capture_events("h")
    with busy(entry / "mnt"):
        # 20 MiB, 3 MiB used, 18 MiB must stay free: the entry's 3 MiB go, its mount point stays (EBUSY)
        admit(fs, FsPolicy(space_percent=90), need_bytes=0, job_id="new", emitter=emitter).release()
        purged = [d["event"] for d in sink.docs() if d.get("status") == "purged"]
        assert len(purged) == 1 and "EBUSY" in purged[0]["error"], purged
        assert 3 * MiB <= purged[0]["bytes_freed"] <= 3 * MiB + 2 * PAGE, purged[0]
