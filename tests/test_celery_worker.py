"""The Celery worker for real: a real broker (RabbitMQ on loopback, or Redis), ``sandbox-runner worker`` running
as the unprivileged user ``srunner`` in the background, its rootless Podman, and the status documents on Redis."""

from __future__ import annotations

import json
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import TaskRevokedError
from support.celery_helpers import OwnRedis, client, containers, job_docs, statuses, wait_for
from support.jobs import make_job, read_status_list
from support.machine import Worker

from sandbox_runner.events.documents import TERMINAL_STATUSES

pytestmark = [pytest.mark.podman, pytest.mark.slow]
TASK_NAMES = ["sandbox_runner.run_job", "hysds.job_worker.run_job"]


def send(broker: str, backend: str, queue: str, job: dict[str, Any], name: str = "hysds.job_worker.run_job",
         **opts: Any) -> Any:
    return client(broker, backend).send_task(name, args=[job], queue=queue, task_id=job["task_id"], **opts)


def terminal_docs(redis_url: str, key: str, task_id: str) -> list[dict[str, Any]]:
    return [d for d in job_docs(redis_url, key, task_id) if d["status"] in TERMINAL_STATUSES]


def wait_status(redis_url: str, key: str, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((d for d in job_docs(redis_url, key, task_id) if d["status"] == status), None)

    return dict(wait_for(found, timeout, what=f"{status} for {task_id}"))


def start_sleeping_job(w: Any, user: Worker, broker: str, redis_url: str, key: str) -> tuple[dict[str, Any], str]:
    """A ``sleep 600`` job sent to worker ``w``, once it has started and its container runs; and its label."""
    job = make_job("sleep 600")
    send(broker, redis_url, w.queue, job)
    wait_status(redis_url, key, job["task_id"], "job-started")
    label = f"sandbox_runner.task_id={job['task_id']}"
    wait_for(lambda: any(c["State"] == "running" for c in containers(user, label)), 30, what="container")
    return job, label


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_jobs_run_under_both_task_names_rabbitmq(start_worker, rabbit_url: str, redis_url: str,
                                                 status_key: str, task_name: str) -> None:
    w = start_worker(rabbit_url)
    job = make_job("echo hello from celery")
    result = send(rabbit_url, redis_url, w.queue, job, task_name).get(timeout=90)
    assert result["status"] == "job-completed" and result["uuid"] == job["task_id"]
    assert result["celery_hostname"] == w.name and result["exit_code"] == 0
    assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]
    done = terminal_docs(redis_url, status_key, job["task_id"])[0]
    assert done["celery_hostname"] == w.name
    assert done["worker_program"] == w.queue and done["worker_instance"] == 1
    assert done["job"]["delivery_info"]["routing_key"] == w.queue
    assert isinstance(done["event_id"], str) and isinstance(done["event_seq"], int)
    jd = Path(done["job"]["job_info"]["job_dir"])
    assert (jd / "_stdout.txt").read_text() == "hello from celery\n" and (jd / ".done").exists()



def test_plain_celery_command_line_works_the_same(start_worker, podman_ready: Worker, rabbit_url: str,
                                                  redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url, plain_celery=True, instance=4)
    job = make_job("echo plain celery")
    result = send(rabbit_url, redis_url, w.queue, job).get(timeout=90)
    assert result["status"] == "job-completed" and result["celery_hostname"] == w.name
    online = next(d for d in read_status_list(redis_url, status_key) if d.get("status") == "worker-online")
    assert online["celery_hostname"] == w.name and online["worker_instance"] == 4
    w.signal(signal.SIGTERM)
    assert w.wait(timeout=60) == 0
    assert read_status_list(redis_url, status_key)[-1]["status"] == "worker-offline"


def test_jobs_run_under_both_task_names_redis_broker(start_worker, own_redis: OwnRedis, redis_url: str,
                                                     status_key: str) -> None:
    w = start_worker(own_redis.url)
    jobs = [make_job(f"echo via redis {i}") for i in range(2)]
    results = [send(own_redis.url, redis_url, w.queue, job, name) for job, name in zip(jobs, TASK_NAMES, strict=True)]
    for job, res in zip(jobs, results, strict=True):
        assert res.get(timeout=90)["status"] == "job-completed"
        assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]


def test_queue_priorities_order_the_jobs(start_worker, rabbit_url: str, redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url)
    w.stop()  # the queue exists (with x-max-priority); fill it while nobody consumes
    jobs = {p: make_job(f"echo priority {p}") for p in (1, 9, 5, 0)}
    for p, job in jobs.items():
        send(rabbit_url, redis_url, w.queue, job, priority=p)
    w.start()
    wait_for(lambda: all(terminal_docs(redis_url, status_key, j["task_id"]) for j in jobs.values()), 120,
             what="all four jobs")
    started = [d["uuid"] for d in job_docs(redis_url, status_key) if d["status"] == "job-started"]
    assert started == [jobs[p]["task_id"] for p in (9, 5, 1, 0)]


def test_revoking_a_running_job_stops_its_container(start_worker, podman_ready: Worker, rabbit_url: str,
                                                    redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url)
    job, label = start_sleeping_job(w, podman_ready, rabbit_url, redis_url, status_key)
    t0 = time.monotonic()
    client(rabbit_url, redis_url).control.revoke(job["task_id"], terminate=True)
    doc = wait_status(redis_url, status_key, job["task_id"], "job-revoked", timeout=30)
    assert time.monotonic() - t0 < 20
    assert doc["signum"] == signal.SIGTERM and doc["error"] == "Job was revoked with signal 15."
    assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-revoked"]
    wait_for(lambda: containers(podman_ready, label) == [], 10, what="no container left")  # podman auto-removes
    jd = Path(doc["job"]["job_info"]["job_dir"])
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    # the worker goes on taking jobs
    after = make_job("echo still here")
    assert send(rabbit_url, redis_url, w.queue, after).get(timeout=60)["status"] == "job-completed"


def test_a_job_revoked_before_delivery_is_not_run(start_worker, rabbit_url: str, redis_url: str,
                                                  status_key: str) -> None:
    w = start_worker(rabbit_url)
    job = make_job("echo must not run")
    r = redis.Redis.from_url(redis_url)
    r.set(f"hysds-revoked-task-{job['task_id']}", "1", ex=600)  # what HySDS's revoke tools set
    try:
        res = send(rabbit_url, redis_url, w.queue, job)
        with pytest.raises(TaskRevokedError, match="terminated"):
            res.get(timeout=60)
        assert res.state == "REVOKED"
    finally:
        r.delete(f"hysds-revoked-task-{job['task_id']}")
    docs = job_docs(redis_url, status_key, job["task_id"])
    assert [(d["status"], d.get("signum")) for d in docs] == [("job-revoked", 0)]


class TaskEvents:
    """Celery's task events from the broker, as Flower and mozart's process_events receive them (msgpack)."""

    def __init__(self, broker: str, backend: str) -> None:
        import threading

        self.app = client(broker, backend)
        self.seen: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._conn = self.app.connection_for_read()
        self._recv = self.app.events.Receiver(self._conn, handlers={"*": self._on_event}, accept={"msgpack", "json"})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(20), "no Celery event arrived (the worker sends a heartbeat every second or two)"

    def _on_event(self, event: dict[str, Any]) -> None:
        self.seen.append(event)
        self.ready.set()

    def _run(self) -> None:
        for _ in self._recv.consume(limit=None, timeout=None, wakeup=False):
            if self._recv.should_stop:
                break

    def types(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.seen) if e.get("uuid") == task_id]

    def close(self) -> None:
        self._recv.should_stop = True
        self._thread.join(timeout=5)
        self._conn.release()


def test_task_states_are_hysds_success_failure_and_revoked(start_worker, podman_ready: Worker, rabbit_url: str,
                                                           redis_url: str, status_key: str) -> None:
    """Completed: SUCCESS. Failed: FAILURE (WorkerExecutionError, task-failed), acked once, one job-failed.
    Revoked mid-run: REVOKED (TaskRevokedError('terminated')), task-revoked and nothing after it."""
    from kombu import Connection

    w = start_worker(rabbit_url)
    events = TaskEvents(rabbit_url, redis_url)
    try:
        ok, bad = make_job("echo fine"), make_job("sh -c 'echo broken >&2; exit 3'")
        r_ok, r_bad = send(rabbit_url, redis_url, w.queue, ok), send(rabbit_url, redis_url, w.queue, bad)
        assert r_ok.get(timeout=90)["status"] == "job-completed" and r_ok.state == "SUCCESS"
        with pytest.raises(Exception) as failed:
            r_bad.get(timeout=90)
        assert r_bad.state == "FAILURE" and type(failed.value).__name__ == "WorkerExecutionError"
        doc = wait_status(redis_url, status_key, bad["task_id"], "job-failed")
        assert str(failed.value) == doc["error"]
        job, _ = start_sleeping_job(w, podman_ready, rabbit_url, redis_url, status_key)
        r_rev = client(rabbit_url, redis_url).AsyncResult(job["task_id"])
        client(rabbit_url, redis_url).control.revoke(job["task_id"], terminate=True)
        wait_status(redis_url, status_key, job["task_id"], "job-revoked", timeout=30)
        with pytest.raises(TaskRevokedError, match="terminated"):
            r_rev.get(timeout=30)
        after = make_job("echo after the revoke")  # the revoked job has ended: no event of it may come after this
        assert send(rabbit_url, redis_url, w.queue, after).get(timeout=60)["status"] == "job-completed"
        wait_for(lambda: "task-succeeded" in events.types(after["task_id"]), 10, what="events of the last job")
        assert r_rev.state == "REVOKED"
        assert events.types(ok["task_id"])[-2:] == ["task-started", "task-succeeded"]
        assert events.types(bad["task_id"])[-2:] == ["task-started", "task-failed"]
        assert events.types(job["task_id"])[-2:] == ["task-started", "task-revoked"]
        # one terminal document each, and nothing left to redeliver: the failed job's message was acked
        for j, status in ((ok, "job-completed"), (bad, "job-failed"), (job, "job-revoked")):
            assert statuses(redis_url, status_key, j["task_id"]) == ["job-started", status]
        with Connection(rabbit_url) as conn:
            assert conn.default_channel.queue_declare(queue=w.queue, passive=True).message_count == 0
        assert "Traceback" not in w.text()
    finally:
        events.close()


def test_finished_jobs_are_handed_to_user_rules_on_the_broker(start_worker, rabbit_url: str, redis_url: str) -> None:
    """HySDS's queue_finished_job: hysds.task_worker.run_task on the user-rules queue, once per finished job, with
    the job's index (job_failed for a failed job); none when the orchestrator says queue_when_finished=False."""
    import msgpack
    from kombu import Connection

    rules_queue = f"ur-{uuid.uuid4().hex[:8]}"
    w = start_worker(rabbit_url, SANDBOX_RUNNER_USER_RULES_QUEUE=rules_queue)
    ok, bad, quiet = make_job("echo fine"), make_job("sh -c 'exit 3'"), make_job("echo no rules")
    send(rabbit_url, redis_url, w.queue, ok).get(timeout=90)
    send(rabbit_url, redis_url, w.queue, bad).get(timeout=90, propagate=False)
    client(rabbit_url, redis_url).send_task("hysds.job_worker.run_job", args=[quiet], queue=w.queue,
                                            task_id=quiet["task_id"],
                                            kwargs={"queue_when_finished": False}).get(timeout=90)
    got = []
    with Connection(rabbit_url) as conn:
        while (message := conn.default_channel.basic_get(queue=rules_queue, no_ack=True)) is not None:
            assert message.headers["task"] == "hysds.task_worker.run_task"
            assert message.properties["content_type"] == "application/x-msgpack"
            args, kwargs, _ = msgpack.unpackb(message.body)
            assert kwargs == {}
            got.append(args[0])

    def payload(job: dict[str, Any], index: str) -> dict[str, Any]:
        return {"type": "user_rules_job", "function": "hysds.user_rules_job.evaluate_user_rules_job",
                "args": [job["job_info"]["job_payload"]["payload_task_id"]], "kwargs": {"index": index}}

    assert got == [payload(ok, ok["job_info"]["index"]), payload(bad, "job_failed")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGABRT],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_mid_job_stops_it_once_and_the_worker_warm(start_worker, podman_ready: Worker, rabbit_url: str,
                                                            redis_url: str, status_key: str, sig: int) -> None:
    w = start_worker(rabbit_url)
    job, label = start_sleeping_job(w, podman_ready, rabbit_url, redis_url, status_key)
    w.signal(sig)
    assert w.wait(timeout=60) == 0, w.text()[-3000:]
    expected = {signal.SIGTERM: "job-terminated", signal.SIGINT: "job-interrupted", signal.SIGHUP: "job-hangup",
                signal.SIGQUIT: "job-quit", signal.SIGABRT: "job-aborted"}[sig]
    docs = job_docs(redis_url, status_key, job["task_id"])
    assert [d["status"] for d in docs] == ["job-started", expected]
    assert docs[-1]["signum"] == sig
    jd = Path(docs[-1]["job"]["job_info"]["job_dir"])
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    assert int((jd / "_exit_code").read_text()) in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    wait_for(lambda: containers(podman_ready, label) == [], 10, what="no container left")  # podman auto-removes
    worker_docs = [d for d in read_status_list(redis_url, status_key) if d.get("resource") == "worker"]
    assert worker_docs[-1]["status"] == "worker-offline"


def test_sigkill_mid_job_then_restart_gives_one_job_offline(start_worker, podman_ready: Worker, rabbit_url: str,
                                                            redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url)
    job, label = start_sleeping_job(w, podman_ready, rabbit_url, redis_url, status_key)
    w.signal(signal.SIGKILL)
    w.wait(timeout=30)
    old = {c["Id"] for c in containers(podman_ready, label) if c["State"] == "running"}
    assert old, "conmon keeps it running"
    w.start()  # same name: it reconciles what its predecessor left, then takes the redelivered message
    offline = wait_status(redis_url, status_key, job["task_id"], "job-offline", timeout=60)
    wait_for(lambda: not old & {c["Id"] for c in containers(podman_ready, label)}, 10,
             what="the dead run's container gone")  # podman auto-removes
    jd = Path(offline["job"]["job_info"]["job_dir"])
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    assert (jd / "_exit_code").exists(), w.text()[-4000:]
    assert int((jd / "_exit_code").read_text()) in (128 + signal.SIGTERM, 128 + signal.SIGKILL)

    online = [d for d in read_status_list(redis_url, status_key) if d.get("status") == "worker-online"]
    assert job["task_id"] in online[-1]["event"]["reconciled"]["offline"]
    # the message came back because the job never finished: it runs again (in a new job dir)
    wait_for(lambda: statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-offline",
                                                                          "job-started"], 60, what="the rerun")
    assert not any(d.get("type") == "job_redelivery" and d["event"]["task_id"] == job["task_id"]
                   for d in read_status_list(redis_url, status_key))


def test_a_job_redelivered_after_it_completed_is_not_run_again(start_worker, rabbit_url: str, redis_url: str,
                                                               status_key: str) -> None:
    from kombu import Connection

    w = start_worker(rabbit_url)
    job = make_job("echo once")
    assert send(rabbit_url, redis_url, w.queue, job).get(timeout=60)["status"] == "job-completed"
    w.stop()
    # the same message again, then taken and dropped un-acked: the broker redelivers it (redelivered=True),
    # as it does when a worker dies between finishing a job and acking it
    send(rabbit_url, redis_url, w.queue, job)
    with Connection(rabbit_url) as conn:
        message = wait_for(lambda: conn.default_channel.basic_get(queue=w.queue, no_ack=False), 10, what="message")
        assert message.headers["id"] == job["task_id"]
    w.start()

    def judged() -> dict[str, Any] | None:
        return next((d for d in read_status_list(redis_url, status_key)
                     if d.get("type") == "job_redelivery" and d["event"]["task_id"] == job["task_id"]), None)

    event = wait_for(judged, 60, what="the redelivery to be judged")
    assert event["status"] == "finished" and event["event"]["found_status"] == "job-completed"
    assert event["event"]["redelivered"] is True
    assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]
    assert len(list(Path(w.env["SANDBOX_RUNNER_WORK_ROOT"]).glob(f"jobs/*/*/*/*/*/{job['job_id']}*"))) == 1


def test_soft_time_limit_stops_the_container_and_triage_runs(start_worker, podman_ready: Worker, rabbit_url: str,
                                                             redis_url: str, status_key: str) -> None:
    w = start_worker(rabbit_url, SANDBOX_RUNNER_LOG_LEVEL="debug")
    job = make_job("sleep 600")
    job["params"]["job_specification"]["post"] = ["hysds.triage.triage"]
    t0 = time.monotonic()
    res = send(rabbit_url, redis_url, w.queue, job, soft_time_limit=3, time_limit=60)
    res.get(timeout=60, propagate=False)
    assert res.state == "FAILURE"
    assert time.monotonic() - t0 < 3 + 2 + 10  # limit + grace + slack
    doc = terminal_docs(redis_url, status_key, job["task_id"])
    assert [d["status"] for d in doc] == ["job-failed"]
    assert doc[0]["error"] == "SoftTimeLimitExceeded()"  # HySDS's text: sites match on it
    assert doc[0]["traceback"].startswith(f"Soft time limit (3s) exceeded for {job['job_id']}")
    assert doc[0]["job"]["job_info"]["status"] in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    label = f"sandbox_runner.task_id={job['task_id']}"
    wait_for(lambda: containers(podman_ready, label) == [], 10, what="no container left")  # podman auto-removes
    triage = [json.loads(line) for line in w.text().splitlines() if line.startswith("{") and '"post-step"' in line]
    assert any(e.get("step") == "triage" and e.get("job_id") == job["job_id"] for e in triage), w.text()[-2000:]


def test_hard_time_limit_reaps_a_container_that_ignores_sigterm(start_worker, podman_ready: Worker,
                                                                rabbit_url: str, redis_url: str,
                                                                status_key: str) -> None:
    w = start_worker(rabbit_url)
    job = make_job("sh -c 'trap \"\" TERM; while true; do sleep 1; done'")
    job["job_info"].pop("soft_time_limit")
    job["job_info"]["time_limit"] = 4
    t0 = time.monotonic()
    res = send(rabbit_url, redis_url, w.queue, job, time_limit=4)
    res.get(timeout=60, propagate=False)
    assert res.state == "FAILURE"
    assert time.monotonic() - t0 < 4 + 10
    doc = terminal_docs(redis_url, status_key, job["task_id"])
    assert [d["status"] for d in doc] == ["job-failed"]
    assert doc[0]["error"].startswith("Hard time limit (4s) exceeded")
    label = f"sandbox_runner.task_id={job['task_id']}"
    wait_for(lambda: containers(podman_ready, label) == [], 10, what="no container left")  # podman auto-removes


def _workers(worker: Worker, redis_url: str, key: str) -> dict[str, dict[str, Any]]:
    proc = worker.run(["sandbox-runner", "workers", "--json", "--redis-url", redis_url, "--key", key])
    assert proc.returncode == 0, proc.stderr
    return {row["hostname"]: row for row in map(json.loads, proc.stdout.splitlines())}


def test_worker_events_reach_redis_and_workers_lists_their_state(start_worker, podman_ready: Worker,
                                                                 rabbit_url: str, redis_url: str,
                                                                 status_key: str) -> None:
    a = start_worker(rabbit_url)
    b = start_worker(rabbit_url, instance=7)

    def beats(name: str) -> list[dict[str, Any]]:
        return [d for d in read_status_list(redis_url, status_key)
                if d.get("resource") == "worker" and d["celery_hostname"] == name]

    wait_for(lambda: len([d for d in beats(a.name) if d["status"] == "worker-heartbeat"]) >= 2, 20, what="beats")
    online, beat = beats(a.name)[0], next(d for d in beats(a.name) if d["status"] == "worker-heartbeat")
    assert online["status"] == "worker-online" and online["type"] == a.queue
    for doc in (online, beat):
        for f in ("hostname", "timestamp", "freq", "sw_ident", "sw_ver", "sw_sys"):
            assert f in doc["event"], f
        assert doc["event"]["hostname"] == a.name and doc["event"]["freq"] == 1.0
        assert (doc["worker_program"], doc["worker_instance"]) == (a.queue, 1)
    assert {"active", "processed", "loadavg"} <= set(beat["event"])
    b_online = wait_for(lambda: beats(b.name), 10, what="b online")[0]
    assert ".07." in b_online["celery_hostname"] and b_online["worker_instance"] == 7
    states = _workers(podman_ready, redis_url, status_key)
    assert states[a.name]["state"] == "online" and states[b.name]["state"] == "online"
    a.stop()
    assert beats(a.name)[-1]["status"] == "worker-offline"
    b.signal(signal.SIGKILL)  # no goodbye: two missed beats make it offline
    b.wait(timeout=30)
    time.sleep(2.5)
    states = _workers(podman_ready, redis_url, status_key)
    assert (states[a.name]["state"], states[a.name]["reason"]) == ("offline", "worker-offline")
    assert (states[b.name]["state"], states[b.name]["reason"]) == ("offline", "missed beats")


def test_events_tail_follows_the_list(start_worker, podman_ready: Worker, rabbit_url: str, redis_url: str,
                                      status_key: str) -> None:
    import subprocess

    w = start_worker(rabbit_url)
    job = make_job("echo tail me")
    cmd = ["runuser", "-u", podman_ready.name, "--", "env", "-i",
           *[f"{k}={v}" for k, v in podman_ready.env().items()],
           "sandbox-runner", "events", "tail", "--redis-url", redis_url, "--key", status_key, "-n", "0",
           "--job-id", job["job_id"], "--count", "3", "--timeout", "60"]
    tail = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # following from the end: only what comes after it started
    send(rabbit_url, redis_url, w.queue, job).get(timeout=60)
    out, err = tail.communicate(timeout=70)
    lines = out.splitlines()
    assert tail.returncode == 0 and len(lines) == 3, out + err
    assert "job-started" in lines[0] and "info" in lines[1] and "job-completed" in lines[2]
    assert all(line.startswith("#") for line in lines)
    seqs = [int(line[1:].split()[0]) for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_job_drain_stops_the_worker_taking_jobs(start_worker, podman_ready: Worker, rabbit_url: str,
                                                redis_url: str, status_key: str) -> None:
    from kombu import Connection

    w = start_worker(rabbit_url)
    bad = [make_job("echo never") for _ in range(40)]
    for job in bad:
        del job["params"]["_command"]  # no worker config either: each fails at once, before any container
    for job in bad:
        send(rabbit_url, redis_url, w.queue, job)

    def anomaly() -> dict[str, Any] | None:
        return next((d for d in read_status_list(redis_url, status_key) if d.get("type") == "worker_anomaly"), None)

    doc = wait_for(anomaly, 60, what="worker_anomaly")
    assert doc["status"] == "job_drain" and doc["event"]["count"] == 11
    assert doc["event"]["celery_hostname"] == w.name
    time.sleep(3)
    failed = [d for d in job_docs(redis_url, status_key) if d["status"] == "job-failed"]
    assert 11 <= len(failed) <= 13  # what was already prefetched may still fail
    with Connection(rabbit_url) as conn:
        left = conn.default_channel.queue_declare(queue=w.queue, passive=True).message_count
    assert left == 40 - len(failed)
    states = _workers(podman_ready, redis_url, status_key)
    assert states[w.name]["state"] == "online" and states[w.name]["drained"] is True


def test_events_survive_a_redis_outage_in_order(start_worker, own_redis: OwnRedis, rabbit_url: str,
                                                redis_url: str, status_key: str) -> None:
    """The worker's event Redis is stopped for 10 s while 50 jobs run; afterwards every event is there exactly
    once, each job's in order, the worker's sequence numbers without a gap."""
    w = start_worker(rabbit_url, concurrency=2, events_redis=own_redis.url)
    jobs = [make_job(f"sh -c 'sleep 0.4; echo {i}'") for i in range(50)]
    results = [send(rabbit_url, redis_url, w.queue, job) for job in jobs]
    events = redis.Redis.from_url(own_redis.url)
    wait_for(lambda: sum(d["status"] == "job-completed" for d in job_docs(own_redis.url, status_key)) >= 5, 60,
             what="five jobs done before the outage")
    events.shutdown(save=True)  # SHUTDOWN SAVE keeps what was delivered, so the count below is exact
    own_redis.proc.wait(timeout=10)  # type: ignore[union-attr]
    down_at = time.time()
    time.sleep(10)
    own_redis.start()  # same port and dir: it loads the dump
    up_at = time.time()
    # what is under test is delivery, not the jobs: podman 4.3's service fails about 1% of concurrent keep-id
    # creates, and such a job ends job-failed -- its events must arrive all the same
    final = {job["task_id"]: _job_status(r) for job, r in zip(jobs, results, strict=True)}
    assert set(final.values()) <= {"job-completed", "job-failed"}

    def settled() -> list[dict[str, Any]] | None:
        docs = read_status_list(own_redis.url, status_key)
        done = sum(d.get("resource") == "job" and d["status"] in TERMINAL_STATUSES for d in docs)
        return docs if done == 50 else None

    wait_for(settled, 60, what="every event replayed")
    time.sleep(2)
    docs = read_status_list(own_redis.url, status_key)
    ids = [d["event_id"] for d in docs]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    mine = [d for d in docs if d.get("worker_program") == w.queue]  # every document this worker sent
    seqs = [d["event_seq"] for d in mine]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers out of order or with a gap"
    for job in jobs:
        per_job = [d for d in docs if d.get("uuid") == job["task_id"] or
                   (d.get("type") == "job_info" and d["job"]["task_id"] == job["task_id"])]
        assert [d.get("status", "info") for d in per_job] == ["job-started", "info", final[job["task_id"]]]
    stamped = [d["@timestamp"] for d in docs if d.get("resource") == "job"]
    during = [t for t in stamped if down_at < _epoch(t) < up_at]
    assert during, "no job event was emitted while Redis was down: the outage missed the jobs"
    assert "event-sink-down-spooling" in w.text()
    for job in jobs:
        assert events.get(f"hysds-job-status-{job['task_id']}") == final[job["task_id"]].encode()

def _job_status(res: Any) -> str:
    """The status a Celery result stands for: a completed job's is in its return value, a failed one is FAILURE."""
    value = res.get(timeout=120, propagate=False)
    return str(value["status"]) if res.state == "SUCCESS" else "job-failed"


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_a_root_from_the_worker_config_only_is_reconciled(start_worker, worker: Worker, rabbit_url: str,
                                                           redis_url: str, status_key: str, work_root: Path,
                                                           shared_dir: Path) -> None:
    """No SANDBOX_RUNNER_WORK_ROOT: jobs land under the worker config's root_work_dir, and the restarted worker
    looks there for what its SIGKILLed predecessor left (a bubblewrap job: no container to find it by)."""
    from support.jobs import write_job

    cfg = write_job(shared_dir, {"root_work_dir": str(work_root), "configs": [
        {"type": "sr_test", "command": {"path": "sleep", "options": [], "arguments": ["600"], "env": []}}]},
        "worker.json")
    w = start_worker(rabbit_url, SANDBOX_RUNNER_WORK_ROOT="", HYSDS_WORKER_CFG=str(cfg),
                     SANDBOX_RUNNER_BACKEND="subprocess")
    job = make_job("/bin/ignored", image=None)
    send(rabbit_url, redis_url, w.queue, job)
    started = wait_status(redis_url, status_key, job["task_id"], "job-started")
    jd = Path(started["job"]["job_info"]["job_dir"])
    assert jd.is_relative_to(work_root / "jobs"), jd
    w.signal(signal.SIGKILL)
    w.wait(timeout=30)
    w.start()
    wait_status(redis_url, status_key, job["task_id"], "job-offline", timeout=60)
    assert (jd / ".done").exists() and not (jd / ".running").exists()
    online = [d for d in read_status_list(redis_url, status_key) if d.get("status") == "worker-online"]
    assert online[-1]["event"]["reconciled"]["closed"] == [str(jd)]
    time.sleep(1)
    assert statuses(redis_url, status_key, job["task_id"]).count("job-offline") == 1
