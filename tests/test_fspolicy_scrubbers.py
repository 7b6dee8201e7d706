"""The scrubbers outside admission: the periodic one between jobs, and ``sandbox-runner scrub [--dry-run]``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support.fsjobs import make_job_dir
from support.machine import REPO

from sandbox_runner.fspolicy import FsPolicy, PeriodicScrubber
from sandbox_runner.fspolicy.quarantine import entry_name
from sandbox_runner.testing import capture_events

MiB = 1 << 20


def _quarantined(root: Path, name: str, age: float) -> Path:
    path = root / "quarantine" / entry_name(4096, 2, "202501010000", name, time.time_ns() - int(age * 1e9))
    path.mkdir(parents=True)
    (path / "x").write_bytes(b"x")
    return path


def test_periodic_scrubber_runs_once_per_interval_and_purges_past_ttl(tmp_path: Path) -> None:
    root = tmp_path / "work"
    stale, fresh = _quarantined(root, "stale", 2 * 86400), _quarantined(root, "fresh", 60)
    now = [1000.0]
    emitter, sink = capture_events("h")
    periodic = PeriodicScrubber(root, FsPolicy(scrub_interval=600), emitter,
                                clock=lambda: now[0])
    first = periodic.maybe_run()
    assert first is not None and first.counts == {"purge": 1}
    assert not stale.exists() and fresh.exists()
    [event] = [d["event"] for d in sink.docs() if d.get("status") == "purged"]
    assert event["reason"] == "ttl" and event["bytes_freed"] == 4096 and event["job_id"] == "stale"
    now[0] += 599
    assert periodic.maybe_run() is None  # not due yet
    now[0] += 1
    assert periodic.maybe_run() is not None


def test_periodic_scrubber_survives_a_missing_root(tmp_path: Path) -> None:
    periodic = PeriodicScrubber(tmp_path / "nowhere", FsPolicy(), capture_events("h")[0])
    assert periodic.maybe_run() is None and not periodic.due()


def _cli(*args: str, **env: str) -> tuple[int, str]:
    """The real command line, in its own process (it configures logging for the whole process)."""
    proc = subprocess.run([sys.executable, "-m", "sandbox_runner.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", ""), **env}, timeout=60)
    return proc.returncode, proc.stdout


def test_scrub_cli_dry_run_prints_and_changes_nothing_then_does_it(fs: Path, tmp_path: Path) -> None:
    jobs = [make_job_dir(fs, i, f"s{i}", "succeeded", size=MiB) for i in range(4)]
    old_q = _quarantined(fs, "leftover", 60)
    policy = tmp_path / "fs.toml"
    # demand 90 % free: with ~4 MiB of jobs on 20 MiB that takes the leftover and the two oldest jobs
    policy.write_text('[free]\nspace_percent = 88\n')
    before = sorted(str(p) for p in fs.rglob("*"))

    code, out = _cli("scrub", "--dry-run", "--work-root", str(fs), SANDBOX_RUNNER_POLICY=str(policy))
    assert code == 0, out
    assert sorted(str(p) for p in fs.rglob("*")) == before  # a dry run touches nothing
    lines = out.splitlines()
    assert [ln.split()[:2] for ln in lines[:-1]] == [
        ["would", "quarantine"], ["would", "quarantine"], ["would", "purge"], ["would", "purge"]]
    assert str(jobs[0]) in lines[0] and "frees on purge 1.01 MiB" in lines[0] and str(jobs[1]) in lines[1]
    assert "leftover" in lines[2] and "(the job dirs quarantined above)" in lines[3]
    assert lines[-1].startswith("would free ")

    code, out = _cli("scrub", "--work-root", str(fs), SANDBOX_RUNNER_POLICY=str(policy))
    assert code == 0, out
    assert [p.exists() for p in jobs] == [False, False, True, True] and not old_q.exists()
    kinds = [ln.split()[0] for ln in out.splitlines()[:-1]]
    assert kinds == ["quarantined", "quarantined", "purged", "purged", "purged"]
    assert out.splitlines()[-1].startswith("freed 2.02 MiB")
    st = os.statvfs(fs)
    assert st.f_bavail >= 0.88 * st.f_blocks


def test_scrub_cli_on_a_missing_root(tmp_path: Path) -> None:
    code, out = _cli("scrub", "--work-root", str(tmp_path / "none"))
    assert code == 0 and "nothing to scrub" in out


def test_scrub_cli_says_when_the_threshold_cannot_be_met(fs: Path, tmp_path: Path) -> None:
    make_job_dir(fs, 0, "young_failure", "failed", size=MiB, age=60)  # within retention: not scrubbable
    policy = tmp_path / "fs.toml"
    policy.write_text('[free]\nspace_percent = 99.9\n')
    code, out = _cli("scrub", "--work-root", str(fs), SANDBOX_RUNNER_POLICY=str(policy))
    assert code == 1 and "is still" in out and "short: nothing more may be scrubbed" in out, out
