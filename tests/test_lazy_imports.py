"""A trivial job through the default pipeline loads no transport it does not use (benchmarks/job_overhead.py:
httpx, boto3 and the WebDAV client were ~90 ms of every job before they were imported on demand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.jobs import make_job, write_job
from support.machine import REPO

#: never needed by a job with no URLs to fetch and no dataset to publish
UNUSED = ("httpx", "httpcore", "h11", "boto3", "botocore", "sandbox_runner.data.transfer.http",
          "sandbox_runner.data.transfer.webdav", "sandbox_runner.data.transfer.s3",
          "sandbox_runner.data.localize.localizer", "sandbox_runner.data.localize.cache",
          "sandbox_runner.data.publish.destinations", "ctypes")


def modules_after_run_job(job: Path, work_root: Path) -> dict[str, object]:
    code = textwrap.dedent(f"""
        import json, sys
        from sandbox_runner.cli import main
        code = main(["run-job", {str(job)!r}, "--backend", "fake", "--work-root", {str(work_root)!r}])
        print(json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120,
                          cwd=REPO, env=dict(os.environ, SANDBOX_RUNNER_MIN_FREE_PERCENT="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_a_trivial_job_runs_its_default_steps_without_loading_unused_transports(tmp_path: Path) -> None:
    job = make_job("true")
    result = modules_after_run_job(write_job(tmp_path, job), tmp_path / "root")
    assert result["code"] == 0
    modules = set(result["modules"])  # type: ignore[arg-type]
    # the default steps did run (and so were imported), and published nothing
    assert {"sandbox_runner.data.localize.steps", "sandbox_runner.data.publish.steps",
            "sandbox_runner.data.triage.steps"} <= modules
    (datasets_json,) = (tmp_path / "root").rglob("_datasets.json")
    assert json.loads(datasets_json.read_text()) == []
    assert sorted(modules & set(UNUSED)) == []


def test_a_job_with_a_file_url_loads_the_localize_engine_but_no_network_transport(tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("data\n")
    job = make_job("true", localize_urls=[{"url": f"file://{src}"}])
    result = modules_after_run_job(write_job(tmp_path, job), tmp_path / "root")
    assert result["code"] == 0
    modules = set(result["modules"])  # type: ignore[arg-type]
    assert {"sandbox_runner.data.localize.localizer", "sandbox_runner.data.localize.cache",
            "sandbox_runner.data.transfer.local"} <= modules
    assert sorted(modules & {"httpx", "boto3", "sandbox_runner.data.transfer.http",
                             "sandbox_runner.data.transfer.s3"}) == []
    (copied,) = (tmp_path / "root").rglob("input.txt")
    assert copied.read_text() == "data\n"
