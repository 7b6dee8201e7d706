"""``job_specification.dependency_images``: loaded before the job, listed in ``_docker_params.json`` in HySDS's
shape (HYSDS-WORKER.md section 6), one entry per image; a dependency that cannot be loaded fails the job."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.jobs import make_job
from support.machine import BUSYBOX, BUSYBOX_TAR, Worker, require
from test_job_path import job_dir_of, run_job, terminal

from sandbox_runner.backends.base import ContainerSpec, DependencyImage, Mount
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.job.container import docker_params
from sandbox_runner.testing import fake_runner

HYSDS_KEYS = {"image_name", "image_url", "uid", "gid", "user_name", "working_dir", "volumes", "runtime_options"}


def test_docker_params_has_one_hysds_entry_per_image() -> None:
    dep = DependencyImage(image="opera/pge:1", image_url="s3://b/pge.tar.gz",
                          mounts=(Mount("/data/in", "/in", "ro"),), runtime_options={"memory": "4g"})
    spec = ContainerSpec(name="sr-x", image="main:1", image_url=None, argv=("run",), workdir="/w/jobs/j",
                         mounts=(Mount("/w/jobs/j", "/w/jobs/j", "rw"),), uid=5, gid=6, dependencies=(dep,))
    params = docker_params(spec)
    assert set(params) == {"main:1", "opera/pge:1"}
    main, pge = params["main:1"], params["opera/pge:1"]
    assert set(main) >= HYSDS_KEYS and set(pge) == HYSDS_KEYS
    assert main["image_name"] == "main:1" and main["argv"] == ["run"] and main["dependency_images"] == [
        {"image": "opera/pge:1", "image_url": "s3://b/pge.tar.gz"}]
    assert pge == {"image_name": "opera/pge:1", "image_url": "s3://b/pge.tar.gz", "uid": 5, "gid": 6,
                   "user_name": main["user_name"], "working_dir": "/w/jobs/j", "volumes": [["/data/in", "/in:ro"]],
                   "runtime_options": {"memory": "4g"}}
    assert main["volumes"] == [["/w/jobs/j", "/w/jobs/j:rw"]]
    # no uid/gid asked for: the worker's own, as HySDS's Base takes verdi's
    bare = docker_params(ContainerSpec(name="n", image=None, argv=("x",), workdir="/w", dependencies=(dep,)))
    assert list(bare) == ["opera/pge:1"] and bare["opera/pge:1"]["uid"] == os.getuid()


def _dep_job(dep_name: str, dep_url: str) -> dict[str, Any]:
    job = make_job("cat _docker_params.json")
    job["params"]["job_specification"]["dependency_images"] = [
        {"container_image_name": dep_name, "container_image_url": dep_url, "container_mappings": {},
         "runtime_options": {}}]
    return job


def test_dry_run_shows_dependencies_with_expanded_urls(tmp_path: Path) -> None:
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env={"CODE_BUCKET_URL": "s3://code"})
    spec = runner.plan(_dep_job("opera/pge:1", "$CODE_BUCKET_URL/pge.tar.gz"))
    assert spec.as_dict()["dependency_images"] == [{"image": "opera/pge:1", "image_url": "s3://code/pge.tar.gz"}]


@pytest.mark.parametrize("deps", [[{"container_image_url": None}], [{"container_image_name": ""}], ["pge:1"]],
                         ids=["no-name", "empty-name", "not-an-object"])
def test_malformed_dependency_is_one_job_failed_naming_the_field(tmp_path: Path, deps: list[Any]) -> None:
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend)
    job = make_job("/bin/true")
    job["params"]["job_specification"]["dependency_images"] = deps
    runner.run(json.dumps(job))
    doc = sink.terminal()
    assert doc["status"] == "job-failed" and "dependency_images[0]" in doc["error"], doc["error"]
    assert "Traceback" not in doc["error"] and backend.calls == []


def test_dependency_image_is_loaded_and_listed(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                               redis_url: str, status_key: str) -> None:
    require(BUSYBOX_TAR.exists(), f"{BUSYBOX_TAR} missing (run `make setup`)")
    worker = podman_ready
    dep = f"localhost/sr-test-dep-{uuid.uuid4().hex[:8]}:1"  # a name nothing else has: it must be loaded
    podman = ["podman", "--remote", "--url", f"unix://{worker.socket}"]
    try:
        proc, docs = run_job(worker, _dep_job(dep, f"file://{BUSYBOX_TAR}"), shared_dir, work_root, redis_url,
                             status_key, "podman")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert terminal(docs)["status"] == "job-completed"
        assert worker.run([*podman, "image", "exists", dep]).returncode == 0
        jd = job_dir_of(docs)
        params = json.loads((jd / "_docker_params.json").read_text())
        assert json.loads((jd / "_stdout.txt").read_text()) == params  # the job read the same document
        assert set(params) == {BUSYBOX, dep}
        assert set(params[dep]) == HYSDS_KEYS and params[dep]["image_url"] == f"file://{BUSYBOX_TAR}"
        assert params[dep]["uid"] == params[BUSYBOX]["uid"] and params[dep]["working_dir"] == str(jd)
        assert set(params[BUSYBOX]) >= HYSDS_KEYS and params[BUSYBOX]["user_name"] == worker.name
    finally:
        worker.run([*podman, "rmi", "-f", dep])


def test_unloadable_dependency_fails_the_job_naming_it(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                                       redis_url: str, status_key: str) -> None:
    dep = f"localhost/sr-test-missing-{uuid.uuid4().hex[:8]}:1"
    proc, docs = run_job(podman_ready, _dep_job(dep, "file:///nonexistent/dep.tar"), shared_dir, work_root,
                         redis_url, status_key, "podman")
    assert proc.returncode == 1
    doc = terminal(docs)
    assert doc["status"] == "job-failed"
    assert f"dependency image '{dep}'" in doc["error"] and "/nonexistent/dep.tar" in doc["error"], doc["error"]
