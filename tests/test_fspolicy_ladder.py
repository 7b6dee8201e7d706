"""The scrub ladder on a real small filesystem (a 20 MiB, 2000-inode tmpfs): order, exactly enough, what it never
touches (running jobs, symlink targets outside the root), crashed jobs, the localize cache, inode exhaustion."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fsjobs import PAGE, fill, free_bytes, make_job_dir

from sandbox_runner.data.localize.cache import url_key
from sandbox_runner.errors import DiskSpaceError
from sandbox_runner.fspolicy import FsPolicy, admit, scrub_once
from sandbox_runner.fspolicy.ladder import Scrubber
from sandbox_runner.testing import CapturedEvents, capture_events

MiB = 1 << 20
POLICY = FsPolicy(space_percent=10.0, inodes_percent=5.0, job_inodes=10, succeeded_retention=0,
                  failed_retention=3 * 86400, crashed_grace=3600, quarantine_ttl=86400)


@pytest.fixture
def locks() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _events(sink: CapturedEvents, status: str) -> list[dict[str, Any]]:
    return [d["event"] for d in sink.docs() if d.get("type") == "filesystem" and d["status"] == status]


def _scenario(root: Path, locks: list[int]) -> dict[str, Path]:
    """Six old successes, failures old and young, crashes old and young, a bare dir, two running jobs."""
    jobs = {f"s{i}": make_job_dir(root, 10 + i, f"s{i}", "succeeded", size=MiB) for i in range(6)}
    jobs["f_old"] = make_job_dir(root, 11, "f_old", "failed", size=MiB)  # minute 11: between s1 and s2
    jobs["f_young"] = make_job_dir(root, 12, "f_young", "failed", size=MiB, age=3600)
    jobs["c_old"] = make_job_dir(root, 13, "c_old", "crashed", size=MiB, age=2 * 3600)
    jobs["c_young"] = make_job_dir(root, 14, "c_young", "crashed", size=MiB, age=600)
    jobs["bare"] = make_job_dir(root, 15, "bare", "bare", size=MiB, age=60)
    jobs["r_old"] = make_job_dir(root, 0, "r_old", "running", size=MiB, locks=locks)  # the oldest of all
    jobs["r_mid"] = make_job_dir(root, 12, "r_mid", "running", size=MiB, locks=locks)
    return jobs


def _need_to_free(root: Path, amount: int) -> int:
    """The disk_usage that makes the ladder free ``amount`` bytes (10 % of the filesystem must stay free)."""
    st = os.statvfs(root)
    keep = -(-st.f_blocks * st.f_frsize // 10)
    return st.f_bavail * st.f_frsize - keep + amount


def test_ladder_frees_exactly_enough_oldest_successes_first(fs: Path, locks: list[int]) -> None:
    jobs = _scenario(fs, locks)
    emitter, sink = capture_events("h")
    need = _need_to_free(fs, 2 * MiB + MiB // 2)  # two and a half successes' worth
    reservation = admit(fs, POLICY, need_bytes=need, job_id="new", emitter=emitter)
    gone = sorted(name for name, path in jobs.items() if not path.exists())
    assert gone == ["s0", "s1", "s2"]
    quarantined = [e["job_id"] for e in _events(sink, "quarantined")]
    purged = [e["job_id"] for e in _events(sink, "purged")]
    assert quarantined == purged == ["s0", "s1", "s2"]  # oldest first, each purge reports its bytes
    assert all(e["bytes_freed"] > MiB for e in _events(sink, "purged"))
    # exactly enough: the target holds now, and would not have without the last purge
    st = os.statvfs(fs)
    want = -(-st.f_blocks * st.f_frsize // 10) + need
    last = _events(sink, "purged")[-1]["bytes_freed"]
    assert want <= free_bytes(fs) < want + last
    assert not any((fs / "quarantine").iterdir())
    reservation.release()


def test_then_failed_past_retention_and_crashed_past_grace_in_time_order(fs: Path, locks: list[int]) -> None:
    jobs = _scenario(fs, locks)
    emitter, sink = capture_events("h")
    need = _need_to_free(fs, 7 * MiB + MiB // 2)  # all six successes, then f_old, then part of c_old
    admit(fs, POLICY, need_bytes=need, job_id="new", emitter=emitter).release()
    order = [e["job_id"] for e in _events(sink, "purged")]
    assert order == ["s0", "s1", "s2", "s3", "s4", "s5", "f_old", "c_old"]
    survivors = sorted(name for name, path in jobs.items() if path.exists())
    assert survivors == ["bare", "c_young", "f_young", "r_mid", "r_old"]
    crashed = _events(sink, "crashed-job")
    assert [e["job_id"] for e in crashed] == ["c_old"] and crashed[0]["idle_seconds"] >= 3600


def test_refused_with_needed_and_free_when_nothing_more_can_go(fs: Path, locks: list[int]) -> None:
    jobs = _scenario(fs, locks)
    emitter, sink = capture_events("h")
    with pytest.raises(DiskSpaceError) as info:
        admit(fs, POLICY, need_bytes=40 * MiB, job_id="huge", emitter=emitter)
    message = str(info.value)
    assert "not enough disk space" in message and "the job needs 40 MiB plus 2 MiB that must stay free" in message
    assert "is free after scrubbing freed" in message
    refused = _events(sink, "refused")
    assert len(refused) == 1 and refused[0]["need_bytes"] == 40 * MiB and refused[0]["job_id"] == "huge"
    assert refused[0]["free_bytes"] == free_bytes(fs)
    # it tried everything it was allowed to, and nothing it was not
    assert sorted(n for n, p in jobs.items() if p.exists()) == ["bare", "c_young", "f_young", "r_mid", "r_old"]
    assert not list(fs.glob("reservations/*.json"))  # a refused job holds no reservation


def test_crashed_job_is_reported_once_then_recovered(fs: Path, locks: list[int]) -> None:
    old = make_job_dir(fs, 1, "c_old", "crashed", size=MiB, age=2 * 3600)
    young = make_job_dir(fs, 2, "c_young", "crashed", size=MiB, age=60)
    bare = make_job_dir(fs, 3, "bare_old", "bare", size=MiB, age=2 * 3600)
    emitter, sink = capture_events("h")
    scrub_once(fs, POLICY, emitter)  # space is fine: housekeeping only
    assert sorted(e["job_id"] for e in _events(sink, "crashed-job")) == ["bare_old", "c_old"]
    assert old.exists() and (old / ".crashed").exists() and not (young / ".crashed").exists()
    scrub_once(fs, POLICY, emitter)
    assert len(_events(sink, "crashed-job")) == 2  # not repeated
    admit(fs, POLICY, need_bytes=_need_to_free(fs, MiB + MiB // 2), job_id="new", emitter=emitter).release()
    assert not old.exists() and not bare.exists() and young.exists()


def test_symlinks_out_of_the_root_are_not_followed(fs: Path, tmp_path: Path, locks: list[int]) -> None:
    outside = tmp_path / "outside"
    (outside / "tree").mkdir(parents=True)
    fill(outside / "tree" / "precious", 3 * PAGE)
    job = make_job_dir(fs, 1, "linker", "succeeded", size=MiB)
    (job / "out_dir").symlink_to(outside / "tree")
    (job / "out_file").symlink_to(outside / "tree" / "precious")
    # a job dir, and a whole time level, that are symlinks to outside trees that look like finished jobs
    fake = make_job_dir(outside, 2, "decoy", "succeeded", size=PAGE)
    minute = job.parent
    (minute / "evil").symlink_to(fake)
    (fs / "jobs" / "2024").symlink_to(outside / "jobs" / "2025")
    # the quarantine itself pointing out of the root must not receive anything
    (fs / "quarantine").symlink_to(outside / "tree", target_is_directory=True)
    # nor may a symlinked cache be evicted from
    key = url_key("https://example.com/x")
    foreign = outside.joinpath("cache", *key[:4], key)
    foreign.mkdir(parents=True)
    fill(foreign / "x", PAGE)
    (foreign / ".localized").touch()
    (fs / "cache").symlink_to(outside / "cache", target_is_directory=True)
    before = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    scrubber = Scrubber(fs, POLICY)
    assert not scrubber.ladder(10**12, 0)  # scrub everything it may: it cannot reach a terabyte
    assert not job.exists()  # purged in place, since the quarantine is unusable
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == before
    assert (outside / "tree" / "precious").stat().st_size == 3 * PAGE and fake.exists()
    assert (minute / "evil").is_symlink()


def test_cache_is_evicted_least_recently_used_first(fs: Path) -> None:
    now = time.time()
    entries = {}
    for name, used in (("new", now - 60), ("old", now - 3 * 86400), ("mid", now - 86400)):
        key = url_key(f"https://example.com/{name}.h5")
        entry = fs.joinpath("cache", *key[:4], key)  # the localizer's (and HySDS's) layout
        entry.mkdir(parents=True)
        fill(entry / "input.h5", 2 * MiB)
        (entry / ".localized").touch()
        os.utime(entry / ".localized", (used, used))
        entries[name] = entry
    emitter, sink = capture_events("h")
    admit(fs, POLICY, need_bytes=_need_to_free(fs, 3 * MiB), job_id="new", emitter=emitter)
    assert [e["path"] for e in _events(sink, "evicted")] == [str(entries["old"]), str(entries["mid"])]
    assert entries["new"].exists() and not entries["old"].exists() and not entries["mid"].exists()


def test_inode_exhaustion_is_handled_like_space(fs: Path) -> None:
    jobs = [make_job_dir(fs, i, f"many{i}", "succeeded", files=300) for i in range(5)]
    st = os.statvfs(fs)
    assert st.f_favail < 500 and free_bytes(fs) > 8 * MiB  # plenty of bytes, few inodes
    policy = FsPolicy(inodes_percent=5.0, job_inodes=st.f_favail - 100 + 150)  # 100 must stay free; 150 short
    emitter, sink = capture_events("h")
    admit(fs, policy, need_bytes=0, job_id="new", emitter=emitter).release()
    assert [p.exists() for p in jobs] == [False, True, True, True, True]
    assert _events(sink, "purged")[0]["inodes"] >= 300
    with pytest.raises(DiskSpaceError, match=r"not enough inodes under .*: the job needs 5000 inodes plus 100"):
        admit(fs, policy, need_bytes=0, need_inodes=5000, job_id="greedy", emitter=emitter)
    assert not any(p.exists() for p in jobs)  # it did try, oldest first, before refusing


def test_the_current_job_is_protected(fs: Path) -> None:
    mine = make_job_dir(fs, 1, "mine", "succeeded", size=MiB)
    other = make_job_dir(fs, 2, "other", "succeeded", size=MiB)
    Scrubber(fs, POLICY, protect=[mine]).ladder(10**12, 0)
    assert mine.exists() and not other.exists()


def test_a_dir_in_close_up_is_not_scrubbed(fs: Path, locks: list[int]) -> None:
    """mark_done renames the locked .running to .done before it lets go: still locked means still closing."""
    job = make_job_dir(fs, 1, "closing", "running", size=MiB, locks=locks)
    os.rename(job / ".running", job / ".done")
    (job / "_exit_code").write_text("0\n")
    Scrubber(fs, POLICY).ladder(10**12, 0)
    assert job.exists()


def test_empty_time_dirs_are_pruned_but_not_the_current_ones(fs: Path) -> None:
    old = make_job_dir(fs, 1, "old", "succeeded", size=PAGE)
    Scrubber(fs, POLICY).ladder(10**12, 0)
    assert not old.exists() and not (fs / "jobs" / "2025").exists() and (fs / "jobs").is_dir()
