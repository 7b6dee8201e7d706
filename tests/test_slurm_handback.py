"""A pilot's drain on the real single-node Slurm: a job that cannot finish before the pilot's end (its walltime,
or a plain ``scancel``) is stopped, reported ``job-queued`` with a ``pilot``/``preempted`` event, handed back to
RabbitMQ and run again elsewhere exactly once. Real RabbitMQ, Redis and rootless podman as ``srunner``."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from support.celery_helpers import containers, job_docs, wait_for
from support.jobs import make_job, read_status_list
from support.machine import Worker
from test_slurm import slurm_up
from test_slurm_pilots import pilot_env, send, squeue_state

from sandbox_runner.events.documents import TERMINAL_STATUSES


def events(redis_url: str, key: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in read_status_list(redis_url, key) if d.get("resource") == "event" and d.get("type") == kind]


def submit(user: Worker, env: dict[str, str], queue: str, time: str, run_dir: Path) -> tuple[str, Path]:
    proc = user.run(["sandbox-runner", "slurm", "submit", "-Q", queue, "-t", time, "--grace", "30",
                     "--log-dir", str(run_dir)], env=env)
    assert proc.returncode == 0, proc.stderr
    slurm_id = proc.stdout.strip()
    return slurm_id, run_dir / f"sr-pilot-{queue}-{slurm_id}.out"


def waiting(what: str, log: Path, check: Any, timeout: float) -> None:
    """wait_for, with the pilot's log in the failure."""
    try:
        wait_for(check, timeout, interval=0.5, what=what)
    except AssertionError as exc:
        text = log.read_text(errors="replace")[-6000:] if log.exists() else "(no pilot log)"
        raise AssertionError(f"{exc}\n--- pilot log {log} ---\n{text}") from None


def statuses_of(redis_url: str, key: str, task_id: str) -> list[tuple[str, str]]:
    return [(d["status"], d["celery_hostname"]) for d in job_docs(redis_url, key, task_id)]


def assert_handed_back_once(redis_url: str, key: str, job: dict[str, Any], first: str, second: str) -> None:
    """job-started, job-queued (preempted) on the first pilot; job-started, job-completed on the other; one
    terminal status in all; the preemption an event of its own, not a failure."""
    docs = job_docs(redis_url, key, job["task_id"])
    seen = [(d["status"], d["celery_hostname"]) for d in docs]
    assert [s for s, _ in seen] == ["job-started", "job-queued", "job-started", "job-completed"], seen
    assert first in seen[0][1] and first in seen[1][1] and second in seen[2][1] and second in seen[3][1], seen
    assert [s for s, _ in seen if s in TERMINAL_STATUSES] == ["job-completed"]
    assert docs[1]["error"].startswith("preempted: pilot slurm:"), docs[1]
    preempted = events(redis_url, key, "pilot")
    preempted = [e for e in preempted if e["status"] == "preempted" and e["event"]["task_id"] == job["task_id"]]
    assert len(preempted) == 1, preempted
    assert not [e for e in events(redis_url, key, "worker_anomaly")]  # not counted as a job failure


def no_leftovers(user: Worker, work_root: Path, *names: str) -> None:
    for name in names:
        assert containers(user, f"sandbox_runner.worker={name}") == [], name
    assert not list(work_root.glob("jobs/**/.running")), list(work_root.glob("jobs/**/.running"))


def test_a_pilot_whose_walltime_ends_mid_job_hands_it_back_and_another_pilot_completes_it(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str,
        rabbit_url: str) -> None:
    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    env.update(SANDBOX_RUNNER_STOP_GRACE="2", SANDBOX_RUNNER_LEASE_TTL="3")
    # No time limit: admitted anywhere, and the drain cannot know it will not finish, so it runs until the
    # pilot's cutoff (its end less the stop grace and a margin), ~50 s into a 1-minute pilot.
    job = make_job("sleep 55")
    for key in ("time_limit", "soft_time_limit"):
        job["job_info"].pop(key)
        job["params"]["job_specification"].pop(key)
    send(rabbit_url, redis_url, queue, job)
    first, first_log = submit(podman_ready, env, queue, "1", run_dir)
    second = ""
    try:
        wait_for(lambda: statuses_of(redis_url, status_key, job["task_id"]), 90, interval=0.5,
                 what=f"the first pilot to start the job ({first_log})")
        second, second_log = submit(podman_ready, env, queue, "3", run_dir)  # boots while the first runs the job
        wait_for(lambda: "job-queued" in [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 90,
                 interval=0.5, what=f"the first pilot to hand the job back ({first_log})")
        wait_for(lambda: squeue_state(first) == "", 60, interval=0.5, what="the first pilot to end")
        wait_for(lambda: "job-completed" in [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 120,
                 interval=0.5, what=f"the second pilot to complete the job ({second_log})")
        assert_handed_back_once(redis_url, status_key, job, f"-slurm{first}.", f"-slurm{second}.")
        event = next(e for e in events(redis_url, status_key, "pilot") if e["status"] == "preempted")
        assert event["event"]["pilot"] == f"slurm:{first}" and event["event"]["time_limit"] is None
        text = first_log.read_text()
        assert "draining" in text and "workers stopped" in text, text
        no_leftovers(podman_ready, work_root, *{h for _, h in statuses_of(redis_url, status_key, job["task_id"])})
    finally:
        for slurm_id in (first, second):
            if slurm_id:
                subprocess.run(["scancel", slurm_id], check=False)


def test_plain_scancel_hands_back_a_job_that_cannot_finish_before_the_kill(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str, rabbit_url: str,
        start_worker: Any) -> None:
    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    env.update(SANDBOX_RUNNER_STOP_GRACE="2", SANDBOX_RUNNER_LEASE_TTL="3")
    # 40 s of time limit does not fit in the 30 s between scancel's TERM and its KILL (KillWait): stopped at once
    job = make_job("sleep 15")
    job["job_info"].update(time_limit=40, soft_time_limit=35)
    pilot, log = submit(podman_ready, env, queue, "5", run_dir)
    try:
        wait_for(lambda: log.exists() and " ready." in log.read_text(), 90, interval=0.5, what="the pilot's worker")
        send(rabbit_url, redis_url, queue, job)
        wait_for(lambda: "job-started" in [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 60,
                 interval=0.2, what="the pilot to start the job")
        subprocess.run(["scancel", pilot], check=True)  # plain: TERM to every process of the pilot, KILL later
        wait_for(lambda: "job-queued" in [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 30,
                 interval=0.2, what=f"the pilot to hand the job back ({log})")
        wait_for(lambda: squeue_state(pilot) == "", 60, interval=0.5, what="the pilot to end")
        names = {h for _, h in statuses_of(redis_url, status_key, job["task_id"])}
        no_leftovers(podman_ready, work_root, *names)

        other = start_worker(rabbit_url, queue=queue)  # a worker with time takes the message from RabbitMQ
        wait_for(lambda: "job-completed" in [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 90,
                 interval=0.5, what="the other worker to complete the job")
        assert_handed_back_once(redis_url, status_key, job, f"-slurm{pilot}.", other.name)
        event = next(e for e in events(redis_url, status_key, "pilot") if e["status"] == "preempted")
        assert event["event"]["time_limit"] == 40 and "cancelled" in event["event"]["reason"], event
        no_leftovers(podman_ready, work_root, *names, other.name)
    finally:
        subprocess.run(["scancel", pilot], check=False)


def test_short_jobs_queued_behind_a_long_one_still_run_on_a_short_pilot(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str,
        rabbit_url: str) -> None:
    from sandbox_runner.hpc.autoscale import queue_depth

    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    long_job = make_job("sleep 1")
    long_job["job_info"]["time_limit"] = 600  # never fits a 2-minute pilot
    short = [make_job("sleep 1") for _ in range(2)]
    for job in short:
        job["job_info"].update(time_limit=30, soft_time_limit=20)  # these fit
    for job in (long_job, *short):  # the long one first: at the head of the queue
        send(rabbit_url, redis_url, queue, job)
    pilot, log = submit(podman_ready, env, queue, "2", run_dir)
    try:
        for job in short:
            waiting("the pilot to run a short job", log, lambda job=job: "job-completed" in [
                s for s, _ in statuses_of(redis_url, status_key, job["task_id"])], 90)
        # Then only the long job is left: it comes round again with nothing run since, and the pilot gives up
        # long before its walltime.
        wait_for(lambda: squeue_state(pilot) == "", 60, interval=0.5, what=f"the pilot to give up ({log})")
        assert job_docs(redis_url, status_key, long_job["task_id"]) == []
        handed = [e for e in events(redis_url, status_key, "pilot")
                  if e["status"] == "handed_back" and e["event"]["task_id"] == long_job["task_id"]]
        assert len(handed) >= 2, handed
        for job in short:
            assert [s for s, _ in statuses_of(redis_url, status_key, job["task_id"])] == \
                ["job-started", "job-completed"]
        assert queue_depth(rabbit_url, queue) == 1  # the long job waits, once, for a worker with time
    finally:
        subprocess.run(["scancel", pilot], check=False)
