"""The bodies of ``sandbox-runner events show`` (the Redis list or the local events file, once) and ``events tail``
(follow the Redis list); cli/main.py only parses and dispatches."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from typing import Any

from sandbox_runner.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sandbox_runner.settings import Settings
from sandbox_runner.workroot import WorkRoot


# -- events show -------------------------------------------------------------------------------------------------------
def summary_line(doc: dict[str, Any]) -> str:
    """One status document as one line: a job's status, its job_info, an event; anything else shortened."""
    ts = doc.get("@timestamp", "")
    resource = doc.get("resource") or doc.get("type", "?")
    if resource == "job":
        text = f"{ts} job   {doc.get('status', '?'):<15} {doc.get('job_id')} task={doc.get('uuid')}"
        if doc.get("error"):
            text += f" error={doc['error'].splitlines()[0] if doc['error'].strip() else ''!r}"
        return text
    if doc.get("type") == "job_info":
        info = (doc.get("job") or {}).get("job_info") or {}
        return (f"{ts} info  {(doc.get('job') or {}).get('job_id')} exit={info.get('status')} "
                f"duration={info.get('duration', 0):.3f}s dir={info.get('job_dir')}")
    if resource == "event":
        return f"{ts} event {doc.get('type')}/{doc.get('status')} {json.dumps(doc.get('event'), default=str)}"
    return f"{ts} {resource} {json.dumps(doc, default=str)[:200]}"


def events_show(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox_runner.events.sinks import read_file_events, read_redis_events

    if getattr(args, "events_command", None) != "show":
        print("usage: sandbox-runner events show [--redis-url URL | --file PATH]", file=sys.stderr)
        return EXIT_USAGE
    redis_url = args.redis_url or (settings.redis_url if not args.file else None)
    if redis_url:
        records = read_redis_events(redis_url, args.key or settings.status_key)
        source = f"redis {redis_url} list {args.key or settings.status_key}"
    else:
        root = WorkRoot(args.work_root) if args.work_root else settings.workroot
        path = args.file or root.event_file
        if not path.exists():
            print(f"no events file at {path}", file=sys.stderr)
            return EXIT_FAILED
        records = read_file_events(path)
        source = str(path)
    count = 0
    for record in records:
        doc = record.get("doc", record)
        event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
        job_id = doc.get("job_id") or (doc.get("job") or {}).get("job_id") or event.get("job_id")
        if args.job_id and job_id != args.job_id:
            continue
        print(json.dumps(doc, default=str) if args.json else summary_line(doc))
        count += 1
    print(f"({count} documents from {source})", file=sys.stderr)
    return EXIT_OK


# -- events tail -------------------------------------------------------------------------------------------------------
def describe(doc: dict[str, Any]) -> str:
    """:func:`summary_line` with the document's sequence number, and a worker event's counts."""
    seq = f"#{doc['event_seq']} " if "event_seq" in doc else ""
    if doc.get("resource") == "worker":
        ev = doc.get("event") or {}
        return (f"{seq}{doc.get('@timestamp', '')} {doc.get('status', '?'):<16} {doc.get('celery_hostname')} "
                f"active={ev.get('active', '-')} processed={ev.get('processed', '-')}")
    return seq + summary_line(doc)


def events_tail(args: argparse.Namespace, settings: Settings) -> int:
    """Follow the Redis list (without consuming it), printing each new document once (duplicates dropped by
    ``event_id``). Starts with the last ``--lines`` documents; ``--count``/``--timeout`` end it (scripts, tests)."""
    import msgpack
    import redis

    url = args.redis_url or settings.redis_url
    if not url:
        print("events tail needs Redis: --redis-url or SANDBOX_RUNNER_REDIS_URL", file=sys.stderr)
        return EXIT_USAGE
    key = args.key or settings.status_key
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    seen: OrderedDict[str, None] = OrderedDict()
    index, printed, warned = None, 0, False
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while deadline is None or time.monotonic() < deadline:
        try:
            if index is None:
                index = 0 if args.all else max(0, int(client.llen(key)) - args.lines)
            items = client.lrange(key, index, index + 999)
            if not items and int(client.llen(key)) < index:
                index = 0  # the list was consumed (logstash pops it): start over; seen ids keep us from repeats
            warned = False
        except redis.RedisError as exc:
            if not warned:
                print(f"(redis unreachable: {exc}; retrying)", file=sys.stderr)
                warned = True
            items = []
        if not items:
            time.sleep(args.interval)
            continue
        index = (index or 0) + len(items)
        for raw in items:
            doc = msgpack.unpackb(raw, raw=False)
            event_id = doc.get("event_id")
            if event_id in seen:
                continue
            if event_id:
                seen[event_id] = None
                if len(seen) > 100000:
                    seen.popitem(last=False)
            job_id = doc.get("job_id") or (doc.get("job") or {}).get("job_id")
            if args.job_id and job_id != args.job_id:
                continue
            print(json.dumps(doc, default=str) if args.json else describe(doc), flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return EXIT_OK
    return EXIT_OK
