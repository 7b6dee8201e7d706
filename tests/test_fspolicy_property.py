"""Property: whatever the job dirs, their ages and which of them run, no scrub ever touches a running job's dir
(or the current job's), and a scrub asked for more than the disk holds removes everything else it may."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fsjobs import make_job_dir

from sandbox_runner.fspolicy import FsPolicy, scrub_once
from sandbox_runner.fspolicy.ladder import Scrubber

STATES = ("succeeded", "failed", "running", "crashed", "bare")
HOUR = 3600.0

job_st = st.tuples(st.sampled_from(STATES), st.integers(0, 40), st.sampled_from([10.0, 90.0, 2 * HOUR, 5 * 86400.0]))
policy_st = st.builds(FsPolicy, succeeded_retention=st.sampled_from([0.0, HOUR]),
                      failed_retention=st.sampled_from([0.0, 3 * 86400.0]),
                      crashed_grace=st.sampled_from([60.0, HOUR]), quarantine_ttl=st.sampled_from([0.0, 86400.0]))


def _snapshot(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.lstat().st_size) for p in path.rglob("*"))


def _eligible(state: str, age: float, policy: FsPolicy) -> bool:
    return (state == "succeeded" and age >= policy.succeeded_retention) or \
           (state == "failed" and age >= policy.failed_retention) or \
           (state in ("crashed", "bare") and age >= policy.crashed_grace)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=st.lists(job_st, min_size=1, max_size=25), policy=policy_st, protect_index=st.integers(0, 30),
       periodic=st.booleans())
def test_running_dirs_survive_every_scrub(jobs: list[tuple[str, int, float]], policy: FsPolicy,
                                          protect_index: int, periodic: bool) -> None:
    locks: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "work"
        root.mkdir()
        made = [(state, age, make_job_dir(root, minute, f"j{i}", state, size=100, age=age, locks=locks))
                for i, (state, minute, age) in enumerate(jobs)]
        protected = made[protect_index][2] if protect_index < len(made) else None
        running = {path: _snapshot(path) for state, _, path in made if state == "running"}
        try:
            if periodic:
                scrub_once(root, policy)  # housekeeping, then the ladder up to the policy's thresholds
            Scrubber(root, policy, protect=[protected] if protected else []).ladder(10**18, 0)
            for path, before in running.items():
                assert path.is_dir() and _snapshot(path) == before
            if protected is not None:
                assert protected.is_dir()
            for state, age, path in made:
                if path not in running and path != protected:
                    assert path.exists() != _eligible(state, age, policy), (state, age, path)
            assert not any((root / "quarantine").iterdir())  # asked for the impossible, it purged it all
        finally:
            for fd in locks:
                os.close(fd)
