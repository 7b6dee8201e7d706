"""``sandbox-runner``: the command-line edge. Parses arguments, reads settings once, hands off.

Imports are lazy on purpose: ``run-job`` is on the hot path of every stand-alone job and the benchmark counts the
interpreter's start-up; ``--version`` should not load podman-py. :data:`COMMANDS` therefore names each command's
body as ``"module:function"``, imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox_runner import __version__
from sandbox_runner.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE
from sandbox_runner.errors import SandboxRunnerError

#: (command, sub-command) -> the ``module:function`` that runs it as ``function(args, settings) -> exit code``.
#: ``events`` alone goes to ``events show``, which says its usage.
COMMANDS: dict[tuple[str, str | None], str] = {
    ("run-job", None): "sandbox_runner.cli.jobs:run_job",
    ("validate", None): "sandbox_runner.cli.jobs:validate_command",
    ("events", None): "sandbox_runner.cli.events:events_show",
    ("events", "show"): "sandbox_runner.cli.events:events_show",
    ("events", "tail"): "sandbox_runner.cli.events:events_tail",
    ("worker", None): "sandbox_runner.cli.workers:worker",
    ("workers", None): "sandbox_runner.cli.workers:workers",
    ("doctor", None): "sandbox_runner.cli.doctor:doctor_command",
    ("scrub", None): "sandbox_runner.cli.scrub:scrub",
    **{(sched, sub): f"sandbox_runner.cli.hpc:slurm_{sub}"  # one scheduler interface: args.command names it
       for sched in ("slurm", "pbs") for sub in ("submit", "autoscale", "drain")},
}
#: where argparse puts the sub-command of a command that has them
_SUBCOMMAND = {"events": "events_command", "slurm": "slurm_command", "pbs": "slurm_command"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandbox-runner", description="Rootless HySDS-compatible job worker.")
    p.add_argument("--version", action="version", version=f"sandbox-runner {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run-job", help="run one job JSON end to end (stand-alone)")
    run.add_argument("job", type=Path, help="job JSON file ('-' for stdin)")
    run.add_argument("--work-root", type=Path, help="root work dir [SANDBOX_RUNNER_WORK_ROOT]")
    run.add_argument("--backend", choices=("podman", "subprocess", "fake"), help="[SANDBOX_RUNNER_BACKEND]")
    run.add_argument("--redis-url", help="Redis for status documents [SANDBOX_RUNNER_REDIS_URL]")
    run.add_argument("--worker-cfg", type=Path, help="worker config [HYSDS_WORKER_CFG]")
    run.add_argument("--datasets-cfg", type=Path, help="datasets.json [HYSDS_DATASETS_CFG]")
    run.add_argument("--dry-run", action="store_true", help="print the container spec and mounts; run nothing")
    run.add_argument("--metrics-textfile", type=Path, metavar="PATH",
                     help="add this job's counts to a node_exporter textfile (*.prom, or a directory) "
                          "[SANDBOX_RUNNER_METRICS_TEXTFILE]")

    val = sub.add_parser("validate", help="tell the kind of each HySDS file and whether it is valid; a "
                         "job-spec.json.X and hysds-io.json.X side by side must name the same params")
    val.add_argument("files", nargs="+", help="files, or directories (the HySDS files directly in them)")

    ev = sub.add_parser("events", help="read status documents")
    ev_sub = ev.add_subparsers(dest="events_command", metavar="SUBCOMMAND")
    show = ev_sub.add_parser("show", help="print events from Redis or the local events file")
    show.add_argument("--redis-url", help="read the Redis list instead of the file [SANDBOX_RUNNER_REDIS_URL]")
    show.add_argument("--key", help="Redis list key (default: the status key, 'logstash')")
    show.add_argument("--file", type=Path, help="events file (default: <work root>/events/events.msgpack)")
    show.add_argument("--work-root", type=Path)
    show.add_argument("--json", action="store_true", help="one JSON document per line")
    show.add_argument("--job-id", help="only documents of this job")
    tail = ev_sub.add_parser("tail", help="follow the Redis list, printing each new document once")
    tail.add_argument("--redis-url", help="[SANDBOX_RUNNER_REDIS_URL]")
    tail.add_argument("--key", help="Redis list key (default: the status key, 'logstash')")
    tail.add_argument("-n", "--lines", type=int, default=10, help="start with the last N documents (default 10)")
    tail.add_argument("--all", action="store_true", help="start with the whole list")
    tail.add_argument("--json", action="store_true", help="one JSON document per line")
    tail.add_argument("--job-id", help="only documents of this job")
    tail.add_argument("--count", type=int, help="stop after printing this many documents")
    tail.add_argument("--timeout", type=float, help="stop after this many seconds")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between polls when idle")

    wk = sub.add_parser("worker", help="start a Celery worker (celery@<queue>.<NN>.<host>) with our defaults")
    wk.add_argument("-Q", "--queues", required=True, help="queue(s) to take jobs from, comma-separated")
    wk.add_argument("-c", "--concurrency", type=int, default=1, help="jobs at once (default 1)")
    wk.add_argument("-i", "--instance", type=int, help="instance number NN (default: lowest free on this host)")
    wk.add_argument("-n", "--name", help="full worker name instead of the convention")
    wk.add_argument("--pidfile", type=Path, help="write the worker's pid here")
    wk.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    wk.add_argument("--metrics-port", type=int, metavar="N",
                    help="serve Prometheus /metrics on this port (default off) [SANDBOX_RUNNER_METRICS_PORT]")
    wk.add_argument("--metrics-textfile", type=Path, metavar="PATH",
                    help="keep a node_exporter textfile current (*.prom, or a directory) "
                         "[SANDBOX_RUNNER_METRICS_TEXTFILE]")

    wks = sub.add_parser("workers", help="list workers from their events: online, lost (missed beats), offline")
    wks.add_argument("--redis-url", help="[SANDBOX_RUNNER_REDIS_URL]")
    wks.add_argument("--key", help="Redis list key (default: the status key)")
    wks.add_argument("--file", type=Path, help="read a local events file instead")
    wks.add_argument("--json", action="store_true", help="one JSON object per worker")

    doc = sub.add_parser("doctor", help="check what a rootless node needs, and say what to fix")
    doc.add_argument("--work-root", type=Path)
    doc.add_argument("--image", help="image of the trivial job container [SANDBOX_RUNNER_DOCTOR_IMAGE]")
    doc.add_argument("--image-url", help="where to load that image from [SANDBOX_RUNNER_DOCTOR_IMAGE_URL]")

    scrub = sub.add_parser("scrub", help="free space under the work root as the filesystem policy says")
    scrub.add_argument("--dry-run", action="store_true", help="print what would be quarantined and purged; do nothing")
    scrub.add_argument("--work-root", type=Path, help="root work dir [SANDBOX_RUNNER_WORK_ROOT]")

    for sched in ("slurm", "pbs"):
        _scheduler_commands(sub, sched)
    return p


def _scheduler_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], sched: str) -> None:
    """``slurm`` and ``pbs``: the same pilot commands (cli/hpc.py), through one scheduler interface."""
    word, submit_cmd = ("Slurm", "sbatch") if sched == "slurm" else ("PBS", "qsub")
    parser = sub.add_parser(sched, help=f"workers as {word} pilot jobs")
    commands = parser.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)
    sub_submit = commands.add_parser("submit", help="submit a pilot that runs workers for a queue; prints its job id")
    sub_scale = commands.add_parser("autoscale", help="submit pilots as the queue's waiting jobs need, within --max")
    for sp in (sub_submit, sub_scale):
        sp.add_argument("-Q", "--queue", required=True, help="the queue the pilot's workers take jobs from")
        sp.add_argument("-N", "--nodes", type=int, default=1, help="nodes per pilot (default 1)")
        sp.add_argument("-w", "--workers-per-node", type=int, default=1, help="workers per node (default 1)")
        sp.add_argument("-c", "--concurrency", type=int, default=1, help="jobs at once per worker (default 1)")
        sp.add_argument("-t", "--time", default="1:00:00", help="walltime in sbatch's format (default 1:00:00)")
        sp.add_argument("-p", "--partition", help=f"{word} {'partition' if sched == 'slurm' else 'queue (-q)'}")
        sp.add_argument("-A", "--account", help=f"{word} account")
        sp.add_argument("--grace", type=int, default=120,
                        help="seconds before the walltime at which workers drain (default 120)")
        sp.add_argument("--log-dir", help=f"where the pilot's output goes (default: {submit_cmd}'s, the cwd)")
        sp.add_argument(f"--{submit_cmd}-arg", dest="sbatch_arg", action="append", metavar="ARG",
                        help=f"extra {submit_cmd} argument (repeatable)")
        if sched == "pbs":
            sp.add_argument("--kill-delay", type=int, default=10,
                            help="the site's kill_delay: seconds from qdel's TERM to its KILL (default 10)")
    sub_submit.add_argument("--dry-run", action="store_true", help=f"print the {submit_cmd} command and script only")
    sub_scale.add_argument("--max", type=int, required=True, help="at most this many pilots for the queue")
    sub_scale.add_argument("--interval", type=float, default=60.0, help="seconds between decisions (default 60)")
    sub_scale.add_argument("--once", action="store_true", help="one decision, then exit (for cron)")
    sub_drain = commands.add_parser("drain", help="ask a pilot's workers to finish their jobs and stop")
    sub_drain.add_argument("-Q", "--queue", required=True, help="the pilot's queue")
    sub_drain.add_argument("--pilot", required=True, help=f"the pilot's {word} job id")
    sub_drain.add_argument("--reason", default="the pilot's walltime ends soon", help="why (for the events)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    if argv is None and args.command == "run-job":  # this process is the job's: end it without teardown
        from sandbox_runner.cli import fastexit

        fastexit.arm()
        return fastexit.set_code(_command(args))
    return _command(args)


def _command(args: argparse.Namespace) -> int:
    try:
        from sandbox_runner.events.logging import configure_logging
        from sandbox_runner.settings import load_settings

        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        dest = _SUBCOMMAND.get(args.command)
        target = COMMANDS.get((args.command, getattr(args, dest, None) if dest else None))
        if target is None:  # argparse lets no other command through; kept as the old if-chain's fall-through
            return EXIT_USAGE
        module, function = target.split(":")
        return int(getattr(importlib.import_module(module), function)(args, settings))
    except SandboxRunnerError as exc:
        print(f"sandbox-runner: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
