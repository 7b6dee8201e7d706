"""The job-drain guard: it trips once on too many failures too fast, never on slow failures or after a success."""

from __future__ import annotations

from sandbox_runner.worker.drain import DrainGuard


def test_drain_trips_once_on_more_than_threshold_failures_at_the_rate() -> None:
    guard = DrainGuard(threshold=10, window=5.0)
    trips = [guard.record(True, now=100 + 0.1 * i) for i in range(15)]
    assert trips.index(True) == 10 and trips.count(True) == 1  # the 11th failure, once


def test_slow_failures_or_a_success_are_not_a_drain() -> None:
    slow = DrainGuard(threshold=10, window=5.0)
    assert not any(slow.record(True, now=100 + 1.0 * i) for i in range(30))  # 1/s < 2/s
    broken = DrainGuard(threshold=10, window=5.0)
    for i in range(10):
        broken.record(True, now=100 + 0.1 * i)
    broken.record(False, now=101.05)
    assert not any(broken.record(True, now=101.1 + 0.1 * i) for i in range(10))
    assert broken.record(True, now=102.2)  # the new streak's 11th
