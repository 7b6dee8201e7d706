"""The bodies of ``sandbox-runner worker`` and ``workers`` (cli/main.py only parses and dispatches)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from sandbox_runner.cli.exits import EXIT_OK
from sandbox_runner.settings import Settings


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """Start a Celery worker with our defaults, named ``celery@<queue>.<NN>.<host>``."""
    from sandbox_runner.errors import ConfigError
    from sandbox_runner.worker.naming import first_free_name, hold_name, make_name

    queues = [q for q in args.queues.split(",") if q.strip()]
    if not queues:
        raise ConfigError("name at least one queue with -Q", field="queues")
    from sandbox_runner.worker.root import pin_work_root

    lock_dir = pin_work_root(settings).workroot.workers  # the same dir boot() holds the name in
    if args.name:
        name = args.name.replace("%h", socket.gethostname())
        name = name if "@" in name else f"celery@{name}"
    elif args.instance is not None:
        name = str(make_name(queues[0], args.instance))
    else:
        name = str(first_free_name(queues[0], lock_dir))
    if not hold_name(name, lock_dir):
        raise ConfigError(f"another worker named {name} is running on this host", field="instance")
    import os

    # the worker's settings are read again by celery_app (a plain `celery worker` reads only those): pass ours on
    for var, value in (("SANDBOX_RUNNER_METRICS_PORT", getattr(args, "metrics_port", None)),
                       ("SANDBOX_RUNNER_METRICS_TEXTFILE", getattr(args, "metrics_textfile", None))):
        if value is not None:
            os.environ[var] = str(value)
    from sandbox_runner.celery_app import app

    argv = ["worker", "-Q", ",".join(queues), "-c", str(args.concurrency), "-n", name,
            "--without-mingle", "--without-gossip", "--loglevel", args.loglevel,
            f"--heartbeat-interval={max(1, round(settings.heartbeat_interval))}"]
    if args.pidfile:
        argv += ["--pidfile", str(args.pidfile)]
    # Celery's own command, not app.worker_main/app.start: both drop the worker's exit code (click returns it when
    # not standalone), so a worker that could not start (a bootstep's "Unrecoverable error") exited 0 and a
    # supervisor took that for a clean stop
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # what app.start does: --app defaults to ours
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return int(code) if isinstance(code, int) else EXIT_OK


# -- workers -----------------------------------------------------------------------------------------------------------
def worker_states(docs: Iterable[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """The latest worker event per worker, judged: ``offline`` when it said goodbye (``worker-offline``) or missed
    two beats (a SIGKILL, a lost node: no goodbye comes), else ``online``."""
    now = time.time() if now is None else now
    latest: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if doc.get("resource") != "worker":
            continue
        event = doc.get("event") or {}
        host = str(doc.get("celery_hostname") or event.get("hostname"))
        if host not in latest or float(event.get("timestamp") or 0) >= float(latest[host]["event"].get("timestamp")
                                                                             or 0):
            latest[host] = doc
    rows = []
    for host, doc in sorted(latest.items()):
        event = doc.get("event") or {}
        seen = float(event.get("timestamp") or 0)
        freq = float(event.get("freq") or 60)
        if doc.get("status") == "worker-offline":
            state, reason = "offline", "worker-offline"
        elif now - seen > 2 * freq:
            state, reason = "offline", "missed beats"
        else:
            state, reason = "online", str(doc.get("status"))
        rows.append({"hostname": host, "state": state, "reason": reason, "last_seen": seen, "age": round(now - seen, 1),
                     "freq": freq, "active": event.get("active"), "processed": event.get("processed"),
                     "drained": bool(event.get("drained")), "program": doc.get("worker_program"),
                     "instance": doc.get("worker_instance"), "host": doc.get("worker_host"),
                     "queues": doc.get("worker_queues")})
    return rows


def _docs(args: argparse.Namespace, settings: Settings) -> Iterable[dict[str, Any]]:
    from sandbox_runner.events.sinks import read_file_events, read_redis_events

    url = args.redis_url or settings.redis_url
    if url and not args.file:
        return (r["doc"] for r in read_redis_events(url, args.key or settings.status_key))
    path = args.file or settings.workroot.event_file
    return (r.get("doc", r) for r in read_file_events(path)) if path.exists() else iter(())


def workers(args: argparse.Namespace, settings: Settings) -> int:
    rows = worker_states(_docs(args, settings))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    if not rows:
        print("no worker events found", file=sys.stderr)
        return EXIT_OK
    print(f"{'WORKER':<44} {'STATE':<8} {'WHY':<16} {'AGE':>7} {'ACTIVE':>6} {'DONE':>6}  QUEUES")
    for r in rows:
        state = r["state"] + ("*" if r["drained"] else "")
        print(f"{r['hostname']:<44} {state:<8} {r['reason']:<16} {r['age']:>6.0f}s "
              f"{r['active'] if r['active'] is not None else '-':>6} "
              f"{r['processed'] if r['processed'] is not None else '-':>6}  {','.join(r['queues'] or [])}")
    if any(r["drained"] for r in rows):
        print("* stopped taking jobs after a job drain (worker_anomaly event)")
    return EXIT_OK
