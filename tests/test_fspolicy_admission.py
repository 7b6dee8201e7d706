"""Admission with reservations: concurrent processes cannot overcommit, a dead process's reservation goes with
it, the runner reserves before the work dir and releases at close-up, and a refusal is one readable job-failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.jobs import make_job
from support.machine import REPO

from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.fspolicy import FsPolicy
from sandbox_runner.fspolicy.admission import live_reservations, root_lock
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, fake_runner

MiB = 1 << 20

# A worker process in miniature: wait for "go", admit, say how it went, hold the reservation until stdin closes.
ADMITTER = """
import sys
from sandbox_runner.errors import DiskSpaceError
from sandbox_runner.fspolicy import FsPolicy, admit
root, need = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()
try:
    r = admit(root, FsPolicy(space_percent=10.0, job_inodes=1), need_bytes=need, job_id=sys.argv[3])
except DiskSpaceError as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(0)
print("ADMITTED", flush=True)
sys.stdin.read()
r.release()
"""


def _headroom(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize - -(-st.f_blocks * st.f_frsize // 10)


def _spawn(root: Path, need: int, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", ADMITTER, str(root), str(need), name], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_concurrent_admissions_cannot_overcommit(fs: Path) -> None:
    need = int(_headroom(fs) * 0.4)  # two fit, a third would not
    procs = [_spawn(fs, need, f"job{i}") for i in range(6)]
    time.sleep(0.5)  # let them all start up and wait on stdin
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    answers = [p.stdout.readline().split()[0] for p in procs if p.stdout is not None]
    assert answers.count("ADMITTED") == 2, answers
    with root_lock(str(fs)):
        assert live_reservations(str(fs)).bytes == 2 * need
    # a reservation dies with its process: SIGKILL one holder, and a new job fits again
    holder = next(p for p, a in zip(procs, answers, strict=True) if a == "ADMITTED")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    late = _spawn(fs, need, "late")
    out, _ = late.communicate("go\n", timeout=30)
    assert out.startswith("ADMITTED"), out
    for p in procs:
        if p.poll() is None:
            p.communicate("", timeout=30)
    with root_lock(str(fs)):
        assert live_reservations(str(fs)).jobs == 0
    assert list((fs / "reservations").iterdir()) == []


def test_refusals_from_concurrent_admissions_say_what_is_reserved(fs: Path) -> None:
    need = int(_headroom(fs) * 0.8)
    first, second = _spawn(fs, need, "a"), _spawn(fs, need, "b")
    assert first.stdin is not None
    first.stdin.write("go\n")
    first.stdin.flush()
    assert first.stdout is not None and first.stdout.readline().startswith("ADMITTED")
    out, _ = second.communicate("go\n", timeout=30)
    assert out.startswith("REFUSED") and "reserved by 1 running job(s)" in out, out
    first.communicate("", timeout=30)


def _runner(root: Path, backend: FakeBackend, policy: Path | None = None) -> tuple[JobRunner, CapturedEvents]:
    env = {"SANDBOX_RUNNER_WORK_ROOT": str(root)}
    if policy is not None:
        env["SANDBOX_RUNNER_POLICY"] = str(policy)
    return fake_runner(backend=backend, settings=load_settings(env), hostname="h")


def test_the_runner_holds_a_reservation_while_the_job_runs_and_releases_it(fs: Path) -> None:
    seen: list[int] = []

    def play(spec: ContainerSpec, io: JobIO) -> int:
        with root_lock(str(fs)):
            seen.append(live_reservations(str(fs)).bytes)
        return 0

    runner, _ = _runner(fs, FakeBackend(script=play))
    job = make_job("echo hi", image=None)
    job["params"]["_disk_usage"] = "3MB"
    outcome = runner.run(job)
    assert outcome.ok, outcome.error
    assert seen == [3 * MiB]
    assert list((fs / "reservations").iterdir()) == []


def test_a_refused_job_is_one_job_failed_saying_needed_and_free(fs: Path) -> None:
    runner, sink = _runner(fs, FakeBackend())
    job = make_job("echo hi", image=None)
    job["params"]["_disk_usage"] = "100GB"
    outcome = runner.run(job)
    terminal = [d for d in sink.docs() if d.get("resource") == "job" and d["status"] in TERMINAL_STATUSES]
    assert [d["status"] for d in terminal] == ["job-failed"] and outcome.job_dir is None
    error = terminal[0]["error"]
    assert "not enough disk space" in error and "needs 100 GiB" in error and " is free" in error, error
    assert [d["status"] for d in sink.docs() if d.get("resource") == "job"] == ["job-failed"]
    assert [d["status"] for d in sink.docs() if d.get("type") == "filesystem"] == ["refused"]
    assert not (fs / "jobs").exists()


def test_a_malformed_disk_usage_is_a_clear_job_failed(fs: Path) -> None:
    runner, _ = _runner(fs, FakeBackend())
    job = make_job("echo hi", image=None)
    job["params"]["_disk_usage"] = "1.5XB"
    outcome = runner.run(job)
    assert outcome.status == "job-failed" and outcome.job_dir is None
    assert "'1.5XB': expected a number and a unit" in (outcome.error or ""), outcome.error


def test_an_invalid_policy_file_fails_the_job_naming_the_field(fs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "fs.toml"
    bad.write_text('[retention]\nfailed = "forever"\n')
    runner, _ = _runner(fs, FakeBackend(), policy=bad)
    outcome = runner.run(make_job("echo hi", image=None))
    assert outcome.status == "job-failed"
    assert f"{bad}: retention.failed: 'forever' is not a duration" in (outcome.error or "")


def test_reservations_count_against_later_admissions_in_process(fs: Path) -> None:
    from sandbox_runner.errors import DiskSpaceError
    from sandbox_runner.fspolicy import admit

    policy = FsPolicy(job_inodes=1)
    half = _headroom(fs) // 2 + 4096  # two of these do not fit
    r = admit(fs, policy, need_bytes=half, job_id="a")
    with pytest.raises(DiskSpaceError):
        admit(fs, policy, need_bytes=half, job_id="b")
    r.release()
    r.release()  # idempotent
    admit(fs, policy, need_bytes=half, job_id="c").release()


def test_a_job_runs_on_a_disk_that_had_no_inode_left(fs: Path) -> None:
    """Zero free inodes: no quarantine dir can be made (purged in place), then the reservation file fits."""
    old = fs / "jobs" / "2025" / "01" / "01" / "00" / "00" / "hoarder"
    old.mkdir(parents=True)
    (old / "_exit_code").write_text("0\n")
    (old / ".done").write_text("2025-01-01T00:00:00Z")
    os.utime(old / ".done", (0, 0))
    with pytest.raises(OSError):
        for i in range(10**6):
            (old / f"f{i}").touch()
    assert os.statvfs(fs).f_favail == 0
    runner, sink = _runner(fs, FakeBackend())
    outcome = runner.run(make_job("echo hi", image=None))
    assert outcome.ok, outcome.error
    assert not old.exists()
    purged = [d["event"] for d in sink.docs() if d.get("type") == "filesystem" and d["status"] == "purged"]
    assert [e["job_id"] for e in purged] == ["hoarder"] and purged[0]["inodes"] > 1900
