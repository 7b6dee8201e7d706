#!/usr/bin/env python3
"""Per-job overhead: ``sandbox-runner run-job`` against a bare ``podman run --rm`` of the same container.

Times N trivial jobs (busybox ``true``) in the same run, interleaved in a shuffled order each round so drift
hits every side equally:

- the **default pipeline**: the job as a user writes it, so the default pre and post steps run (localize,
  mark/validate checksums, publish, with nothing to move) -- what a user's trivial job costs;
- the **stripped pipeline**: the same job with ``disable_pre_builtins`` and ``disable_post_builtins``;
- bare local ``podman run --rm`` (the baseline of the ratios), and ``podman --remote run --rm`` against the same
  API service the runner talks to;
- the interpreter start-up (``sandbox-runner --version``).

All as the unprivileged user (re-executes itself through ``runuser`` when started as root). For each side it also
prints the time spent outside the container: the whole run minus the container's create -> died span from
podman's own event timestamps (``podman events``), and for the runner the in-process part of that
(``job_info.metrics.worker_overhead``: the runner's run minus ``cmd_duration``, so without interpreter start-up).

    .venv/bin/python benchmarks/job_overhead.py [-n 20]

Targets: default pipeline <= 1.3x bare local ``podman run``; runner time outside the container < 30 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _rootless import IMAGE, REPO, as_worker


def job_json(work: Path, *, default: bool) -> tuple[Path, str]:
    """A trivial job; ``default`` leaves the pre/post builtins on, as a user's job-spec does unless it says."""
    job_id = f"bench-{'dflt' if default else 'strp'}-{uuid.uuid4().hex[:10]}"
    spec: dict[str, Any] = {"command": "true", "params": []}
    if not default:
        spec.update(disable_pre_builtins=True, disable_post_builtins=True)
    job = {
        "job_id": job_id, "type": "bench", "task_id": str(uuid.uuid4()), "container_image_name": IMAGE,
        "params": {"_command": "true", "job_specification": spec},
        "localize_urls": [],
        "job_info": {"payload_hash": "0", "dedup": False, "job_payload": {"payload_task_id": job_id}},
    }
    path = work / f"{job_id}.json"
    path.write_text(json.dumps(job))
    return path, job_id


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return elapsed


def _stamp(text: str) -> float:
    # podman prints nanoseconds; fromisoformat takes at most microseconds
    head, _, frac = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()


def container_spans(since: float) -> dict[str, float]:
    """container name -> seconds from podman's ``create`` event to its ``died`` event, for containers since then."""
    proc = subprocess.run(["podman", "events", "--stream=false", "--since", str(int(since) - 1), "--format", "json",
                           "--filter", "type=container"], capture_output=True, text=True, check=True)
    seen: dict[str, dict[str, float]] = {}
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        ev = json.loads(line)
        if ev.get("Status") in ("create", "died"):
            seen.setdefault(ev["Name"], {}).setdefault(ev["Status"], _stamp(ev["Time"]))
    return {name: t["died"] - t["create"] for name, t in seen.items() if "create" in t and "died" in t}


def span_of(spans: dict[str, float], prefix: str) -> float | None:
    """The span of the one container named ``prefix``*; None when podman's events lost it (the events file is
    rotated when it grows: the machine's other podman users write to it too)."""
    found = [s for name, s in spans.items() if name.startswith(prefix)]
    if len(found) > 1:
        sys.exit(f"expected one container named {prefix}*, podman's events have {len(found)}")
    return found[0] if found else None


def med_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="jobs per side (default 20)")
    args = ap.parse_args()
    as_worker()
    sock = f"unix:///run/user/{os.getuid()}/podman/podman.sock"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sr-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, SANDBOX_RUNNER_WORK_ROOT=str(work / "root"), SANDBOX_RUNNER_LOG_LEVEL="warning",
                   SANDBOX_RUNNER_MIN_FREE_PERCENT="0")
        ours_cmd = [str(REPO / ".venv/bin/sandbox-runner"), "run-job"]

        def bare(remote: bool) -> tuple[list[str], str]:
            name = f"srbench-bare-{uuid.uuid4().hex[:10]}"
            pre = ["podman", "--remote", "--url", sock] if remote else ["podman"]
            return [*pre, "run", "--rm", "--name", name, "--network=none", IMAGE, "true"], name

        # warm-up: image layers, page cache, the API service's first-request costs
        timed([*ours_cmd, str(job_json(work, default=True)[0])], env)
        timed([*ours_cmd, str(job_json(work, default=False)[0])], env)
        timed(bare(True)[0], env)
        timed(bare(False)[0], env)
        sides: dict[str, list[tuple[float, str]]] = {"default": [], "stripped": [], "local": [], "remote": []}
        start = []
        spans: dict[str, float] = {}
        for _ in range(args.n):
            since = time.time()
            order = list(sides)
            random.shuffle(order)  # no side always first after the --version run, or always after another
            for side in order:
                if side in ("default", "stripped"):
                    path, job_id = job_json(work, default=side == "default")
                    sides[side].append((timed([*ours_cmd, str(path)], env), f"sr-{job_id}-"))
                else:
                    argv, name = bare(side == "remote")
                    sides[side].append((timed(argv, env), name))
            start.append(timed([str(REPO / ".venv/bin/sandbox-runner"), "--version"], env))
            spans.update(container_spans(since))  # each round's now, before a rotation of the events file
        in_runner: dict[str, list[float]] = {"default": [], "stripped": []}
        for job_file in (work / "root" / "jobs").rglob("_job.json"):
            doc = json.loads(job_file.read_text())
            kind = "default" if doc["job_id"].startswith("bench-dflt-") else "stripped"
            # honest sides: the default pipeline's publish step wrote _datasets.json, the stripped one ran none
            published = (job_file.parent / "_datasets.json").exists()
            if published != (kind == "default") or doc["job_info"]["status"] != 0:
                sys.exit(f"{job_file.parent}: not the {kind} pipeline's trivial job (status "
                         f"{doc['job_info']['status']}, _datasets.json written: {published})")
            in_runner[kind].append(doc["job_info"]["metrics"]["worker_overhead"])
    load_after = os.getloadavg()
    total = {side: [t for t, _ in runs] for side, runs in sides.items()}
    outside: dict[str, list[float]] = {}
    for side, runs in sides.items():
        found = [(t, span_of(spans, name)) for t, name in runs]
        outside[side] = [t - span for t, span in found if span is not None]
    base = med_ms(total["local"])
    print(f"machine: {os.cpu_count()} cores, {socket.gethostname()}, {os.uname().sysname} {os.uname().release}; "
          f"n={args.n}; user={pwd.getpwuid(os.getuid()).pw_name}; load avg before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    rows = (("default", "sandbox-runner run-job, default pipeline"),
            ("stripped", "sandbox-runner run-job, stripped pipeline"),
            ("local", "bare podman run --rm (local CLI)"),
            ("remote", "bare podman --remote run --rm"))
    print(f"{'':44} {'median':>9} {'ratio':>7}   outside the container (total - podman create->died)")
    for side, label in rows:
        lost = "" if len(outside[side]) == args.n else f" (podman's events for {len(outside[side])} of {args.n})"
        print(f"{label:44} {med_ms(total[side]):6.1f} ms {med_ms(total[side]) / base:6.2f}x   "
              f"{med_ms(outside[side]):6.1f} ms{lost}")
    print(f"interpreter start (--version)                {med_ms(start):6.1f} ms")
    for side in ("default", "stripped"):
        print(f"runner's own time outside the container, {side} pipeline (job_info.metrics.worker_overhead): "
              f"median {med_ms(in_runner[side]):.1f} ms")
    print(f"added by the runner over bare podman run, outside the container: default "
          f"{med_ms(outside['default']) - med_ms(outside['local']):.1f} ms, stripped "
          f"{med_ms(outside['stripped']) - med_ms(outside['local']):.1f} ms")
    print("targets: default pipeline <= 1.3x bare local podman run; runner time outside the container < 30 ms")
    print(json.dumps({"n": args.n, "median_ms": {s: round(med_ms(v), 1) for s, v in total.items()},
                      "outside_ms": {s: round(med_ms(v), 1) for s, v in outside.items()},
                      "worker_overhead_ms": {s: round(med_ms(v), 1) for s, v in in_runner.items()},
                      "ratio_default": round(med_ms(total["default"]) / base, 2),
                      "ratio_stripped": round(med_ms(total["stripped"]) / base, 2),
                      "load": [round(load_before[0], 2), round(load_after[0], 2)]}))


if __name__ == "__main__":
    main()
