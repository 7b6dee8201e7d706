"""Engine failures told plainly (issue 8 section 2), against real rootless podman and the subprocess backend.

A command that runs and exits non-zero keeps HySDS's ``Got non-zero exit code: N``. When the *engine* could not
run the command at all (executable not found, not executable, an OCI runtime refusal), ``error`` and
``short_error`` say so and carry the engine's own reason.
"""

from __future__ import annotations

from pathlib import Path

import redis
from support.jobs import make_job
from support.machine import Worker
from test_job_path import BACKENDS, backend, image_for, run_job, terminal  # noqa: F401  (backend: fixture)

__all__ = ["BACKENDS"]


def test_a_missing_program_is_named_as_the_engines_failure(worker: Worker, backend: str,  # noqa: F811
                                                            shared_dir: Path, work_root: Path, redis_url: str,
                                                            status_key: str) -> None:
    job = make_job("/no/such/program --flag", image=image_for(backend))
    _, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    done = terminal(docs)
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert done["status"] == "job-failed"
    engine = "container engine" if backend == "podman" else "the sandbox"
    assert done["error"].startswith(f"{engine} could not start the job: executable file not found: "
                                    "/no/such/program"), done["error"]
    assert done["short_error"].startswith(engine[:20]) and done["short_error"] != done["error"]
    assert (jd / "_exit_code").read_text().strip() != "0"


def test_a_program_exiting_non_zero_keeps_the_hysds_message(worker: Worker, backend: str,  # noqa: F811
                                                            shared_dir: Path, work_root: Path, redis_url: str,
                                                            status_key: str) -> None:
    for code in (1, 125, 127):
        job = make_job(f"sh -c 'exit {code}'", image=image_for(backend))
        _, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
        assert terminal(docs)["error"] == f"Got non-zero exit code: {code}"
        redis.Redis.from_url(redis_url).delete(status_key)  # the next job's docs alone on the list


def test_a_program_that_is_not_executable_is_named(worker: Worker, backend: str,  # noqa: F811
                                                   shared_dir: Path, work_root: Path, redis_url: str,
                                                   status_key: str) -> None:
    job = make_job("/etc/passwd", image=image_for(backend))
    _, docs = run_job(worker, job, shared_dir, work_root, redis_url, status_key, backend)
    done = terminal(docs)
    assert done["status"] == "job-failed"
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert "could not start the job: permission denied: /etc/passwd" in done["error"], \
        (done["error"], (jd / "_stderr.txt").read_text())


def test_an_oci_runtime_refusal_carries_the_runtimes_words(podman_ready: Worker, shared_dir: Path,
                                                           work_root: Path, redis_url: str,
                                                           status_key: str) -> None:
    # rootless runc cannot raise a hard limit above the user's own: it refuses to start the container
    job = make_job("true", runtime_options={"ulimit": "nofile=999999999:999999999"})
    _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman")
    done = terminal(docs)
    assert done["status"] == "job-failed"
    assert done["error"].startswith("container engine could not start the job: "), done["error"]
    assert "rlimit" in done["error"] and "operation not permitted" in done["error"]
