#!/usr/bin/env python3
"""Throughput: N trivial jobs through one ``sandbox-runner worker`` at concurrency C, against the same N
containers run by bare ``podman run --rm`` with the same parallelism; for each C of ``-c`` (default 1, 2 and 4).

Everything real: RabbitMQ (a queue of its own), Redis for events and results (a status list of its own), the
worker as the unprivileged user (re-executes itself through ``runuser`` when started as root), rootless Podman.
Jobs are busybox ``true`` with the default pre and post steps (localize, checksums, publish, triage: nothing to
move), as a user's trivial job runs; ``--stripped`` disables the builtins, to measure the worker's own cost around
a container alone. Prints, per concurrency, jobs per minute for each side and their ratio (target: >= 0.9), and
the worker's own time per job outside the container (task wall time minus the container's ``cmd_duration``;
target: median < 30 ms).

    .venv/bin/python benchmarks/throughput.py [-n 100] [-c 1,2,4] [--stripped] [--broker amqp://...] [--redis ...]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _rootless import IMAGE, REPO, as_worker


def job(n: int, *, default: bool = False) -> dict[str, Any]:
    """A trivial job: the stripped pipeline, or with ``default`` the pre/post builtins a job-spec gets unless it
    disables them."""
    job_id = f"tput-{n:04d}-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {"command": "true", "params": []}
    if not default:
        spec.update(disable_pre_builtins=True, disable_post_builtins=True)
    return {
        "job_id": job_id, "type": "bench", "task_id": str(uuid.uuid4()), "container_image_name": IMAGE,
        "params": {"_command": "true", "job_specification": spec},
        "localize_urls": [],
        "job_info": {"payload_hash": "0", "dedup": False, "job_payload": {"payload_task_id": job_id}},
    }


def client_app(broker: str, backend: str) -> Any:
    """A producer as HySDS's orchestrator has one: msgpack, priorities 0-9, results on ``backend``."""
    from celery import Celery

    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer="msgpack", result_serializer="msgpack", accept_content=["msgpack", "json"],
                    task_queue_max_priority=10)
    return app


def worker_env(run: Path, broker: str, redis_url: str, key: str) -> dict[str, str]:
    """The worker's settings for a benchmark run: its own work root and status list, quiet logs."""
    return dict(os.environ, SANDBOX_RUNNER_WORK_ROOT=str(run / "root"), SANDBOX_RUNNER_LOG_LEVEL="warning",
                SANDBOX_RUNNER_MIN_FREE_PERCENT="0", SANDBOX_RUNNER_BROKER_URL=broker,
                SANDBOX_RUNNER_RESULT_BACKEND=redis_url, SANDBOX_RUNNER_REDIS_URL=redis_url,
                SANDBOX_RUNNER_STATUS_KEY=key, SANDBOX_RUNNER_JOB_INFO_KEY=key)


def start_worker(env: dict[str, str], queue: str, concurrency: int, run: Path) -> subprocess.Popen[bytes]:
    log = (run / "worker.log").open("wb")
    proc = subprocess.Popen([str(REPO / ".venv/bin/sandbox-runner"), "worker", "-Q", queue, "-c", str(concurrency),
                             "--pidfile", str(run / "worker.pid")], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while " ready." not in (run / "worker.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"worker did not start:\n{(run / 'worker.log').read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return proc


def through_worker(app: Any, queue: str, n: int, *, default: bool = False) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    pending = [app.send_task("hysds.job_worker.run_job", args=[job(i, default=default)], queue=queue)
               for i in range(n)]
    results = [r.get(timeout=600) for r in pending]
    elapsed = time.perf_counter() - t0
    return elapsed, results


def split(n: int, rounds: int) -> list[range]:
    step = -(-n // max(1, rounds))
    return [range(i, min(n, i + step)) for i in range(0, n, step)]


def runner_overheads(url: str, key: str, task_ids: set[str]) -> list[float]:
    import msgpack
    import redis

    docs = (msgpack.unpackb(raw, raw=False) for raw in redis.Redis.from_url(url).lrange(key, 0, -1))
    return sorted(d["job"]["job_info"]["metrics"]["worker_overhead"] * 1000 for d in docs
                  if d.get("type") == "job_info" and d["job"]["task_id"] in task_ids)


def bare(argv: list[str], n: int, parallel: int) -> float:
    def one(_: int) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"bare podman failed: {proc.stderr}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0


def one_concurrency(app: Any, args: argparse.Namespace, c: int, env: dict[str, str], run: Path, queue: str,
                    key: str) -> dict[str, Any]:
    """One worker at concurrency ``c`` against bare podman ``c`` at a time, interleaved rounds; the figures."""
    sock = f"unix:///run/user/{os.getuid()}/podman/podman.sock"
    default = not args.stripped
    run.mkdir()
    worker = start_worker(env, queue, c, run)
    try:
        through_worker(app, queue, 2 * c, default=default)  # warm-up: imports, image, the API service's first calls
        bare_remote = ["podman", "--remote", "--url", sock, "run", "--rm", "--network=none", IMAGE, "true"]
        bare_local = ["podman", "run", "--rm", "--network=none", IMAGE, "true"]
        bare(bare_remote, 2, c)
        bare(bare_local, 2, c)
        # interleaved rounds, so drift (other load on the machine) hits every side alike
        ours = t_remote = t_local = 0.0
        results: list[dict[str, Any]] = []
        for size in [len(r) for r in split(args.n, args.rounds)]:
            elapsed, got = through_worker(app, queue, size, default=default)
            ours += elapsed
            results += got
            t_remote += bare(bare_remote, size, c)
            t_local += bare(bare_local, size, c)
        runner_only = runner_overheads(args.redis, key, {r["uuid"] for r in results})
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    per_min = {name: args.n / t * 60 for name, t in (("ours", ours), ("remote", t_remote), ("local", t_local))}
    overhead = sorted(r["worker_overhead"] * 1000 for r in results if r["status"] == "job-completed")
    bad = [r for r in results if r["status"] != "job-completed"]
    return {"c": c, "seconds": {"ours": ours, "remote": t_remote, "local": t_local}, "jobs_per_min": per_min,
            "overhead": overhead, "runner_only": runner_only, "bad": bad, "n_results": len(results)}


def report(f: dict[str, Any]) -> None:
    per_min, secs, overhead = f["jobs_per_min"], f["seconds"], f["overhead"] or [float("nan")]
    print(f"-- concurrency {f['c']} (worker -c {f['c']}; bare podman {f['c']} at a time)")
    print(f"  sandbox-runner worker (Celery+podman API) {secs['ours']:7.2f} s  {per_min['ours']:7.1f} jobs/min")
    print(f"  bare podman run --rm (local CLI)          {secs['local']:7.2f} s  {per_min['local']:7.1f} jobs/min   "
          f"ratio {per_min['ours'] / per_min['local']:.2f} (target >= 0.9)")
    print(f"  bare podman --remote run --rm             {secs['remote']:7.2f} s  {per_min['remote']:7.1f} jobs/min   "
          f"ratio {per_min['ours'] / per_min['remote']:.2f}")
    print(f"  worker time per job outside the container: median {statistics.median(overhead):.1f} ms, "
          f"p90 {overhead[int(0.9 * (len(overhead) - 1))]:.1f} ms, max {overhead[-1]:.1f} ms (target median < 30 ms)")
    if f["runner_only"]:
        print(f"    of it, the JobRunner's own (job_info.metrics.worker_overhead): median "
              f"{statistics.median(f['runner_only']):.1f} ms; the rest is the task around it (guard, lease, result)")
    if f["bad"]:  # counted, not hidden: a failed job is cheaper than a completed one and flatters the rate
        print(f"  !! {len(f['bad'])} of {f['n_results']} jobs did not complete, e.g.: {f['bad'][0]['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="jobs per side and concurrency (default 100)")
    ap.add_argument("-c", default="1,2,4", help="worker concurrency = bare parallelism, comma-separated (1,2,4)")
    ap.add_argument("--stripped", action="store_true", help="pre/post builtins disabled (default: on)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the jobs are split into (default 4)")
    ap.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    concurrencies = [int(c) for c in str(args.c).split(",") if c.strip()]
    as_worker()
    import redis

    load_before = os.getloadavg()
    queue, key = f"bench-{uuid.uuid4().hex[:8]}", f"bench-events-{uuid.uuid4().hex[:8]}"
    app = client_app(args.broker, args.redis)
    figures = []
    try:
        with tempfile.TemporaryDirectory(prefix="sr-tput-") as tmp:
            env = worker_env(Path(tmp), args.broker, args.redis, key)
            for c in concurrencies:
                figures.append(one_concurrency(app, args, c, env, Path(tmp) / f"c{c}", queue, key))
    finally:
        redis.Redis.from_url(args.redis).delete(key)
    load_after = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {socket.gethostname()}, {os.uname().release}; n={args.n} per side, "
          f"{'stripped' if args.stripped else 'default'} pipeline, {args.rounds} interleaved rounds; "
          f"user={pwd.getpwuid(os.getuid()).pw_name}; load avg before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    for f in figures:
        report(f)
    print(json.dumps({"pipeline": "stripped" if args.stripped else "default", "n": args.n,
                      "load": [round(load_before[0], 2), round(load_after[0], 2)],
                      "by_concurrency": {f["c"]: {"failed": len(f["bad"]), "jobs_per_min": f["jobs_per_min"],
                                                  "ratio_local": f["jobs_per_min"]["ours"] / f["jobs_per_min"]["local"],
                                                  "overhead_ms_median": statistics.median(f["overhead"] or [0])}
                                         for f in figures}}))


if __name__ == "__main__":
    main()
