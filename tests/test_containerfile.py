"""The worker image built from Containerfile (``make image``) starts and runs the CLI.

The image is built rootless in the ``srunner`` user's storage, so it is run as that user. As root the module
first brings the image up to date with ``scripts/setup/image.sh`` (what ``make image`` runs; a no-op taking about
a second when nothing it is made from changed). Skips locally when that cannot be done; fails under ``CI=true``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_runner import __version__

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/sandbox-runner/worker:latest"
USER = "srunner"
IN_CI = os.environ.get("CI", "").lower() == "true"

# A cold `make image` debootstraps a Debian base and builds wheels: minutes, not the suite's default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.podman, pytest.mark.timeout(1800)]


def _require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a missing image must never make CI green by skipping."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def _as_user_argv(argv: list[str]) -> list[str]:
    """Rootless storage is per user: as root, run podman as srunner; as anyone else, run it directly."""
    if os.geteuid() != 0:
        return argv
    pw = pwd.getpwnam(USER)
    env = [
        f"HOME={pw.pw_dir}",
        f"USER={USER}",
        f"LOGNAME={USER}",
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        f"XDG_RUNTIME_DIR=/run/user/{pw.pw_uid}",
    ]
    return ["runuser", "-u", USER, "--", "env", "-i", *env, *argv]


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_user_argv(["podman", *args]), capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )


def _run_image(*args: str) -> subprocess.CompletedProcess[str]:
    return _podman("run", "--rm", "--network=none", IMAGE, *args)


@pytest.fixture(scope="module")
def worker_image() -> str:
    _require(shutil.which("podman") is not None, "podman is not installed (run `make setup`)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            _require(False, f"user {USER} does not exist (run `make setup`)")
        built = subprocess.run(
            [str(REPO / "scripts" / "setup" / "image.sh")],
            capture_output=True,
            text=True,
            timeout=1700,
            check=False,
            cwd=REPO,
        )
        tail = "\n".join((built.stdout + built.stderr).splitlines()[-20:])
        _require(built.returncode == 0, f"building {IMAGE} failed:\n{tail}")
    exists = _podman("image", "exists", IMAGE)
    _require(exists.returncode == 0, f"{IMAGE} does not exist (run `make image` as root)")
    return IMAGE


def test_version_prints_the_package_version(worker_image: str) -> None:
    result = _run_image("--version")

    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout.split(), result.stdout


def test_doctor_reports_without_crashing(worker_image: str) -> None:
    # Inside the image some checks fail by design (no podman in there): exit 1 is a finding, not a crash.
    result = _run_image("doctor")
    output = result.stdout + result.stderr

    assert result.returncode in {0, 1}, output
    assert output.strip(), "doctor printed nothing"
    assert "Traceback" not in output, output


def test_image_runs_as_a_non_root_user(worker_image: str) -> None:
    result = _podman("run", "--rm", "--network=none", "--entrypoint", "id", worker_image, "-u")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() not in {"", "0"}, result.stdout
