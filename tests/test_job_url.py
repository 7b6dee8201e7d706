"""``job_url`` over HTTP, as HySDS publishes work dirs (``http://<host>:<webdav_port>/jobs/YYYY/MM/DD/HH/MI/<id>``).

The server alone (read-only, nothing outside the jobs tree), then a real ``sandbox-runner worker`` on RabbitMQ
running a real podman job whose status document's ``job_url`` is fetched over HTTP, and a stand-alone run whose
``job_url`` stays ``file://``.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.celery_helpers import client, free_port, job_docs
from support.jobs import make_job, read_status_list

from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.errors import ConfigError
from sandbox_runner.events import Emitter
from sandbox_runner.job.hostfacts import host_facts
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.job.url import job_url
from sandbox_runner.settings import load_settings
from sandbox_runner.worker.jobhttp import JobHTTPServer


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """A raw request: http.client sends the path as given (no ``..`` folding, unlike browsers and curl)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path: Path) -> Any:
    root = tmp_path / "work"
    job = root / "jobs" / "2026" / "01" / "02" / "03" / "04" / "job-1"
    job.mkdir(parents=True)
    (job / "_stdout.txt").write_text("hello\n")
    (root / "events").mkdir()
    (root / "events" / "secret.txt").write_text("not for the web\n")
    (tmp_path / "netrc").write_text("machine x login y password z\n")
    (job / "escape").symlink_to(tmp_path / "netrc")  # what a job could leave in its dir
    (job / "escape-dir").symlink_to(root / "events")
    (job / "inside").symlink_to(job / "_stdout.txt")
    server = JobHTTPServer(root, "127.0.0.1", 0, "127.0.0.1")
    yield server, job
    server.stop()


def test_files_and_listings_are_served_under_jobs(served: Any) -> None:
    server, job = served
    url = job_url(load_settings({}, work_root=server.root, job_url_base=server.base_url), job)
    assert url == f"http://127.0.0.1:{server.port}/jobs/2026/01/02/03/04/job-1"
    with urllib.request.urlopen(url + "/_stdout.txt", timeout=10) as resp:
        assert resp.read() == b"hello\n"
    with urllib.request.urlopen(url + "/", timeout=10) as resp:
        listing = resp.read().decode()
    assert "_stdout.txt" in listing and "inside" in listing
    assert request(server.port, "GET", "/jobs/2026/01/02/03/04/job-1/inside") == (200, b"hello\n")
    assert request(server.port, "HEAD", "/jobs/2026/01/02/03/04/job-1/_stdout.txt")[0] == 200


@pytest.mark.parametrize("path", [
    "/jobs/../events/secret.txt",
    "/jobs/2026/../../events/secret.txt",
    "/jobs/%2e%2e/events/secret.txt",
    "/jobs/2026/01/02/03/04/job-1/escape",
    "/jobs/2026/01/02/03/04/job-1/escape-dir/secret.txt",
    "/events/secret.txt",
    "/",
    "/jobs/\x00",
])
def test_nothing_outside_the_jobs_tree(served: Any, path: str) -> None:
    server, _ = served
    status, body = request(server.port, "GET", urllib.parse.quote(path, safe="/%"))
    assert status == 404 and b"password" not in body and b"not for the web" not in body


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "MKCOL", "MOVE"])
def test_read_only(served: Any, method: str) -> None:
    server, job = served
    status, _ = request(server.port, method, "/jobs/2026/01/02/03/04/job-1/_stdout.txt", body=b"overwritten")
    assert status == 405
    assert (job / "_stdout.txt").read_text() == "hello\n"
    assert request(server.port, method, "/jobs/2026/01/02/03/04/job-1/new.txt", body=b"x")[0] == 405
    assert not (job / "new.txt").exists()


def test_workers_sharing_a_work_root_share_the_port(served: Any) -> None:
    """One worker per queue on a node, one work root: the second binds the same port (SO_REUSEPORT) and the URL
    keeps working when the first stops."""
    first, _ = served
    second = JobHTTPServer(first.root, "127.0.0.1", first.port, None)
    try:
        # no host given: the node's address, as HySDS's public_ip
        assert second.base_url == f"http://{host_facts()['hysds_public_ip'] or host_facts()['fqdn']}:{first.port}"
        first.stop()
        assert request(first.port, "GET", "/jobs/2026/01/02/03/04/job-1/_stdout.txt") == (200, b"hello\n")
    finally:
        second.stop()


def test_a_port_in_use_is_a_readable_config_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"job_url_port: cannot serve the jobs tree on 127\.0\.0\.1:\d+"):
            JobHTTPServer(tmp_path, "127.0.0.1", taken.getsockname()[1], None)


def test_setting_from_environment_and_bad_port() -> None:
    s = load_settings({"SANDBOX_RUNNER_JOB_URL_PORT": "8085", "SANDBOX_RUNNER_JOB_URL_HOST": "verdi.example"})
    assert (s.job_url_port, s.job_url_host, s.job_url_bind, s.job_url_base) == (8085, "verdi.example", "0.0.0.0",
                                                                                None)
    with pytest.raises(ConfigError, match="job_url_port"):
        load_settings({"SANDBOX_RUNNER_JOB_URL_PORT": "70000"})


def test_stand_alone_run_keeps_file_url(tmp_path: Path) -> None:
    """A port in the environment alone serves nothing: a run outside a worker must not advertise a URL."""
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"),
                              "SANDBOX_RUNNER_JOB_URL_PORT": str(free_port())}, min_free_percent=0.0)
    emitter = Emitter.from_settings(settings, tmp_path / "work")
    job = make_job("/bin/true")
    try:
        outcome = JobRunner(settings, emitter, backend_for=lambda s, spec: FakeBackend()).run(job)
    finally:
        emitter.close()
    assert outcome.status == "job-completed"
    info = job["job_info"]
    assert info["job_url"] == f"file://{info['job_dir']}"


@pytest.mark.podman
@pytest.mark.slow
def test_worker_serves_job_url_of_a_real_job(start_worker, rabbit_url: str, redis_url: str,
                                             status_key: str) -> None:
    port = free_port()
    w = start_worker(rabbit_url, SANDBOX_RUNNER_JOB_URL_PORT=str(port), SANDBOX_RUNNER_JOB_URL_HOST="127.0.0.1")
    job = make_job("echo served over http")
    result = client(rabbit_url, redis_url).send_task("hysds.job_worker.run_job", args=[job], queue=w.queue,
                                                     task_id=job["task_id"]).get(timeout=90)
    assert result["status"] == "job-completed"
    docs = job_docs(redis_url, status_key, job["task_id"])
    done = next(d for d in docs if d["status"] == "job-completed")
    url = done["job"]["job_info"]["job_url"]
    job_dir = done["job"]["job_info"]["job_dir"]
    # HySDS's shape: http://<host>:<port>/jobs/YYYY/MM/DD/HH/MI/<job_id>, the job dir's path under the work root
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/jobs/\d{{4}}(/\d\d){{4}}/{job['job_id']}", url), url
    assert job_dir.endswith(url.split(f":{port}", 1)[1])
    assert result["job_url"] == url
    started = next(d for d in docs if d["status"] == "job-started")
    assert started["job"]["job_info"]["job_url"] == url
    info = [d for d in read_status_list(redis_url, status_key)
            if d.get("type") == "job_info" and d["job"]["task_id"] == job["task_id"]]
    assert [d["job"]["job_info"]["job_url"] for d in info] == [url]
    with urllib.request.urlopen(url + "/_stdout.txt", timeout=10) as resp:
        assert resp.read() == b"served over http\n"
    with urllib.request.urlopen(url + "/", timeout=10) as resp:
        assert "_stdout.txt" in resp.read().decode()
    path = urllib.parse.urlsplit(url).path
    assert request(port, "GET", f"{path}/../../../../../../../events/")[0] == 404
    assert request(port, "DELETE", f"{path}/_stdout.txt")[0] == 405
    assert Path(job_dir, "_stdout.txt").exists()
    # stopped with the worker
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=60) == 0  # a clean stop
    with pytest.raises(OSError):
        request(port, "GET", path)
    assert os.path.isdir(job_dir)


@pytest.mark.podman
@pytest.mark.slow
def test_a_worker_whose_port_is_taken_does_not_start(start_worker, rabbit_url: str) -> None:
    import socket

    with socket.socket() as taken:  # another program on the port (no SO_REUSEPORT: not one of our workers)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        w = start_worker(rabbit_url, wait=False, SANDBOX_RUNNER_JOB_URL_PORT=str(port))
        assert w.wait(timeout=60) == 1, w.text()  # a failed start is a failure to a supervisor
    assert f"job_url_port: cannot serve the jobs tree on 0.0.0.0:{port}: Address already in use" in w.text()
    assert " ready." not in w.text()
