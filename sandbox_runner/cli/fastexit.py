"""End a finished ``sandbox-runner run-job`` process without the interpreter's teardown.

After the job is closed, a normal exit still tears down every module and frees every object one by one: 35-50 ms
for the ~400 modules a job loads (structlog and asyncio alone ~30 ms; measured by benchmarks/job_overhead.py),
which is more than the runner's own work around a trivial job, spent freeing memory the kernel frees anyway.

Only the teardown is skipped: :func:`arm` registers a handler before anything else does, and atexit runs handlers
last-in first-out, so by the time ours runs Python has already joined non-daemon threads, shut down executors, run
every other exit handler (weakref finalizers, logging's among them) -- ours flushes the standard streams and
leaves with the code :func:`set_code` recorded. If none was recorded (an exception escaped ``main``), or the
streams cannot be flushed, the normal exit runs and reports it as it always does.

Only for the process the command line started (``main()`` without ``argv``): a caller that runs ``main`` in
its own process (tests, ``scripts/run_job.py``) keeps its own exit.
"""

from __future__ import annotations

import atexit
import os
import sys

_code: list[int] = []


def arm() -> None:
    """Call first thing, before the imports that register exit handlers of their own (logging, executors)."""
    atexit.register(_finish)


def set_code(code: int) -> int:
    _code[:] = [code]
    return code


def _finish() -> None:
    if not _code:
        return
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()  # idempotent; in case its handler was registered before ours
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return  # e.g. a closed pipe: the normal exit reports it
    os._exit(_code[0])
