"""``sandbox-runner scrub [--dry-run] [--work-root DIR]``: one scrub by hand, printing every action and its bytes."""

from __future__ import annotations

import argparse
import sys

from sandbox_runner.cli.exits import EXIT_FAILED, EXIT_OK
from sandbox_runner.fspolicy.ladder import describe_error
from sandbox_runner.fspolicy.periodic import scrub_once
from sandbox_runner.fspolicy.policy import load_fs_policy
from sandbox_runner.fspolicy.report import Action, Space
from sandbox_runner.settings import Settings
from sandbox_runner.units import format_size

_DONE = {"quarantine": "quarantined", "purge": "purged", "evict": "evicted", "skip": "skipped"}
#: what a skip could not do, by its reason (a job dir's state otherwise: it could not be moved)
_CANNOT = {"unlistable": "cannot list the job dirs under it", "unknown": "cannot check whether its job runs"}


def _line(action: Action, dry_run: bool) -> str:
    verb = f"would {action.kind}" if dry_run else _DONE[action.kind]
    if action.kind == "skip":  # not ours to move: say whose problem it is, and go on
        return f"{verb:<16} {action.path}  ({action.reason}; {_CANNOT.get(action.reason, 'cannot quarantine')}: " \
               f"{action.error})"
    # a quarantined dir frees its bytes when the quarantine is purged; say so rather than claim them twice
    frees = "frees on purge" if action.kind == "quarantine" else "frees"
    text = f"{verb:<16} {action.path}  ({action.reason}; {frees} {format_size(action.bytes)}"
    text += f", {action.inodes} inodes)" if action.inodes else ")"
    if action.error and action.freed:  # a purge that failed part-way: say what it did give back
        return text + f"  FAILED after freeing {format_size(action.freed)}: {action.error}"
    return text + (f"  FAILED: {action.error}" if action.error else "")


def scrub(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox_runner.worker.root import pin_work_root

    settings = pin_work_root(settings.with_overrides(work_root=args.work_root))  # where the worker's jobs land
    root = settings.node_root
    policy = load_fs_policy(settings.fs_policy)
    if not root.is_dir():
        print(f"{root}: no work root here, nothing to scrub")
        return EXIT_OK
    emitter = None
    if not args.dry_run:
        from sandbox_runner.events import Emitter

        emitter = Emitter.from_settings(settings, root)
    try:
        report = scrub_once(root, policy, emitter, dry_run=args.dry_run,
                            on_action=lambda a: print(_line(a, args.dry_run), flush=True))
    except OSError as exc:  # e.g. a root this user may not lock or list
        print(f"sandbox-runner scrub: {root}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if emitter is not None:
            emitter.close()
    space = Space.of(str(root))
    counts, sizes = report.counts, report.bytes
    lead = "would free" if args.dry_run else "freed"
    print(f"{lead} {format_size(report.freed)}: {counts.get('quarantine', 0)} dir(s) quarantined "
          f"({format_size(sizes.get('quarantine', 0))}), {counts.get('purge', 0)} purged, "
          f"{counts.get('evict', 0)} cache entr(ies) evicted, {counts.get('skip', 0)} skipped; "
          f"{format_size(space.free)} of "
          f"{format_size(space.capacity)} free now (policy: {policy.source})")
    short_b, short_i = report.short
    if short_b or short_i:
        lacking = " and ".join(x for x in (short_b and format_size(short_b), short_i and f"{short_i} inodes") if x)
        print(f"the policy's free-space threshold is still {lacking} short: nothing more may be scrubbed")
    # the threshold is the scrub's job: a dir it could not touch (listed above) fails it only if space is short
    return EXIT_FAILED if short_b or short_i else EXIT_OK
