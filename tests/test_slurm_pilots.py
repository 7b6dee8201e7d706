"""Workers as Slurm pilot jobs, for real: `sandbox-runner slurm submit` as ``srunner`` on the single-node Slurm
`make setup` installs, a real RabbitMQ, Redis and rootless podman."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

from support.celery_helpers import client, containers, job_docs, wait_for
from support.jobs import make_job
from support.machine import Worker
from test_slurm import slurm_up

from sandbox_runner.events.documents import TERMINAL_STATUSES


def send(broker: str, backend: str, queue: str, job: dict[str, Any]) -> None:
    """As HySDS's orchestrator sends a job: its task name, the job JSON as the one argument."""
    client(broker, backend).send_task("hysds.job_worker.run_job", args=[job], queue=queue, task_id=job["task_id"])


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def test_dry_run_prints_the_script_and_submits_nothing(worker: Worker) -> None:
    proc = worker.run(["sandbox-runner", "slurm", "submit", "-Q", "dry.q", "-t", "2:00:00", "-w", "2", "-c", "3",
                       "--grace", "90", "--sbatch-arg=--qos=low", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "--signal=B:TERM@90" in proc.stdout and "--time 2:00:00" in proc.stdout and "--qos=low" in proc.stdout
    assert "--ntasks-per-node=2" in proc.stdout and "worker -Q dry.q -c 3" in proc.stdout
    assert "celery@dry-q-slurm${SLURM_JOB_ID}." in proc.stdout


def test_sbatch_refusal_is_told_in_slurms_words(worker: Worker) -> None:
    slurm_up()
    proc = worker.run(["sandbox-runner", "slurm", "submit", "-Q", "x.q", "-p", "no-such-partition"])
    assert proc.returncode != 0
    assert "sbatch refused" in proc.stderr and "partition" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_pilot_runs_a_hysds_job_and_scancel_drains_it(podman_ready: Worker, run_dir: Path, work_root: Path,
                                                      redis_url: str, status_key: str, rabbit_url: str) -> None:
    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = podman_ready.env(
        SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
        SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
        SANDBOX_RUNNER_BROKER_URL=rabbit_url, SANDBOX_RUNNER_RESULT_BACKEND=redis_url,
        SANDBOX_RUNNER_HEARTBEAT_INTERVAL="1", SANDBOX_RUNNER_MIN_FREE_PERCENT="0",
        SBATCH_EXPORT="NONE")  # as some centres set it: the settings must reach the workers all the same
    proc = podman_ready.run(["sandbox-runner", "slurm", "submit", "-Q", queue, "-t", "10", "--grace", "30",
                             "--log-dir", str(run_dir)], env=env)
    assert proc.returncode == 0, proc.stderr
    slurm_id = proc.stdout.strip()
    assert slurm_id.isdigit(), proc.stdout
    name = f"celery@{queue}-slurm{slurm_id}.01.{socket.gethostname()}"
    log = run_dir / f"sr-pilot-{queue}-{slurm_id}.out"
    try:
        job = make_job("sleep 1")
        send(rabbit_url, redis_url, queue, job)
        wait_for(lambda: any(d["status"] in TERMINAL_STATUSES for d in job_docs(redis_url, status_key, job["task_id"])),
                 180, interval=0.5, what=f"the pilot's job to finish (pilot log: {log})")
        docs = job_docs(redis_url, status_key, job["task_id"])
        final = [d for d in docs if d["status"] in TERMINAL_STATUSES]
        assert [d["status"] for d in final] == ["job-completed"], [d["status"] for d in docs]
        assert final[0]["celery_hostname"] == name

        # A job still running when the pilot is cancelled finishes; the workers stop; nothing is left behind.
        long_job = make_job("sleep 4")
        send(rabbit_url, redis_url, queue, long_job)
        wait_for(lambda: "job-started" in [d["status"] for d in job_docs(redis_url, status_key, long_job["task_id"])],
                 60, interval=0.2, what="the second job to start")
        subprocess.run(["scancel", "--batch", "--signal=TERM", slurm_id], check=True)
        wait_for(lambda: squeue_state(slurm_id) == "", 90, interval=0.5, what="the pilot to end")
        final = [d["status"] for d in job_docs(redis_url, status_key, long_job["task_id"])
                 if d["status"] in TERMINAL_STATUSES]
        assert final == ["job-completed"], log.read_text()
        text = log.read_text()
        assert "draining" in text and "workers stopped (exit 0)" in text, text
        assert containers(podman_ready, f"sandbox_runner.worker={name}") == []
        assert not list((work_root).glob("**/.running*")), list(work_root.glob("**/.running*"))
    finally:
        subprocess.run(["scancel", slurm_id], check=False)


def test_a_pilot_whose_workers_cannot_start_ends_failed_not_completed(worker: Worker, run_dir: Path) -> None:
    """Its worker cannot start (its metrics port is taken): Slurm must record that (it said COMPLETED 0:0)."""
    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    env = worker.env(SANDBOX_RUNNER_METRICS_PORT=str(taken.getsockname()[1]))
    proc = worker.run(["sandbox-runner", "slurm", "submit", "-Q", queue, "-t", "2", "--grace", "30",
                       "--log-dir", str(run_dir)], env=env)
    assert proc.returncode == 0, proc.stderr
    slurm_id = proc.stdout.strip()
    try:
        wait_for(lambda: squeue_state(slurm_id) == "", 90, interval=0.5, what="the pilot to end")
        shown = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True, check=False)
        log = (run_dir / f"sr-pilot-{queue}-{slurm_id}.out").read_text()
        assert "JobState=FAILED" in shown.stdout and "ExitCode=0:0" not in shown.stdout, shown.stdout + log
        assert "workers stopped (exit 0)" not in log and "Address already in use" in log, log
    finally:
        subprocess.run(["scancel", slurm_id], check=False)
        taken.close()


def pilot_env(user: Worker, work_root: Path, redis_url: str, status_key: str, rabbit_url: str) -> dict[str, str]:
    return user.env(
        SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
        SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key,
        SANDBOX_RUNNER_BROKER_URL=rabbit_url, SANDBOX_RUNNER_RESULT_BACKEND=redis_url,
        SANDBOX_RUNNER_HEARTBEAT_INTERVAL="1", SANDBOX_RUNNER_MIN_FREE_PERCENT="0")


def test_a_job_longer_than_the_pilots_walltime_is_handed_back_not_started(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str, rabbit_url: str,
        start_worker: Any) -> None:
    from support.jobs import read_status_list

    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    proc = podman_ready.run(["sandbox-runner", "slurm", "submit", "-Q", queue, "-t", "3", "--grace", "30",
                             "--log-dir", str(run_dir)], env=env)
    assert proc.returncode == 0, proc.stderr
    slurm_id = proc.stdout.strip()
    log = run_dir / f"sr-pilot-{queue}-{slurm_id}.out"
    try:
        wait_for(lambda: log.exists() and " ready." in log.read_text(), 120, interval=0.5, what="the pilot's worker")
        job = make_job("sleep 1")
        job["job_info"]["time_limit"] = 600  # the pilot has 3 min, less 30 s of grace
        send(rabbit_url, redis_url, queue, job)
        # Nothing fits: after a few hand-backs the pilot's worker stops and the allocation is freed.
        wait_for(lambda: squeue_state(slurm_id) == "", 120, interval=0.5, what=f"the pilot to give up ({log})")
        assert job_docs(redis_url, status_key, job["task_id"]) == [], log.read_text()
        handed = [d for d in read_status_list(redis_url, status_key)
                  if d.get("resource") == "event" and d.get("type") == "pilot" and d.get("status") == "handed_back"]
        assert handed and handed[0]["event"]["task_id"] == job["task_id"], handed
        assert handed[0]["event"]["pilot"] == f"slurm:{slurm_id}" and handed[0]["event"]["time_limit"] == 600

        # A worker with time (a long-lived one here) gets the message and runs it, once.
        w = start_worker(rabbit_url, queue=queue)
        wait_for(lambda: any(d["status"] in TERMINAL_STATUSES for d in job_docs(redis_url, status_key, job["task_id"])),
                 120, interval=0.5, what="the other worker to run the job")
        docs = job_docs(redis_url, status_key, job["task_id"])
        assert [d["status"] for d in docs] == ["job-started", "job-completed"]
        assert {d["celery_hostname"] for d in docs} == {w.name}
    finally:
        subprocess.run(["scancel", slurm_id], check=False)


def test_autoscale_submits_a_pilot_for_a_waiting_job_and_none_for_an_empty_queue(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str,
        rabbit_url: str) -> None:
    from support.jobs import read_status_list

    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    argv = ["sandbox-runner", "slurm", "autoscale", "-Q", queue, "--max", "2", "-t", "10", "--grace", "30",
            "--log-dir", str(run_dir), "--once"]

    def scale_events() -> list[dict[str, Any]]:
        return [d for d in read_status_list(redis_url, status_key) if d.get("type") == "autoscale"]

    empty = podman_ready.run(argv, env=env)
    assert empty.returncode == 0 and "submitted 0: no jobs waiting" in empty.stdout, empty.stdout + empty.stderr
    assert scale_events()[-1]["status"] == "unchanged"

    job = make_job("sleep 1")
    send(rabbit_url, redis_url, queue, job)
    submitted: list[str] = []
    try:
        busy = podman_ready.run(argv, env=env)
        assert busy.returncode == 0 and "submitted 1: 1 job(s) waiting" in busy.stdout, busy.stdout + busy.stderr
        last = scale_events()[-1]
        assert last["status"] == "submitted" and last["event"]["depth"] == 1
        submitted = last["event"]["submitted"]
        assert len(submitted) == 1
        wait_for(lambda: any(d["status"] in TERMINAL_STATUSES for d in job_docs(redis_url, status_key, job["task_id"])),
                 180, interval=0.5, what="the autoscaled pilot to run the job")
        final = [d for d in job_docs(redis_url, status_key, job["task_id"]) if d["status"] in TERMINAL_STATUSES]
        assert final[0]["status"] == "job-completed" and f"-slurm{submitted[0]}." in final[0]["celery_hostname"]
        again = podman_ready.run(argv, env=env)
        assert "submitted 0" in again.stdout, again.stdout + again.stderr
    finally:
        for slurm_id in submitted:
            subprocess.run(["scancel", slurm_id], check=False)


def test_autoscale_stops_submitting_pilots_that_hand_the_job_back_for_walltime(
        podman_ready: Worker, run_dir: Path, work_root: Path, redis_url: str, status_key: str,
        rabbit_url: str) -> None:
    """A job of 600 s and pilots of -t 3:00 --grace 30 (150 s): the first pilot hands it back and gives up; the
    old autoscale then submitted another on every cron step, forever."""
    from kombu import Connection
    from support.jobs import read_status_list

    from sandbox_runner.hpc.misfits import misfit_key

    slurm_up()
    queue = f"srq-{uuid.uuid4().hex[:8]}"
    env = pilot_env(podman_ready, work_root, redis_url, status_key, rabbit_url)
    argv = ["sandbox-runner", "slurm", "autoscale", "-Q", queue, "--max", "1", "-t", "3:00", "--grace", "30",
            "--log-dir", str(run_dir), "--once"]
    job = make_job("sleep 1")
    job["job_info"]["time_limit"] = 600
    send(rabbit_url, redis_url, queue, job)
    submitted: list[str] = []
    try:
        first = podman_ready.run(argv, env=env)
        assert first.returncode == 0 and "submitted 1: 1 job(s) waiting" in first.stdout, first.stdout + first.stderr
        submitted = [d for d in read_status_list(redis_url, status_key)
                     if d.get("type") == "autoscale"][-1]["event"]["submitted"]
        assert len(submitted) == 1
        log = run_dir / f"sr-pilot-{queue}-{submitted[0]}.out"
        wait_for(lambda: squeue_state(submitted[0]) == "", 240, interval=0.5, what=f"the pilot to give up ({log})")
        assert job_docs(redis_url, status_key, job["task_id"]) == []
        import redis

        entry = redis.Redis.from_url(redis_url).hget(misfit_key(queue), job["task_id"])
        assert entry is not None and b'"limit": 600' in entry, log.read_text() if log.exists() else "no log"

        again = podman_ready.run(argv, env=env)
        want = ("submitted 0: the waiting jobs need 600 s; a pilot with -t 3:00 and --grace 30 gives 150 s: "
                "raise --time")
        assert again.returncode == 0 and want in again.stdout, again.stdout + again.stderr
        last = [d for d in read_status_list(redis_url, status_key) if d.get("type") == "autoscale"][-1]
        assert last["status"] == "unchanged" and last["event"]["submitted"] == [] and "raise --time" in \
            last["event"]["reason"]
    finally:
        for slurm_id in submitted:
            subprocess.run(["scancel", slurm_id], check=False)
        with Connection(rabbit_url) as conn:
            conn.default_channel.queue_delete(queue)
        import redis

        redis.Redis.from_url(redis_url).delete(misfit_key(queue))
