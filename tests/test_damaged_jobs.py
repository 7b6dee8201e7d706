"""Damaged jobs never crash the runner (issue 8 section 5).

A hypothesis property test takes real job JSONs (the HySDS corpus under /work/shared/reference and the project's
examples), damages them at random (any value at any depth replaced by a value of another type, or a key
removed) and runs each, in process, through :class:`JobRunner` with the shipped FakeBackend. Every case must
end as exactly one terminal status (``job-failed`` unless the damage was harmless), with a readable error, and
nothing may escape ``run()``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.testing import CapturedEvents, fake_runner

CORPUS = Path("/work/shared/reference/hysds-corpus/jobs")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    if CORPUS.is_dir():
        jobs += [json.loads(p.read_text()) for p in sorted(CORPUS.iterdir()) if p.is_file()]
    elif os.environ.get("CI") == "true":
        pytest.fail(f"the HySDS corpus is missing: {CORPUS}")
    for template in sorted(EXAMPLES.rglob("job.json*")):
        text = template.read_text().replace("@JOB_ID@", "demo-job").replace("@TASK_ID@", "demo-task")
        jobs.append(json.loads(text.replace("@", "")))
    return jobs


JOBS = _example_jobs()


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*here, i))
    return found


#: text includes lone surrogates (JSON's "\\ud800" escapes decode to them; hypothesis's text() leaves them out)
_TEXT = st.one_of(st.text(max_size=8), st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2))
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     _TEXT, st.just(1.5), st.just("/"), st.just(""))
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)


@st.composite
def damaged_jobs(draw: st.DrawFn) -> Any:
    job = copy.deepcopy(draw(st.sampled_from(JOBS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(job)
        # pick a depth first, then a path at it: top-level keys (job_info, task_id...) are hit as often as deep ones
        depth = draw(st.sampled_from(sorted({len(p) for p in paths})))
        path = draw(st.sampled_from([p for p in paths if len(p) == depth]))
        if not path:  # the whole document replaced: a list, a string, a number...
            job = draw(JSON_VALUES)
            continue
        parent = job
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return job


def _deeply_nested() -> dict[str, Any]:
    job = copy.deepcopy(JOBS[0]) if JOBS else {"job_id": "deep"}
    node = job.setdefault("params", {})
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    return job


def _damage(key: str, value: Any) -> dict[str, Any]:
    job = copy.deepcopy(JOBS[0]) if JOBS else {}
    job[key] = value
    return job


@pytest.fixture(scope="module")
def runner_and_sink(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobRunner, CapturedEvents]:
    return fake_runner(tmp_path_factory.mktemp("damaged") / "work", hostname="celery@damaged")


@pytest.mark.skipif(not JOBS, reason="no example jobs")
@settings(max_examples=int(os.environ.get("DAMAGED_JOB_EXAMPLES", "2000")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(job=damaged_jobs())
def test_a_damaged_job_ends_in_exactly_one_terminal_status(
        runner_and_sink: tuple[JobRunner, CapturedEvents], job: Any) -> None:
    runner, sink = runner_and_sink
    sink.records.clear()
    raw = json.dumps(job)
    outcome = runner.run(raw)  # nothing may escape
    terminal = [d for d in sink.docs() if d.get("resource") == "job" and d["status"] in TERMINAL_STATUSES]
    assert len(terminal) == 1, [d.get("status") for d in sink.docs()]
    doc = terminal[0]
    assert doc["status"] == outcome.status
    if outcome.status != "job-completed":
        assert doc["status"] == "job-failed"
        assert isinstance(doc["error"], str) and doc["error"] and "Traceback" not in doc["error"]
        assert not doc["error"].startswith("internal error"), doc["error"]


@pytest.mark.skipif(not JOBS, reason="no example jobs")
@pytest.mark.parametrize(("raw", "says"), [
    (lambda: _damage("job_info", 1.5), "job_info: expected object, got float"),
    (lambda: _damage("job_info", "x"), "job_info: expected object, got str"),
    (lambda: _damage("task_id", [None]), "task_id: expected str | null, got array"),
    (lambda: _damage("tags", 5), ""),
    (lambda: {**_damage("job_info", {"job_payload": 3})}, "job_info.job_payload: expected object, got int"),
    (lambda: "[" * 5000 + "]" * 5000, "nested too deeply"),
    (_deeply_nested, "nested too deeply"),
    (lambda: [1], "a job must be a JSON object, not an array"),
    (lambda: None, "a job must be a JSON object, got nothing (null)"),
    (lambda: b"\xff", "not valid JSON"),
], ids=["job_info-float", "job_info-str", "task_id-list", "tags-int", "job_payload-int", "deep-text",
        "deep-dict", "list", "none", "bytes"])
def test_known_damage_fails_once_naming_the_field(
        runner_and_sink: tuple[JobRunner, CapturedEvents], raw: Any, says: str) -> None:
    runner, sink = runner_and_sink
    sink.records.clear()
    outcome = runner.run(raw())
    terminal = [d for d in sink.docs() if d.get("resource") == "job" and d["status"] in TERMINAL_STATUSES]
    assert [d["status"] for d in terminal] == ["job-failed"]
    assert outcome.status == "job-failed" and outcome.error is not None and says in outcome.error
    assert terminal[0]["uuid"] is None or isinstance(terminal[0]["uuid"], str)
