#!/usr/bin/env python3
"""Run one HySDS job JSON stand-alone, as HySDS's test mode does: ``scripts/run_job.py test_job.json``.

``HYSDS_WORKER_CFG`` and ``HYSDS_DATASETS_CFG`` are taken from the environment when set (both optional here).
Exit status 0 if and only if the job completed. Same as ``sandbox-runner run-job JOB.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:
    from sandbox_runner.cli import main
except ImportError:
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.executable).resolve() != venv_python.resolve():
        # run under the project's virtual environment (made by `make setup`) when called with another python
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.path.insert(0, str(REPO))
    from sandbox_runner.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nusage: scripts/run_job.py JOB.json [run-job options, e.g. --work-root DIR --backend subprocess]")
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    sys.exit(main(["run-job", *sys.argv[1:]]))
