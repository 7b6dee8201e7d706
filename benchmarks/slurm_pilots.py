#!/usr/bin/env python3
"""Pilots on the real single-node Slurm: the time from ``sandbox-runner slurm submit`` to the first job running,
and jobs per minute through 2 pilots (1 worker, -c 1 each) against one long-lived ``sandbox-runner worker -c 2``
on the same machine, in the same run.

Real RabbitMQ, Redis, Slurm and rootless podman; as the unprivileged worker user (re-executes itself through
``runuser`` when started as root). Jobs are busybox ``true`` with the default pre and post steps.

    .venv/bin/python benchmarks/slurm_pilots.py [-n 60] [--broker amqp://...] [--redis redis://...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _rootless import REPO, as_worker
from throughput import client_app, job, start_worker, worker_env

CLI = str(REPO / ".venv/bin/sandbox-runner")


def default_pipeline(n: int) -> dict[str, Any]:
    j = job(n)
    spec = j["params"]["job_specification"]
    spec.pop("disable_pre_builtins"), spec.pop("disable_post_builtins")
    return j


def started(url: str, key: str, task_id: str) -> bool:
    import msgpack
    import redis

    return any(d.get("status") == "job-started" and d.get("uuid") == task_id
               for d in (msgpack.unpackb(r, raw=False) for r in redis.Redis.from_url(url).lrange(key, 0, -1)))


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


def submit(env: dict[str, str], queue: str, log_dir: Path) -> str:
    proc = subprocess.run([CLI, "slurm", "submit", "-Q", queue, "-t", "30", "--grace", "60", "--log-dir",
                           str(log_dir)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"slurm submit failed: {proc.stderr}")
    return proc.stdout.strip()


def batch(app: Any, queue: str, n: int) -> float:
    t0 = time.perf_counter()
    pending = [app.send_task("hysds.job_worker.run_job", args=[default_pipeline(i)], queue=queue) for i in range(n)]
    bad = [r for r in (p.get(timeout=900) for p in pending) if r["status"] != "job-completed"]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not complete, e.g. {bad[0]['error']}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=60, help="jobs per side for the throughput part (default 60)")
    ap.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    as_worker()
    import redis

    key = f"bench-events-{uuid.uuid4().hex[:8]}"
    app = client_app(args.broker, args.redis)
    pilots: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sr-pilots-") as tmp:
        run = Path(tmp)
        env = worker_env(run, args.broker, args.redis, key)
        try:
            # 1. first job running: a pilot submitted, against a worker started by hand (same job, same machine)
            first: dict[str, float] = {}
            for side in ("worker", "pilot"):
                queue = f"bench-{side}-{uuid.uuid4().hex[:6]}"
                one = default_pipeline(0)
                app.send_task("hysds.job_worker.run_job", args=[one], queue=queue, task_id=one["task_id"])
                t0 = time.perf_counter()
                if side == "pilot":
                    pilots.append(submit(env, queue, run))
                    proc = None
                else:
                    (run / side).mkdir()
                    proc = start_worker(env, queue, 1, run / side)
                wait(lambda q=one["task_id"]: started(args.redis, key, q), 300)
                first[side] = time.perf_counter() - t0
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
            # 2. throughput: 2 pilots x -c 1 against one worker -c 2
            queue = f"bench-pilots-{uuid.uuid4().hex[:6]}"
            pilots += [submit(env, queue, run), submit(env, queue, run)]
            batch(app, queue, 4)  # warm-up, and both pilots up
            t_pilots = batch(app, queue, args.n)
            queue = f"bench-worker-{uuid.uuid4().hex[:6]}"
            (run / "long").mkdir()
            proc = start_worker(env, queue, 2, run / "long")
            batch(app, queue, 4)
            t_worker = batch(app, queue, args.n)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            for p in pilots:
                subprocess.run(["scancel", p], check=False)
            redis.Redis.from_url(args.redis).delete(key)
    rate_p, rate_w = args.n / t_pilots * 60, args.n / t_worker * 60
    print(f"machine: {os.cpu_count()} cores, {os.uname().release}; n={args.n}")
    print(f"submit -> first job running: pilot {first['pilot']:.2f} s, worker started by hand "
          f"{first['worker']:.2f} s, ratio {first['pilot'] / first['worker']:.2f}")
    print(f"2 pilots x -c 1: {rate_p:.1f} jobs/min; one worker -c 2: {rate_w:.1f} jobs/min; "
          f"ratio {rate_p / rate_w:.2f}")
    print(json.dumps({"first_job_s": first, "jobs_per_min": {"pilots": rate_p, "worker": rate_w}}))


if __name__ == "__main__":
    main()
