"""Shared by the podman benchmarks: they run as the unprivileged worker user, as the worker itself does."""

from __future__ import annotations

import compileall
import os
import pwd
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/sandbox-runner/busybox:latest"
USER = "srunner"


def as_worker() -> None:
    """Re-run the calling script as the unprivileged user: the worker is rootless, so is its benchmark."""
    if os.getuid() != 0:
        return
    # the worker user cannot write the checkout's __pycache__: stale bytecode (code changed since `make setup`
    # compiled it) would be recompiled in memory on every run and counted as the runner's start-up
    compileall.compile_dir(REPO / "sandbox_runner", quiet=2)
    pw = pwd.getpwnam(USER)
    env = {"HOME": pw.pw_dir, "PATH": f"{REPO}/.venv/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": f"/run/user/{pw.pw_uid}",
           "LANG": "C.UTF-8"}
    argv = ["runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            f"{REPO}/.venv/bin/python", *sys.argv]
    os.execvp("runuser", argv)
