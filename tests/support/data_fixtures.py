"""Fixtures for the data-in/out tests (localize, publish, triage): a job context with a real work dir, and the
loopback servers of ``servers.py``. Registered once, by ``tests/conftest.py``'s ``pytest_plugins``.

Test modules also import its helpers, so it is not assert-rewritten: PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.job.workdir import WorkDir
from sandbox_runner.models import load_datasets_config
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, capture_events
from support.machine import require
from support.servers import FileServer, file_server, moto_server

MakeCtx = Callable[..., JobContext]


def sink_of(ctx: JobContext) -> CapturedEvents:
    sink = ctx.emitter.sink
    assert isinstance(sink, CapturedEvents)
    return sink


def events(ctx: JobContext, event_type: str | None = None) -> list[dict[str, Any]]:
    return sink_of(ctx).events(event_type)


@pytest.fixture
def make_ctx(tmp_path: Path) -> MakeCtx:
    """A job context as the runner has it when pre/post steps run: work dir created, _context.json written."""
    counter = iter(range(1000))

    def make(localize_urls: list[dict[str, Any]] | None = None, *, work_root: Path | None = None,
             datasets: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
             job_id: str | None = None, env: dict[str, str] | None = None, **job: Any) -> JobContext:
        root = work_root or tmp_path / "work"
        settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(root), "SANDBOX_RUNNER_TRANSFER_BACKOFF": "0.05",
                                  "SANDBOX_RUNNER_TRANSFER_RETRIES": "3", "SANDBOX_RUNNER_PROGRESS": "never",
                                  "HOME": str(tmp_path), **(env or {})}, min_free_percent=0.0)
        n = next(counter)
        jid = job_id or f"test_job-{n}"
        doc: dict[str, Any] = {
            "job_id": jid, "task_id": f"task-{n}", "type": "test_job", "localize_urls": localize_urls or [],
            "job_info": {"id": jid, "job_payload": {"payload_task_id": f"payload-{n}"}, "payload_hash": "h",
                         "metrics": {"inputs_localized": [], "products_staged": [], "job_dir_size": 0,
                                     "usage_stats": []}},
            **job,
        }
        ctx = JobContext(job=doc, settings=settings, emitter=capture_events("test")[0])
        ctx.work_root = root
        ctx.workdir = WorkDir.create(root, jid)
        ctx.context = {"_prov": {"wasGeneratedBy": f"task_id:{doc['task_id']}"}, "_force_ingest": False,
                       **(context or {})}
        ctx.workdir.write_json("_context.json", ctx.context)
        if datasets is not None:
            ctx.datasets_cfg = load_datasets_config(datasets, source="datasets.json")
        return ctx

    return make


@pytest.fixture
def http(tmp_path: Path) -> Iterator[FileServer]:
    with file_server(tmp_path / "www") as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        require(False, "boto3 and moto[server] are not installed (the test extra has them)")
    # moto accepts any credentials; boto3 insists on having some (it reads them from the environment)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        with moto_server() as endpoint:
            yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Any:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = "b" + format(abs(hash(request.node.nodeid)), "x")[:20]
    client.create_bucket(Bucket=name)
    client.bucket_name = name  # type: ignore[attr-defined]
    return client
