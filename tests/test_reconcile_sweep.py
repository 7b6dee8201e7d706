"""reconcile's session sweep, against real processes: what a dead run's session still holds is killed, and a
process that merely has the recorded pid (a reused pid) is never touched."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sandbox_runner.procstat import session_of, start_time
from sandbox_runner.worker.reconcile import _sweep_session


def _session_leader(*argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, start_new_session=True)
    deadline = time.monotonic() + 5
    while session_of(proc.pid) != proc.pid and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_the_recorded_session_is_killed(tmp_path: Path) -> None:
    leader = _session_leader("sh", "-c", "sleep 60 & wait")
    (tmp_path / "_pid").write_text(f"{leader.pid}\n")
    (tmp_path / "_pid_start").write_text(f"{start_time(leader.pid)}\n")
    try:
        time.sleep(0.2)  # the background sleep exists
        killed = _sweep_session(str(tmp_path))
        assert leader.pid in killed and len(killed) == 2, killed
        assert leader.wait(timeout=5) == -9
    finally:
        leader.kill()
        leader.wait()


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    stranger = _session_leader("sleep", "60")
    (tmp_path / "_pid").write_text(f"{stranger.pid}\n")
    (tmp_path / "_pid_start").write_text(f"{start_time(stranger.pid) - 1}\n")  # ours started earlier
    try:
        assert _sweep_session(str(tmp_path)) == []
        (tmp_path / "_pid_start").unlink()  # no start recorded: a live pid cannot be told apart, so left alone
        assert _sweep_session(str(tmp_path)) == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_no_pid_file_is_nothing_to_do(tmp_path: Path) -> None:
    assert _sweep_session(str(tmp_path)) == []
    (tmp_path / "_pid").write_text("1\n")
    assert _sweep_session(str(tmp_path)) == []


def test_members_outliving_their_leader_are_killed(tmp_path: Path) -> None:
    """The leader is gone: its pid cannot have been reused while its session has members, so they are the job's."""
    leader = _session_leader("sh", "-c", "sleep 60 & echo $!")
    (tmp_path / "_pid").write_text(f"{leader.pid}\n")
    (tmp_path / "_pid_start").write_text(f"{start_time(leader.pid)}\n")
    leader.wait(timeout=5)  # reaped: /proc/<pid> is gone, the background sleep lives on in the session
    members = [p for p in map(int, filter(str.isdigit, (e.name for e in Path("/proc").iterdir())))
               if session_of(p) == leader.pid]
    assert members, "the sleep did not outlive its leader"
    killed = _sweep_session(str(tmp_path))
    assert killed == members
    deadline = time.monotonic() + 5
    while any(session_of(p) == leader.pid for p in members) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(session_of(p) == leader.pid for p in members)
