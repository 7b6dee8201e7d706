"""Celery as HySDS's tools see it (issue 9), against a real RabbitMQ, Redis, podman and ``sandbox-runner worker``:
a revoked job frees its slot only once its container is gone; worker documents in mozart's process_events shape
(or none); Flower 2.2 reading our msgpack events."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from support.celery_helpers import client, containers, free_port, statuses, wait_for
from support.jobs import make_job, read_status_list
from support.machine import VENV_BIN, Worker
from test_celery_worker import TaskEvents, send, wait_status

pytestmark = [pytest.mark.podman, pytest.mark.slow]


class PodmanEvents:
    """``podman events`` for containers, as srunner, streamed from now on: (status, task id label, time)."""

    def __init__(self, user: Worker) -> None:
        argv = ["runuser", "-u", user.name, "--", "env", "-i", *[f"{k}={v}" for k, v in user.env().items()],
                "podman", "--remote", "--url", f"unix://{user.socket}", "events", "--format", "json",
                "--filter", "type=container"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.seen: list[tuple[str, str | None, float]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(1.0)  # the stream is open before anything happens

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            e = json.loads(line)
            task_id = (e.get("Attributes") or {}).get("sandbox_runner.task_id")
            self.seen.append((e["Status"], task_id, _podman_time(e["Time"])))

    def first(self, status: str, task_id: str) -> float | None:
        return next((t for s, tid, t in list(self.seen) if s == status and tid == task_id), None)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _podman_time(text: str) -> float:
    """``2026-12-03T11:53:34.916029641Z`` (nanoseconds) -> epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def _doc_time(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["@timestamp"].replace("Z", "+00:00")).timestamp()


def ready_messages(broker: str, queue: str) -> int:
    """Messages waiting on the broker for any consumer (delivered-but-unacked ones are not counted)."""
    if broker.startswith("amqp"):
        from kombu import Connection

        with Connection(broker) as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    import redis

    r = redis.Redis.from_url(broker)  # kombu's priority emulation: one list per step, "queue" then "queue:N"
    return sum(int(r.llen(key)) for key in [queue, *(f"{queue}:{n}" for n in range(1, 10))])


@pytest.mark.parametrize("broker_kind", ["rabbitmq", "redis"])
def test_a_revoked_job_frees_its_slot_only_when_its_container_is_gone(request: pytest.FixtureRequest,
                                                                      start_worker, podman_ready: Worker,
                                                                      redis_url: str, status_key: str,
                                                                      broker_kind: str) -> None:
    """``-c 1``: the revoked job's container ignores SIGTERM and dies only at the grace's SIGKILL, 4 s later; the
    job queued behind it must not start (no create, no job-started) before that container is removed."""
    broker = request.getfixturevalue("rabbit_url") if broker_kind == "rabbitmq" else \
        request.getfixturevalue("own_redis").url
    w = start_worker(broker, SANDBOX_RUNNER_STOP_GRACE="4")
    events = PodmanEvents(podman_ready)
    try:
        first = make_job("sh -c 'trap \"\" TERM; while true; do sleep 1; done'")
        send(broker, redis_url, w.queue, first)
        wait_status(redis_url, status_key, first["task_id"], "job-started")
        label = f"sandbox_runner.task_id={first['task_id']}"
        wait_for(lambda: any(c["State"] == "running" for c in containers(podman_ready, label)), 30,
                 what="the first job's container running")
        second = make_job("echo next")
        r_second = send(broker, redis_url, w.queue, second)
        time.sleep(0.5)  # queued on the broker behind the running job
        t_revoke = time.time()
        client(broker, redis_url).control.revoke(first["task_id"], terminate=True)
        time.sleep(1.5)
        # still stopping (it ignores SIGTERM): the slot is busy, so the next message stays on the broker, ready
        # for any idle worker, instead of being delivered to this one
        assert [c["State"] for c in containers(podman_ready, label)] in (["running"], ["stopping"])
        assert ready_messages(broker, w.queue) == 1
        assert r_second.get(timeout=90)["status"] == "job-completed"
        removed = wait_for(lambda: events.first("remove", first["task_id"]), 10, what="first container removed")
        created = wait_for(lambda: events.first("create", second["task_id"]), 10, what="second container created")
        started = wait_status(redis_url, status_key, second["task_id"], "job-started")
        assert removed - t_revoke >= 3.0, "the first container was meant to outlive SIGTERM by the grace"
        assert created > removed, f"second job's container created {removed - created:.3f}s before the first's removal"
        assert _doc_time(started) > removed
        # the revoke itself is as before: REVOKED, one job-revoked; its message was acked in the end (else prefetch 1
        # would have kept the second job from this worker for good)
        assert client(broker, redis_url).AsyncResult(first["task_id"]).state == "REVOKED"
        assert statuses(redis_url, status_key, first["task_id"]) == ["job-started", "job-revoked"]
        assert ready_messages(broker, w.queue) == 0
        assert "container-not-removed" not in w.text() and "Traceback" not in w.text()
    finally:
        events.close()


# -- worker documents: mozart's process_events shape, or none ---------------------------------------------------------
#: what our worker stamps on every document besides process_events' fields: its name's parts and queues
#: (events.Emitter fields), the spool's delivery id and sequence number
OUR_DOC_EXTRAS = {"worker_program", "worker_instance", "worker_host", "worker_queues", "event_id", "event_seq"}
#: and in ``event``, besides Celery's own fields: the worker's queues, its drain guard, what reconcile found
OUR_EVENT_EXTRAS = {"queues", "drained", "reconciled"}


def process_events_doc(kind: str, event: dict[str, Any]) -> dict[str, Any]:
    """The worker document mozart's process_events (hysds/scripts/process_events.py) writes for a Celery worker
    event as its Receiver hands it over: facts from that script, written out here independently of our code."""
    m = re.search(r"^celery@(.+?)\..+$", event.get("hostname", ""))
    return {"resource": "worker", "type": m.group(1) if m else "unknown", "status": kind,
            "celery_hostname": event["hostname"], "uuid": [], "@version": "1",
            "@timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z", "event": event}


def _worker_docs(redis_url: str, key: str, name: str) -> list[dict[str, Any]]:
    return [d for d in read_status_list(redis_url, key) if d.get("resource") == "worker"
            and d.get("celery_hostname") == name]


def _same_shape(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(ours) == set(theirs) | OUR_DOC_EXTRAS, set(ours) ^ (set(theirs) | OUR_DOC_EXTRAS)
    for key in ("resource", "type", "status", "celery_hostname", "uuid", "@version"):
        assert ours[key] == theirs[key], key
    for doc in (ours, theirs):  # HySDS's naive ISO time with a literal Z
        assert doc["@timestamp"].endswith("Z") and datetime.fromisoformat(doc["@timestamp"][:-1]).tzinfo is None
    mine, celery = ours["event"], theirs["event"]
    assert set(celery) <= set(mine) and set(mine) - set(celery) <= OUR_EVENT_EXTRAS, set(mine) ^ set(celery)
    for field in celery:
        assert type(mine[field]) is type(celery[field]), (field, mine[field], celery[field])
    for field in ("type", "hostname", "freq", "sw_ident", "sw_ver", "sw_sys", "utcoffset"):
        assert mine[field] == celery[field], field
    assert abs(mine["local_received"] - mine["timestamp"]) < 1.0  # received: right after it was sent


def test_worker_documents_have_process_events_shape(start_worker, rabbit_url: str, redis_url: str,
                                                    status_key: str) -> None:
    w = start_worker(rabbit_url)
    events = TaskEvents(rabbit_url, redis_url)
    try:
        def celery_event(kind: str) -> dict[str, Any] | None:
            return next((e for e in list(events.seen) if e["type"] == kind and e.get("hostname") == w.name), None)

        celery_beat = wait_for(lambda: celery_event("worker-heartbeat"), 20, what="Celery's own heartbeat")
        beat = next(d for d in _worker_docs(redis_url, status_key, w.name) if d["status"] == "worker-heartbeat")
        _same_shape(beat, process_events_doc("worker-heartbeat", celery_beat))
        assert beat["type"] == w.queue and beat["uuid"] == [] and "tags" not in beat
        online = _worker_docs(redis_url, status_key, w.name)[0]
        assert online["status"] == "worker-online"
        _same_shape(online, process_events_doc("worker-online", {**celery_beat, "type": "worker-online"}))
        alive = redis.Redis.from_url(redis_url)
        key = f"hysds-worker-status-{w.name}"  # process_events' key, which HySDS's redelivery check reads
        assert alive.get(key) in (b"worker-online", b"worker-heartbeat")
        assert 0 < alive.ttl(key) <= 61, alive.ttl(key)
        w.stop()
        celery_bye = wait_for(lambda: celery_event("worker-offline"), 20, what="Celery's own worker-offline")
        bye = _worker_docs(redis_url, status_key, w.name)[-1]
        assert bye["status"] == "worker-offline"
        _same_shape(bye, process_events_doc("worker-offline", celery_bye))
        assert alive.exists(key) == 0  # deleted at worker-offline, as process_events does
    finally:
        events.close()


def test_worker_documents_off_sends_none(start_worker, rabbit_url: str, redis_url: str, status_key: str) -> None:
    """For sites running process_events: our relay is off, Celery's own worker events still go to the broker."""
    w = start_worker(rabbit_url, SANDBOX_RUNNER_WORKER_DOCUMENTS="off")
    events = TaskEvents(rabbit_url, redis_url)
    try:
        job = make_job("echo no worker documents")
        assert send(rabbit_url, redis_url, w.queue, job).get(timeout=90)["status"] == "job-completed"
        wait_for(lambda: sum(e["type"] == "worker-heartbeat" and e.get("hostname") == w.name
                             for e in list(events.seen)) >= 2, 20, what="two of Celery's heartbeats")
        w.stop()
        wait_for(lambda: any(e["type"] == "worker-offline" for e in list(events.seen)), 20, what="worker-offline")
    finally:
        events.close()
    docs = read_status_list(redis_url, status_key)
    assert [d for d in docs if d.get("resource") == "worker"] == []
    assert redis.Redis.from_url(redis_url).exists(f"hysds-worker-status-{w.name}") == 0  # process_events' to keep
    assert statuses(redis_url, status_key, job["task_id"]) == ["job-started", "job-completed"]


def test_worker_documents_setting_is_on_or_off() -> None:
    from sandbox_runner.errors import ConfigError
    from sandbox_runner.settings import load_settings

    assert load_settings({}).worker_documents == "on"
    assert load_settings({"SANDBOX_RUNNER_WORKER_DOCUMENTS": "off"}).worker_documents == "off"
    with pytest.raises(ConfigError, match="worker_documents must be on or off, got 'no'") as err:
        load_settings({"SANDBOX_RUNNER_WORKER_DOCUMENTS": "no"})
    assert err.value.field == "worker_documents"


# -- Flower 2.2 and msgpack -------------------------------------------------------------------------------------------
class Flower:
    """A real ``celery ... flower`` on a loopback port (basic auth, as a site would run it), stopped at the end."""

    def __init__(self, app_args: list[str], env: dict[str, str], run_dir: Path, name: str) -> None:
        self.port = free_port()
        self.log = run_dir / f"flower-{name}.log"
        argv = [str(VENV_BIN / "celery"), *app_args, "flower", "--address=127.0.0.1", f"--port={self.port}",
                "--basic-auth=ops:secret", "--persistent=False"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(run_dir))
        wait_for(self._up, 60, interval=0.3, what=f"flower {name} listening")

    def get(self, path: str) -> Any:
        import base64
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"flower exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            self.get("/api/tasks")
            return True
        except OSError:
            return False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_flower_shows_our_tasks_with_their_states(start_worker, rabbit_url: str, redis_url: str, run_dir: Path,
                                                  status_key: str) -> None:
    """``celery -A sandbox_runner.flower flower`` (the README's way), or Celery's default app reading a celeryconfig
    with HySDS's msgpack lines, sees every job with Celery's state; a bare ``celery flower --broker=...`` (as
    HySDS's mozart supervisord starts it) refuses the msgpack events and shows nothing."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(run_dir), "LANG": "C.UTF-8",
           "SANDBOX_RUNNER_BROKER_URL": rabbit_url, "SANDBOX_RUNNER_RESULT_BACKEND": redis_url}
    w = start_worker(rabbit_url)
    # on a mozart without our package: Celery's default app reading a celeryconfig with HySDS's serializer lines
    (run_dir / "hysdsconfig.py").write_text(f"broker_url = {rabbit_url!r}\nresult_backend = {redis_url!r}\n"
                                            'event_serializer = "msgpack"\naccept_content = ["msgpack", "json"]\n')
    flowers: list[Flower] = []
    try:
        for args, extra, name in ((["-A", "sandbox_runner.flower"], {}, "ours"),
                                  (["--config=hysdsconfig"], {"PYTHONPATH": str(run_dir)}, "mozart"),
                                  ([f"--broker={rabbit_url}"], {}, "bare")):  # HySDS's supervisord.conf.mozart
            flowers.append(Flower(args, {**env, **extra}, run_dir, name))
        ours, mozart, bare = flowers
        time.sleep(2.0)  # both have subscribed to the events exchange
        ok, bad = make_job("echo seen by flower"), make_job("sh -c 'exit 3'")
        assert send(rabbit_url, redis_url, w.queue, ok).get(timeout=90)["status"] == "job-completed"
        send(rabbit_url, redis_url, w.queue, bad).get(timeout=90, propagate=False)

        def states(flower: Flower) -> dict[str, str] | None:
            tasks = flower.get("/api/tasks")
            got = {tid: t.get("state") for tid, t in tasks.items() if tid in (ok["task_id"], bad["task_id"])}
            return got if set(got.values()) == {"SUCCESS", "FAILURE"} else None

        for flower in (ours, mozart):
            assert wait_for(lambda f=flower: states(f), 30, interval=0.5, what="flower to show both tasks ended") == {
                ok["task_id"]: "SUCCESS", bad["task_id"]: "FAILURE"}
        info = ours.get(f"/api/task/info/{ok['task_id']}")
        assert info["name"] == "hysds.job_worker.run_job" and info["worker"] == w.name
        assert info["state"] == "SUCCESS" and info["uuid"] == ok["task_id"]
        failed = ours.get(f"/api/task/info/{bad['task_id']}")
        assert failed["exception"].startswith("WorkerExecutionError(")
        workers = ours.get("/api/workers?refresh=1")  # Flower's inspect broadcast, answered by the worker
        assert [q["name"] for q in workers[w.name]["active_queues"]] == [w.queue]
        assert "msgpack" not in ours.text()  # no "Refusing to deserialize untrusted content of type msgpack"
        assert bare.get("/api/tasks") == {}  # the same events, refused:
        assert "Refusing to deserialize untrusted content of type msgpack" in bare.text()
    finally:
        for flower in flowers:
            flower.close()


@pytest.mark.parametrize(("hostname", "expected"), [
    ("celery@factotum-job_worker-small.01.node-7.example.org", "factotum-job_worker-small"),
    ("celery@job_worker.x", "job_worker"),
    ("celery@nodots", "unknown"),  # process_events finds no type there either
    ("sandbox-runner@vm", "unknown"),
])
def test_worker_document_type_is_process_events_reading_of_the_name(hostname: str, expected: str) -> None:
    from sandbox_runner.events.documents import worker_event_doc

    doc = worker_event_doc("worker-heartbeat", {"hostname": hostname, "timestamp": 1.0}, "ignored@host")
    assert (doc["type"], doc["celery_hostname"], doc["uuid"]) == (expected, hostname, [])
    assert isinstance(doc["event"]["local_received"], float)
