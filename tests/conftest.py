"""Shared fixtures: the unprivileged worker user, work roots it can write, real Redis, job documents.

Tests that need podman, Redis or the ``srunner`` user skip when those are absent locally, and fail under
``CI=true`` (CI runs ``make test``, which installs and starts all of them).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
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


#: Real HySDS files from public repositories are test data read in place from here, never copied into the
#: project: ``<owner>__<repo>__<deployed name>`` files plus ``jobs/job.json.<type>`` (see its README.md).
REFERENCE = Path(os.environ.get("SANDBOX_RUNNER_REFERENCE", "/work/shared/reference"))
HYSDS_CORPUS = REFERENCE / "hysds-corpus"
#: One real file of each kind and shape the model and CLI tests look into (a large OPERA PGE job, lightweight
#: system jobs, hysds_commons' schema examples, a resolved job JSON, a worker config).
HYSDS_SAMPLES = (
    "nasa__opera-sds-pcm__job-spec.json.SCIFLO_L3_DSWx_HLS",
    "nasa__opera-sds-pcm__hysds-io.json.SCIFLO_L3_DSWx_HLS",
    "hysds__lightweight-jobs__job-spec.json.lightweight-echo",
    "hysds__lightweight-jobs__hysds-io.json.lightweight-echo",
    "hysds__lightweight-jobs__job-spec.json.lw-mozart-retry",
    "hysds__lightweight-jobs__hysds-io.json.lw-mozart-retry",
    "hysds__hysds_commons__job-spec.json.valid",
    "hysds__hysds_commons__job-spec.json.gpus",
    "hysds__hysds__job_worker.json.retry_job",
    "jobs/job.json.lw-tosca-wget",
)


def corpus_file(saved_as: str) -> Path:
    """The reference-corpus file saved as ``saved_as``; skips locally (fails under CI=true) when it is absent."""
    path = HYSDS_CORPUS / saved_as
    require(path.is_file(), f"HySDS reference file {path} not found (set SANDBOX_RUNNER_REFERENCE to the "
                            "directory holding hysds-corpus/)")
    return path


def deployed_name(saved_as: str) -> str:
    """The name HySDS deploys a corpus file under (it tells a file's kind by that name)."""
    return saved_as.rsplit("/", 1)[-1].rsplit("__", 1)[-1]


def corpus_file_as_deployed(saved_as: str, directory: Path) -> Path:
    """A symlink ``<directory>/<deployed name>`` to the corpus file: read in place, named as HySDS names it."""
    link = directory / deployed_name(saved_as)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(corpus_file(saved_as))
    return link


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
    from fsjobs import tmpfs  # imported here: fsjobs imports this module

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


def read_status_list(redis_url: str, key: str) -> list[dict[str, Any]]:
    import msgpack
    import redis

    return [msgpack.unpackb(raw, raw=False) for raw in redis.Redis.from_url(redis_url).lrange(key, 0, -1)]


def make_job(command: str, *, image: str | None = BUSYBOX, job_type: str = "sr_test", **extra: Any) -> dict[str, Any]:
    """A job JSON as HySDS's orchestrator would send it (HYSDS-WORKER.md section 2)."""
    job_id = f"{job_type}-{uuid.uuid4().hex[:10]}"
    job: dict[str, Any] = {
        "job_id": job_id,
        "name": job_id,
        "type": job_type,
        "task_id": str(uuid.uuid4()),
        "priority": 0,
        "tag": "test",
        "username": "ops",
        "params": {"_command": command, "_disk_usage": "1MB", "localize_urls": [],
                   "job_specification": {"command": command.split()[0], "params": [], "disk_usage": "1MB",
                                         "soft_time_limit": 60, "time_limit": 120}},
        "localize_urls": [],
        "job_info": {
            "id": job_id, "job_queue": "test-queue", "time_queued": "2026-01-01T00:00:00.000000Z",
            "index": "job_status-2026.01.01", "time_limit": 120, "soft_time_limit": 60,
            "payload_hash": uuid.uuid4().hex, "dedup": False,
            "job_payload": {"job_type": f"job:{job_type}", "payload_task_id": str(uuid.uuid4())},
        },
    }
    if image:
        job["container_image_name"] = image
    job.update(extra)
    return job


def write_job(directory: Path, job: dict[str, Any] | str, name: str = "job.json") -> Path:
    path = directory / name
    path.write_text(job if isinstance(job, str) else json.dumps(job))
    path.chmod(0o644)
    return path
