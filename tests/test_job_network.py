"""Jobs and the network, for real: a rootless podman job run as ``srunner`` with no network settings in its
job-spec reaches an HTTP server on the host's loopback (as HySDS download jobs fetch inside the container), and a
job type the network policy denies gets no network: its fetch fails and ``--dry-run`` shows ``none``."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.jobs import make_job, read_status_list, write_job
from support.machine import Worker

from sandbox_runner.events.documents import TERMINAL_STATUSES


@pytest.fixture
def loopback_server(shared_dir: Path) -> Iterator[str]:
    """A plain HTTP server bound to 127.0.0.1 only, serving one file."""
    root = shared_dir / "www"
    root.mkdir()
    (root / "granule.txt").write_text("granule bytes\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/granule.txt"
    server.shutdown()
    server.server_close()


def _run(worker: Worker, job: dict[str, Any], shared_dir: Path, work_root: Path, redis_url: str,
         status_key: str, *extra: str, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    path = write_job(shared_dir, job)
    proc = worker.run(["sandbox-runner", "run-job", str(path), "--backend", "podman", *extra],
                      env=worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
                                     SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
                                     **env))
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    if extra:
        return proc, None
    done = [d for d in read_status_list(redis_url, status_key)
            if d.get("resource") == "job" and d["status"] in TERMINAL_STATUSES]
    assert len(done) == 1, done
    return proc, done[0]


def test_job_without_network_settings_reaches_loopback(podman_ready: Worker, loopback_server: str,
                                                      shared_dir: Path, work_root: Path, redis_url: str,
                                                      status_key: str) -> None:
    job = make_job(f"wget -q -O granule.txt {loopback_server}", job_type="job-download")
    assert "runtime_options" not in job and "network" not in json.dumps(job)
    _, done = _run(podman_ready, job, shared_dir, work_root, redis_url, status_key)
    assert done is not None and done["status"] == "job-completed", done
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert (jd / "granule.txt").read_text() == "granule bytes\n"
    params = json.loads((jd / "_docker_params.json").read_text())
    (entry,) = params.values()
    assert entry["network"] == "host" and entry["labels"]["sandbox_runner.network"].startswith("host: rootless")


def test_job_type_denied_by_policy_gets_no_network(podman_ready: Worker, loopback_server: str, shared_dir: Path,
                                                   work_root: Path, redis_url: str, status_key: str) -> None:
    policy = shared_dir / "network.toml"
    policy.write_text('deny = ["job-untrusted*"]\n')
    policy.chmod(0o644)
    job = make_job(f"wget -q -T 5 -O granule.txt {loopback_server}", job_type="job-untrusted",
                   runtime_options={"network": "host"})
    proc, _ = _run(podman_ready, job, shared_dir, work_root, redis_url, status_key, "--dry-run",
                   SANDBOX_RUNNER_NETWORK_POLICY=str(policy))
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["network"] == "none"
    assert spec["labels"]["sandbox_runner.network"] == (
        f"none: job type 'job-untrusted' matches deny 'job-untrusted*' in {policy}")
    _, done = _run(podman_ready, job, shared_dir, work_root, redis_url, status_key,
                   SANDBOX_RUNNER_NETWORK_POLICY=str(policy))
    assert done is not None and done["status"] == "job-failed", done
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert not (jd / "granule.txt").exists() or (jd / "granule.txt").read_text() == ""
