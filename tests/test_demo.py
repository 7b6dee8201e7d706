"""`make demo` is the README's first command: its script must run a real job to `job-completed` (a change to the
job path once broke it while every other test passed, because only the demo keeps datasets.json in /var/tmp)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support.machine import REPO, require


@pytest.mark.podman
def test_the_demo_script_completes_a_real_job(podman_ready: object, redis_url: str) -> None:
    require(os.getuid() == 0, "scripts/demo.sh runs as root, like make demo")
    # the script's own layout, under a root outside /tmp, $HOME and the work root (where an operator's file is)
    demo = Path(tempfile.mkdtemp(prefix="sr-demo-", dir="/var/tmp"))
    demo.chmod(0o755)  # the worker user must reach the demo dir below it
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True,
                              timeout=180, env={**os.environ, "DEMO_ROOT": str(demo / "demo")})
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        assert "= job-completed" in output, output[-4000:]
        assert list((demo / "demo" / "published").rglob("*.dataset.json")), output[-4000:]
    finally:
        shutil.rmtree(demo, ignore_errors=True)
