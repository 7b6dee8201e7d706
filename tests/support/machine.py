"""The machine the tests run on: the repo and its venv, the test image, the unprivileged worker user."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
BUSYBOX = "localhost/sandbox-runner/busybox:latest"
BUSYBOX_TAR = REPO / "build" / "images" / "busybox.tar"
USER = "srunner"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a missing service must never make CI green by skipping."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Worker:
    """The unprivileged user the worker runs as, and how to run commands as it."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    @property
    def socket(self) -> str:
        return f"{self.runtime_dir}/podman/podman.sock"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": self.home, "USER": self.name, "LOGNAME": self.name,
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": self.runtime_dir, "LANG": "C.UTF-8",
            "SANDBOX_RUNNER_LOG_FORMAT": "json",
        }
        env.update(extra)
        return env

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
            input: bytes | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", self.name, "--", "env", "-i", *[f"{k}={v}" for k, v in (env or self.env()).items()],
               *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              input=input.decode() if input else None, cwd=cwd or "/")
