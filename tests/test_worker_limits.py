"""Time limits read from a delivery and its job_info: damaged values mean no limit, never a dead timer thread."""

from __future__ import annotations

import math
import threading

import pytest

from sandbox_runner.worker.delivery import TaskInfo
from sandbox_runner.worker.limits import limits_for


@pytest.mark.parametrize("value", [-1, 0, math.nan, math.inf, "inf", "nan", 1e300, True, "x", None, [5]])
def test_a_damaged_time_limit_is_no_limit(value: object) -> None:
    job = {"job_info": {"time_limit": value, "soft_time_limit": value}}
    assert limits_for(TaskInfo("t"), job) == (None, None)


def test_limits_come_from_the_message_first_then_job_info() -> None:
    job = {"job_info": {"time_limit": 600, "soft_time_limit": "540"}}
    assert limits_for(TaskInfo("t"), job) == (540.0, 600.0)
    assert limits_for(TaskInfo("t", hard_limit=60, soft_limit=30), job) == (30.0, 60.0)
    assert limits_for(TaskInfo("t"), {"job_info": {"time_limit": threading.TIMEOUT_MAX}})[1] == threading.TIMEOUT_MAX


@pytest.mark.parametrize(("value", "limit"), [(600, 600.0), (math.inf, None), (math.nan, None), (-1, None), (0, None)])
def test_walltime_admission_reads_the_limit_the_same_way(value: float, limit: float | None) -> None:
    from sandbox_runner.hpc.walltime import job_time_limit

    assert job_time_limit(None, {"job_info": {"time_limit": value}}) == limit
