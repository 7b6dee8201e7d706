#!/usr/bin/env python3
"""Per-job overhead: ``sandbox-runner run-job`` against a bare ``podman run --rm`` of the same container.

Runs N trivial jobs (busybox ``true``) both ways in the same run, interleaved so drift hits both equally, as the
unprivileged user (re-executes itself through ``runuser`` when started as root), and prints the medians and
their ratio. Also prints, from each job's ``_job.json``, the time the runner spent outside the container
(``metrics.worker_overhead``: the whole run minus ``cmd_duration``) and the interpreter start-up
(``sandbox-runner --version``).

    .venv/bin/python benchmarks/job_overhead.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _rootless import IMAGE, REPO, as_worker


def job_json(work: Path) -> Path:
    job_id = f"bench-{uuid.uuid4().hex[:10]}"
    job = {
        "job_id": job_id, "type": "bench", "task_id": str(uuid.uuid4()), "container_image_name": IMAGE,
        "params": {"_command": "true", "job_specification": {
            "command": "true", "params": [], "disable_pre_builtins": True, "disable_post_builtins": True}},
        "localize_urls": [],
        "job_info": {"payload_hash": "0", "dedup": False, "job_payload": {"payload_task_id": job_id}},
    }
    path = work / f"{job_id}.json"
    path.write_text(json.dumps(job))
    return path


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="jobs per side (default 20)")
    args = ap.parse_args()
    as_worker()
    sock = f"unix:///run/user/{os.getuid()}/podman/podman.sock"
    with tempfile.TemporaryDirectory(prefix="sr-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, SANDBOX_RUNNER_WORK_ROOT=str(work / "root"), SANDBOX_RUNNER_LOG_LEVEL="warning",
                   SANDBOX_RUNNER_MIN_FREE_PERCENT="0")
        ours_cmd = [str(REPO / ".venv/bin/sandbox-runner"), "run-job"]
        bare_cmd = ["podman", "--remote", "--url", sock, "run", "--rm", "--network=none", IMAGE, "true"]
        bare_cli = ["podman", "run", "--rm", "--network=none", IMAGE, "true"]
        # warm-up: image layers, page cache, the API service's first-request costs
        timed([*ours_cmd, str(job_json(work))], env)
        timed(bare_cmd, env)
        timed(bare_cli, env)
        ours, bare, cli, start = [], [], [], []
        for _ in range(args.n):
            ours.append(timed([*ours_cmd, str(job_json(work))], env))
            bare.append(timed(bare_cmd, env))
            cli.append(timed(bare_cli, env))
            start.append(timed([str(REPO / ".venv/bin/sandbox-runner"), "--version"], env))
        inside = []
        for job_file in (work / "root" / "jobs").rglob("_job.json"):
            info = json.loads(job_file.read_text())["job_info"]
            inside.append(info["metrics"]["worker_overhead"])
    m_ours, m_bare, m_cli = statistics.median(ours), statistics.median(bare), statistics.median(cli)
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; n={args.n}; "
          f"user={pwd.getpwuid(os.getuid()).pw_name}")
    print(f"sandbox-runner run-job (podman API)   median {m_ours * 1000:7.1f} ms")
    print(f"bare podman --remote run --rm         median {m_bare * 1000:7.1f} ms   ratio {m_ours / m_bare:.2f}x")
    print(f"bare podman run --rm (local CLI)      median {m_cli * 1000:7.1f} ms   ratio {m_ours / m_cli:.2f}x")
    print(f"interpreter start (--version)         median {statistics.median(start) * 1000:7.1f} ms")
    print(f"runner time outside the container     median {statistics.median(inside) * 1000:7.1f} ms "
          "(job_info.metrics.worker_overhead)")


if __name__ == "__main__":
    main()
