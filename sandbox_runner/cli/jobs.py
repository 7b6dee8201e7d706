"""The bodies of ``run-job``, ``validate`` and ``events show`` (the CLI module only parses)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sandbox_runner.settings import Settings
from sandbox_runner.workroot import WorkRoot

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _read_job(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


def run_job(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox_runner.errors import JobFormatError
    from sandbox_runner.events import Emitter
    from sandbox_runner.job.runner import JobRunner

    settings = settings.with_overrides(work_root=args.work_root, backend=args.backend, redis_url=args.redis_url,
                                       worker_cfg=args.worker_cfg, datasets_cfg=args.datasets_cfg)
    try:
        raw: bytes | dict[str, Any] = _read_job(args.job)
    except OSError as exc:
        raise JobFormatError(f"cannot read job file {args.job}: {exc.strerror}") from None
    work_root = settings.node_root
    emitter = Emitter.from_settings(settings, work_root)
    sink = emitter.sink
    runner = JobRunner(settings, emitter)
    if args.dry_run:
        from sandbox_runner.job.dryrun import dry_run_document

        spec = runner.plan(raw)
        print(json.dumps(dry_run_document(settings, spec), indent=2))
        return EXIT_OK
    outcome = runner.run(raw)
    emitter.close()
    line = f"{outcome.status}: job {outcome.job_id}"
    if outcome.exit_code is not None:
        line += f" exit code {outcome.exit_code}"
    print(line)
    if outcome.job_dir:
        print(f"  work dir: {outcome.job_dir}")
    print(f"  events:   {sink.description}")
    if outcome.error:
        print(f"  error:    {outcome.error.splitlines()[0] if outcome.error.strip() else outcome.error}")
    return EXIT_OK if outcome.ok else EXIT_FAILED


def validate(files: list[str]) -> int:
    from sandbox_runner.models.detect import step_warnings, validate_file

    worst = EXIT_OK
    for path in files:
        kind, error = validate_file(path)
        if error is None:
            # an unknown step name is valid HySDS (any importable function) but fails run-job here: say so
            warnings = "".join(f" (warning: {w}; run-job on this worker fails such a job)" for w in step_warnings(path))
            print(f"{path}: {kind}: valid{warnings}")
        else:
            print(f"{path}: {kind}: invalid: {error}")
            worst = EXIT_USAGE
    return worst


def _line(doc: dict[str, Any]) -> str:
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
        print(json.dumps(doc, default=str) if args.json else _line(doc))
        count += 1
    print(f"({count} documents from {source})", file=sys.stderr)
    return EXIT_OK
