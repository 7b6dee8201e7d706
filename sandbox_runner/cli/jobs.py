"""The bodies of ``run-job`` and ``validate`` (cli/main.py only parses and dispatches)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sandbox_runner.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from sandbox_runner.settings import Settings


def _read_job(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    return path.read_bytes()


def run_job(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox_runner.errors import JobFormatError
    from sandbox_runner.events import Emitter
    from sandbox_runner.job.runner import JobRunner

    settings = settings.with_overrides(work_root=args.work_root, backend=args.backend, redis_url=args.redis_url,
                                       worker_cfg=args.worker_cfg, datasets_cfg=args.datasets_cfg,
                                       metrics_textfile=getattr(args, "metrics_textfile", None))
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
    metrics = None
    if settings.metrics_textfile is not None:  # imported only then: prometheus_client costs start-up
        from sandbox_runner.metrics.prom import JobMetrics, textfile_path

        textfile = textfile_path(settings.metrics_textfile, "sandbox_runner_run_job")
        metrics = JobMetrics(settings).attach(emitter)
    outcome = runner.run(raw)
    emitter.close()
    if metrics is not None:
        from sandbox_runner.errors import ConfigError

        try:
            metrics.write_textfile(textfile, accumulate=True)  # after close: the spool backlog as it is left
        except ConfigError as exc:  # the job has ended and its status is sent: say so, and still report it
            print(f"sandbox-runner: warning: {exc}", file=sys.stderr)
    line = f"{outcome.status}: job {_printable(outcome.job_id) or '(no job_id could be read)'}"
    if outcome.exit_code is not None:
        line += f" exit code {outcome.exit_code}"
    print(line)
    if outcome.job_dir:
        print(f"  work dir: {outcome.job_dir}")
    print(f"  events:   {sink.description}")
    if outcome.error:
        print(f"  error:    {outcome.error.splitlines()[0] if outcome.error.strip() else outcome.error}")
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _printable(text: str | None) -> str | None:
    """A job id as the terminal may show it: a damaged one (a NUL, an escape sequence) written out, as repr does."""
    if text is None or text.isprintable():
        return text
    return repr(text)[1:-1]


def validate_command(args: argparse.Namespace, settings: Settings) -> int:
    return validate(args.files)


def validate(files: list[str]) -> int:
    from sandbox_runner.models.detect import step_warnings, validate_file
    from sandbox_runner.models.pairs import expand_paths, pair_mismatches

    worst = EXIT_OK
    valid: list[str] = []
    expanded = expand_paths(files)  # a directory: the HySDS files in it
    if not expanded:
        print(f"{', '.join(files)}: no HySDS files (job-spec.json.*, hysds-io.json.*, datasets.json, ...)")
        return EXIT_USAGE
    for path in expanded:
        kind, error = validate_file(path)
        if error is None:
            # an unknown step name is valid HySDS (any importable function) but fails run-job here: say so
            warnings = "".join(f" (warning: {w}; run-job on this worker fails such a job)" for w in step_warnings(path))
            print(f"{path}: {kind}: valid{warnings}")
            valid.append(path)
        else:
            print(f"{path}: {kind}: invalid: {error}")
            worst = EXIT_USAGE
    for line in pair_mismatches(valid):  # a job-spec and its hysds-io side by side must agree on params
        print(line)
        worst = EXIT_USAGE
    return worst
