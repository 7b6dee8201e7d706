"""reconcile's sweep of a dead run's processes, against real processes: those carrying the run's token, and the
session of a supervisor still there, are killed; a process that merely has the recorded pid is never touched."""

from __future__ import annotations

import os
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


def test_the_run_is_found_by_its_token_in_any_session(tmp_path: Path) -> None:
    """The supervisor is gone (its pid may be anyone's by now): what carries its token dies, nothing else."""
    pid, start = 4194303, 12345  # a supervisor that no longer exists
    (tmp_path / "_pid").write_text(f"{pid}\n")
    (tmp_path / "_pid_start").write_text(f"{start}\n")
    ours = [subprocess.Popen(["sleep", "60"], start_new_session=new, env={
        **os.environ, "SANDBOX_RUNNER_SUPERVISOR": f"{pid}:{start}"}) for new in (False, True)]
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, "SANDBOX_RUNNER_SUPERVISOR": f"{pid}:{start + 1}"})
    try:
        time.sleep(0.1)  # exec'ed: /proc/<pid>/environ is sleep's
        assert sorted(_sweep_session(str(tmp_path))) == sorted(p.pid for p in ours)
        assert [p.wait(timeout=5) for p in ours] == [-9, -9]
        assert other.poll() is None
    finally:
        for p in [*ours, other]:
            p.kill()
            p.wait()
