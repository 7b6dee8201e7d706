"""The bodies of ``sandbox-runner slurm|pbs submit|autoscale|drain`` (cli/main.py only parses). ``args.command`` names
the scheduler (hpc/scheduler.py); nothing below it differs between Slurm and PBS."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from sandbox_runner.cli.exits import EXIT_OK
from sandbox_runner.hpc.pilot import PilotRequest
from sandbox_runner.hpc.scheduler import Scheduler, scheduler_for
from sandbox_runner.settings import Settings


def request_from(args: argparse.Namespace) -> PilotRequest:
    """The pilot ``submit`` and ``autoscale`` both ask for."""
    extra = {"kill_delay": args.kill_delay} if getattr(args, "kill_delay", None) is not None else {}
    return PilotRequest(queue=args.queue, time=args.time, nodes=args.nodes, workers_per_node=args.workers_per_node,
                        concurrency=args.concurrency, partition=args.partition, account=args.account,
                        grace=args.grace, log_dir=Path(args.log_dir).absolute() if args.log_dir else None,
                        sbatch_args=tuple(args.sbatch_arg or ()), **extra)


def _scheduler(args: argparse.Namespace) -> Scheduler:
    return scheduler_for(getattr(args, "command", None) or "slurm")


def slurm_submit(args: argparse.Namespace, settings: Settings) -> int:
    request, scheduler = request_from(args), _scheduler(args)
    if args.dry_run:
        print("# " + " ".join(shlex.quote(a) for a in scheduler.submit_argv(request)) + " <<'EOF'")
        print(scheduler.script(request), end="")
        print("EOF")
        return EXIT_OK
    print(scheduler.submit(request))
    return EXIT_OK


def slurm_drain(args: argparse.Namespace, settings: Settings) -> int:
    """Drain one pilot's workers, through the broker (the pilot's TERM trap runs this)."""
    from sandbox_runner.celery_app import app
    from sandbox_runner.hpc.pilot import worker_pattern

    pattern = worker_pattern(args.queue, args.pilot, _scheduler(args).name)
    # sr_pilot_drain (hpc/handback.py): stop taking jobs, finish what fits before the allocation ends, hand the
    # rest back, stop. The workers shut down without a reply.
    app.control.broadcast("sr_pilot_drain", arguments={"reason": args.reason}, pattern=pattern, matcher="glob",
                          reply=False)
    print(f"asked the workers matching {pattern} to drain: finish the jobs that fit before the end, hand back "
          "the others, stop")
    return EXIT_OK


def slurm_autoscale(args: argparse.Namespace, settings: Settings) -> int:
    """One decision (``--once``, for cron) or a loop of them every ``--interval`` seconds."""
    from sandbox_runner.errors import ConfigError
    from sandbox_runner.events.emitter import Emitter
    from sandbox_runner.hpc.autoscale import Autoscaler, queue_depth
    from sandbox_runner.hpc.misfits import MisfitBook

    if args.max < 1:
        raise ConfigError(f"--max must be at least 1, got {args.max}", field="max")
    request, scheduler = request_from(args), _scheduler(args)
    emitter = Emitter.from_settings(settings, settings.node_root, name=f"autoscale@{request.job_name}")
    book = MisfitBook(settings.redis_url, timeout=5.0) if settings.redis_url else None
    scaler = Autoscaler(request, args.max, depth=lambda: queue_depth(settings.broker_url, request.queue),
                        pilots=lambda: scheduler.pilots(request), submit=scheduler.submit, emitter=emitter,
                        book=book)
    try:
        if args.once:
            decision = scaler.step()
            print(f"submitted {decision.submit}: {decision.reason}")
        else:
            scaler.loop(args.interval)
    finally:
        emitter.close()
        if book is not None:
            book.close()
    return EXIT_OK
