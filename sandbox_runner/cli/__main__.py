"""``python -m sandbox_runner.cli``: what pilots and tests run when the console script is not on PATH."""

import sys

from sandbox_runner.cli.main import main

sys.exit(main())
