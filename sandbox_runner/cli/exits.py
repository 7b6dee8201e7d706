"""The exit codes of every ``sandbox-runner`` command, defined once."""

from __future__ import annotations

#: the command did what it was asked; for ``run-job``: the job completed
EXIT_OK = 0
#: the command ran and what it ran failed: a job, a scrub left short of space, an events file that is not there
EXIT_FAILED = 1
#: the input was wrong (arguments, settings, an invalid HySDS file); argparse exits 2 on bad arguments too
EXIT_USAGE = 2
#: stopped with Ctrl-C: 128 + SIGINT, what a shell reports for it
EXIT_INTERRUPTED = 130

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]
