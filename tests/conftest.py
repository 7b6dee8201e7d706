"""Shared fixtures: the unprivileged worker user, work roots it can write, real Redis, job documents.

Tests that need podman, Redis or the ``srunner`` user skip when those are absent locally, and fail under
``CI=true`` (CI runs ``make test``, which installs and starts all of them).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.machine import BUSYBOX, USER, VENV_BIN, Worker, require

#: every fixture module, registered once here (test modules declare no pytest_plugins of their own)
pytest_plugins = ["support.celery_fixtures", "support.data_fixtures"]


@pytest.fixture(scope="session")
def worker() -> Worker:
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        require(False, f"user {USER} does not exist (run `make setup`)")
        raise
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    require(os.getuid() == 0, "tests that run the worker as srunner need to start as root")
    return Worker(USER, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@pytest.fixture(scope="session")
def podman_ready(worker: Worker) -> Worker:
    require(Path(worker.socket).exists(), f"no podman API socket at {worker.socket} (run `make setup`)")
    probe = worker.run(["podman", "--remote", "--url", f"unix://{worker.socket}", "image", "exists", BUSYBOX])
    require(probe.returncode == 0, f"test image {BUSYBOX} missing in {USER}'s storage (run `make setup`)")
    return worker


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temp dir every user can traverse (pytest's tmp_path is mode 700 under /tmp/pytest-of-root)."""
    path = Path(tempfile.mkdtemp(prefix="sr-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work_root(shared_dir: Path) -> Path:
    root = shared_dir / "work"
    root.mkdir()
    try:
        pw = pwd.getpwnam(USER)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    except KeyError:
        pass
    return root


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    """A work root on a real 20 MiB, 2000-inode tmpfs (the filesystem-policy tests fill it up)."""
    from support.fsjobs import tmpfs

    with tmpfs(tmp_path / "mnt") as mnt:
        root = mnt / "work"
        root.mkdir()
        yield root


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("SANDBOX_RUNNER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        require(False, f"no Redis at {url}")
    return url


@pytest.fixture
def status_key(redis_url: str) -> Iterator[str]:
    """A status list of the test's own on the shared Redis, so parallel runs don't see each other."""
    import redis

    key = f"sr-test-{uuid.uuid4().hex[:12]}"
    yield key
    redis.Redis.from_url(redis_url).delete(key)
