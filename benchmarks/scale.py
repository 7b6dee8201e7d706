#!/usr/bin/env python3
"""Scale: N trivial jobs (default 1,000) through W ``sandbox-runner worker`` processes (default 2) on RabbitMQ;
jobs per minute, and the p50/p99 of the time from ``send_task`` to the job's ``job-completed`` document on Redis.

Everything real, as benchmarks/throughput.py (whose producer app and worker settings it reuses): RabbitMQ (a queue
of its own), Redis for events and results (a status list of its own), the workers as the unprivileged user
(re-executes itself through ``runuser`` when started as root), rootless Podman. Jobs are busybox ``true`` with the
default pre and post steps. All N are sent at once, as an orchestrator releasing a batch does (so the latency is
mostly queueing; ``--rate`` paces the sends instead); a watcher tails
the status list and notes when each job's ``job-completed`` lands (every 10 ms; the document's own
``@timestamp``, taken just before the push, is printed too). Same-run baseline: bare local ``podman run --rm`` of
the same container with the same total parallelism (W x C), half before and half after the jobs.

    .venv/bin/python benchmarks/scale.py [--jobs 1000] [--workers 2] [-c 1] [--baseline 200] [--rate R]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pwd
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _rootless import IMAGE, as_worker
from throughput import bare, client_app, job, start_worker, worker_env

TERMINAL = {"job-completed", "job-failed", "job-offline", "job-revoked", "job-terminated", "job-interrupted"}


class Watcher(threading.Thread):
    """Tails the status list; first sight of each job's terminal document: (status, seen at, @timestamp)."""

    def __init__(self, url: str, key: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        import redis

        self.redis = redis.Redis.from_url(url)
        self.key, self.interval = key, interval
        self.done: dict[str, tuple[str, float, float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import msgpack

        index = 0
        while not self.stop.is_set():
            raws = self.redis.lrange(self.key, index, -1)
            seen = time.time()
            index += len(raws)
            for raw in raws:
                doc = msgpack.unpackb(raw, raw=False)
                if doc.get("status") in TERMINAL and doc.get("uuid") and doc["uuid"] not in self.done:
                    self.done[doc["uuid"]] = (doc["status"], seen, _stamp(doc.get("@timestamp")) or seen)
            if not raws:
                self.stop.wait(self.interval)


def _stamp(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values), max(1, math.ceil(p / 100 * len(values)))) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000, help="jobs to send (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("-c", type=int, default=1, help="concurrency of each worker (default 1)")
    ap.add_argument("--baseline", type=int, default=200,
                    help="bare podman runs for the same-run baseline, half before, half after (default 200)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="send this many jobs a second instead of all at once (latency without the backlog)")
    ap.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    ap.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    as_worker()
    import redis

    load_before = os.getloadavg()
    queue, key = f"bench-{uuid.uuid4().hex[:8]}", f"bench-events-{uuid.uuid4().hex[:8]}"
    app = client_app(args.broker, args.redis)
    parallel = args.workers * args.c
    bare_local = ["podman", "run", "--rm", "--network=none", IMAGE, "true"]
    sent: dict[str, float] = {}
    pending = []
    try:
        with tempfile.TemporaryDirectory(prefix="sr-scale-") as tmp:
            env = worker_env(Path(tmp), args.broker, args.redis, key)
            workers = []
            try:
                for i in range(args.workers):
                    (Path(tmp) / f"w{i}").mkdir()
                    workers.append(start_worker(env, queue, args.c, Path(tmp) / f"w{i}"))
                # warm-up: each worker's first jobs (imports, image, the API service's first calls)
                warm = [app.send_task("hysds.job_worker.run_job", args=[job(i, default=True)], queue=queue)
                        for i in range(2 * parallel)]
                for r in warm:
                    r.get(timeout=300)
                bare(bare_local, 2, parallel)
                half = args.baseline // 2
                t_bare = bare(bare_local, half, parallel)
                watcher = Watcher(args.redis, key)
                watcher.start()
                t0 = time.time()
                for i in range(args.jobs):
                    if args.rate > 0:
                        time.sleep(max(0.0, t0 + i / args.rate - time.time()))
                    j = job(i, default=True)
                    sent[j["task_id"]] = time.time()
                    pending.append(app.send_task("hysds.job_worker.run_job", args=[j], queue=queue,
                                                 task_id=j["task_id"]))
                t_sent = time.time()
                deadline = time.monotonic() + args.timeout
                while not sent.keys() <= watcher.done.keys():
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {len(sent.keys() & watcher.done.keys())} of {args.jobs} jobs "
                                         f"ended within {args.timeout:.0f} s")
                    time.sleep(0.1)
                watcher.stop.set()
                t_bare += bare(bare_local, args.baseline - half, parallel)
            finally:
                for w in workers:
                    w.send_signal(signal.SIGTERM)
                for w in workers:
                    w.wait(timeout=120)
    finally:
        for r in pending:
            r.forget()
        redis.Redis.from_url(args.redis).delete(key)
    load_after = os.getloadavg()
    ends = {tid: watcher.done[tid] for tid in sent}
    completed = [tid for tid, (status, _, _) in ends.items() if status == "job-completed"]
    seen_lat = sorted((ends[t][1] - sent[t]) * 1000 for t in completed)
    doc_lat = sorted((ends[t][2] - sent[t]) * 1000 for t in completed)
    last = max(seen for _, seen, _ in ends.values())
    per_min = args.jobs / (last - t0) * 60
    bare_per_min = args.baseline / t_bare * 60 if args.baseline else float("nan")
    print(f"machine: {os.cpu_count()} cores, {socket.gethostname()}, {os.uname().release}; {args.jobs} jobs, "
          f"default pipeline, {args.workers} workers x -c {args.c}, "
          f"{f'sent at {args.rate:g}/s' if args.rate > 0 else 'sent at once'}; "
          f"user={pwd.getpwuid(os.getuid()).pw_name}; "
          f"load avg before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"sent {args.jobs} jobs in {t_sent - t0:.2f} s; all ended {last - t0:.1f} s after the first send")
    bound = f"; bounded by --rate {args.rate:g}/s = {args.rate * 60:.0f}/min" if args.rate > 0 else ""
    print(f"throughput: {per_min:.1f} jobs/min (first send_task to last job-completed seen on Redis{bound})")
    print(f"bare podman run --rm (local CLI), {parallel} at a time, {args.baseline} runs: {bare_per_min:.1f} jobs/min"
          f"   ratio {per_min / bare_per_min:.2f}")
    if seen_lat:
        print(f"send_task -> job-completed on Redis (seen): p50 {pct(seen_lat, 50) / 1000:.2f} s, "
              f"p99 {pct(seen_lat, 99) / 1000:.2f} s, max {seen_lat[-1] / 1000:.2f} s")
        print(f"send_task -> job-completed @timestamp:      p50 {pct(doc_lat, 50) / 1000:.2f} s, "
              f"p99 {pct(doc_lat, 99) / 1000:.2f} s")
    bad = len(ends) - len(completed)
    if bad:  # counted, not hidden: a failed job is cheaper than a completed one and flatters the rate
        statuses = sorted({status for status, _, _ in ends.values() if status != "job-completed"})
        print(f"!! {bad} of {args.jobs} jobs did not complete ({', '.join(statuses)})")
    print(json.dumps({"jobs": args.jobs, "workers": args.workers, "c": args.c, "rate": args.rate, "failed": bad,
                      "jobs_per_min": round(per_min, 1), "bare_jobs_per_min": round(bare_per_min, 1),
                      "latency_s": {"p50": round(pct(seen_lat, 50) / 1000, 3) if seen_lat else None,
                                    "p99": round(pct(seen_lat, 99) / 1000, 3) if seen_lat else None},
                      "load": [round(load_before[0], 2), round(load_after[0], 2)]}))


if __name__ == "__main__":
    main()
