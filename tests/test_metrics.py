"""Operators' numbers: per-phase durations in job_info, the worker's Prometheus ``/metrics``, node_exporter
textfiles. In process with the FakeBackend and real sinks/spools, then for real: ``run-job`` as ``srunner`` on its
rootless podman, and a ``sandbox-runner worker --metrics-port`` on RabbitMQ scraped over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.jobs import make_job, read_status_list, write_job
from support.machine import Worker

from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.errors import ConfigError
from sandbox_runner.events import Emitter
from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.events.sinks import RedisSink
from sandbox_runner.events.spool import SpoolSink
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.metrics.phases import PHASES
from sandbox_runner.metrics.prom import JobMetrics, textfile_path
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, fake_runner

INSIDE = [p for p in PHASES if p != "queue_wait"]  # what happens inside the worker, one phase after another


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def queued(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def terminal(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d.get("resource") == "job" and d.get("status") in TERMINAL_STATUSES]
    assert len(found) == 1, [d.get("status") for d in docs]
    return found[0]


def check_phases(info: dict[str, Any], *, want: set[str]) -> dict[str, float]:
    """``job_info.metrics.phases``: exactly ``want``, floats >= 0, and what ran inside the worker fits in the
    runner's own total (``worker_overhead + cmd_duration``, measured just before the phases at close-up)."""
    phases = info["metrics"]["phases"]
    assert set(phases) == want, phases
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    if "worker_overhead" in info["metrics"]:
        total = info["metrics"]["worker_overhead"] + float(info.get("cmd_duration") or 0.0)
        assert sum(phases[p] for p in INSIDE if p in phases) <= total + 0.005, (phases, total)
    return dict(phases)


# -- in process ------------------------------------------------------------------------------------------------------
def _runner(tmp_path: Path, backend: FakeBackend) -> tuple[JobRunner, CapturedEvents, JobMetrics]:
    runner, sink = fake_runner(tmp_path / "work", backend, hostname="celery@test.01.host")
    return runner, sink, JobMetrics(runner.settings).attach(runner.emitter)


def test_completed_job_records_every_phase_it_ran(tmp_path: Path) -> None:
    seen: list[float] = []

    def play(spec: Any, io: Any) -> None:  # the job "runs" 0.3 s; meanwhile one container counts as running
        seen.append(value(samples(metrics.exposition().decode()), "sandbox_runner_containers_running"))
        time.sleep(0.3)

    runner, sink, metrics = _runner(tmp_path, FakeBackend(play, stdout="hi\n"))
    job = make_job("/bin/echo hi")
    job["job_info"]["time_queued"] = queued(5.0)
    outcome = runner.run(job)
    assert outcome.status == "job-completed"
    info = json.loads((outcome.job_dir / "_job.json").read_text())["job_info"]
    phases = check_phases(info, want={"queue_wait", "admission", "setup", "localize", "command", "publish",
                                      "triage", "close_up"})  # the fake backend has no image or container
    assert 5.0 <= phases["queue_wait"] < 6.0
    assert 0.3 <= phases["command"] < 1.0  # the command's time, not the pipeline's
    assert seen == [1.0] and value(samples(metrics.exposition().decode()), "sandbox_runner_containers_running") == 0
    # HySDS's fields are kept beside ours, and the job_info document carries the same figures
    for key in ("inputs_localized", "products_staged", "job_dir_size", "usage_stats"):
        assert key in info["metrics"], key
    (doc,) = [d for d in sink.docs() if d.get("type") == "job_info"]
    assert doc["job"]["job_info"]["metrics"]["phases"] == info["metrics"]["phases"]


def test_published_bytes_files_and_datasets_are_counted(tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    cfg = tmp_path / "datasets.json"
    cfg.write_text(json.dumps({"datasets": [{
        "ipath": "hysds::data/hello", "level": "l2", "type": "hello",
        "match_pattern": r"/(?P<id>HELLO_\d+)$", "publish": {"location": f"file://{pub}/{{id}}"}}]}))

    def make_product(spec: Any, io: Any) -> None:
        prod = Path(spec.workdir) / "HELLO_1"
        prod.mkdir()
        (prod / "HELLO_1.dataset.json").write_text(json.dumps({"version": "v1", "label": "hello"}))
        for i, size in enumerate((1000, 2345)):
            (prod / f"part{i}.dat").write_bytes(os.urandom(size))

    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"),
                              "HYSDS_DATASETS_CFG": str(cfg)}, min_free_percent=0.0)
    runner, _ = fake_runner(backend=FakeBackend(make_product), settings=settings, hostname="celery@test.01.host")
    metrics = JobMetrics(settings).attach(runner.emitter)
    outcome = runner.run(make_job("/bin/true"))
    assert outcome.status == "job-completed", outcome.error
    source = [f for f in (outcome.job_dir / "HELLO_1").iterdir() if f.is_file()]
    assert (pub / "HELLO_1" / "part1.dat").stat().st_size == 2345
    found = samples(metrics.exposition().decode())
    assert value(found, "sandbox_runner_published_datasets_total") == 1
    assert value(found, "sandbox_runner_published_files_total") == len(source) == 4  # + the dataset's context
    assert value(found, "sandbox_runner_published_bytes_total") == sum(f.stat().st_size for f in source)


def test_job_refused_at_admission_still_records_the_phases_that_ran(tmp_path: Path) -> None:
    runner, sink, metrics = _runner(tmp_path, FakeBackend())
    job = make_job("/bin/echo hi")
    job["params"]["_disk_usage"] = "lots"
    del job["job_info"]["time_queued"]  # no time_queued: no queue_wait, rather than a guess
    # what a job arrives with is not this run's (a resubmitted job's old figures must not be counted again)
    job["job_info"]["metrics"] = {"inputs_localized": [{"url": "file:///old", "disk_usage": 10**9}]}
    outcome = runner.run(job)
    assert outcome.status == "job-failed" and outcome.job_dir is None
    info = terminal(sink.docs())["job"]["job_info"]
    check_phases(info, want={"admission", "close_up"})
    assert info["metrics"]["inputs_localized"] == [] and info["metrics"]["job_dir_size"] == 0
    found = samples(metrics.exposition().decode())
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-failed") == 1
    assert value(found, "sandbox_runner_job_phase_seconds_count", phase="admission") == 1
    assert ("sandbox_runner_job_phase_seconds_count", (("phase", "command"),)) not in found
    assert value(found, "sandbox_runner_localized_bytes_total") == 0


def test_textfile_accumulates_runs_and_is_replaced_atomically(tmp_path: Path) -> None:
    prom = tmp_path / "textfiles" / "sandbox_runner.prom"
    prom.parent.mkdir()
    for command in ("/bin/echo one", "/bin/echo two"):
        runner, _, metrics = _runner(tmp_path, FakeBackend(exit_code=0 if "one" in command else 3))
        runner.run(make_job(command))
        metrics.write_textfile(textfile_path(prom, "run_job"), accumulate=True)
    found = samples(prom.read_text())
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-completed") == 1
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-failed") == 1
    assert value(found, "sandbox_runner_job_phase_seconds_count", phase="command") == 2
    assert value(found, "sandbox_runner_job_phase_seconds_bucket", phase="command", le="+Inf") == 2
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in prom.parent.iterdir()) == ["sandbox_runner.prom", "sandbox_runner.prom.lock"]
    # a directory names the file after the writer; anything else must end in .prom (node_exporter reads only those)
    assert textfile_path(prom.parent, "celery@q.01.host") == prom.parent / "celery_q.01.host.prom"
    with pytest.raises(ConfigError, match=r"must end in \.prom") as bad:
        textfile_path(tmp_path / "metrics.txt", "x")
    assert bad.value.field == "metrics_textfile"
    (tmp_path / "junk.prom").write_text("this is {not prometheus\n")
    with pytest.raises(ConfigError, match="not a Prometheus text file"):
        metrics.write_textfile(tmp_path / "junk.prom", accumulate=True)


def test_run_job_textfile_problems_are_reported_at_the_right_time(tmp_path: Path) -> None:
    """A textfile path that can never work stops run-job before the job runs; one that breaks afterwards (not an
    exposition) is a warning: the job has ended and its status was sent, so its outcome is still reported."""
    import subprocess

    from support.machine import VENV_BIN

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "SANDBOX_RUNNER_MIN_FREE_PERCENT": "0"}
    job = write_job(tmp_path, make_job("/bin/echo hi"))

    def run_job(textfile: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "sandbox-runner"), "run-job", str(job), "--backend", "fake",
                               "--metrics-textfile", str(textfile)], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    refused = run_job(tmp_path / "m.txt")
    assert refused.returncode == 2 and "must end in .prom" in refused.stderr, refused.stderr
    assert not (tmp_path / "work" / "jobs").exists()
    junk = tmp_path / "junk.prom"
    junk.write_text("this is {not prometheus\n")
    warned = run_job(junk)
    assert warned.returncode == 0, warned.stderr
    assert warned.stdout.startswith("job-completed") and "warning: metrics_textfile:" in warned.stderr
    assert junk.read_text() == "this is {not prometheus\n"  # never overwritten with a guess


def test_spool_depth_and_undelivered_documents(tmp_path: Path) -> None:
    """A Redis nobody listens on: documents wait in the (real) spool and are counted there; with the spool dir
    unusable too they are lost, and counted as undelivered."""
    dead = "redis://127.0.0.1:1/0"
    spool = tmp_path / "work" / "events" / "spool"
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work")})
    sink = SpoolSink(RedisSink(dead), spool, source="celery@test.01.host", retry_min=60, retry_max=60)
    emitter = Emitter(sink, hostname="celery@test.01.host")
    metrics = JobMetrics(settings).attach(emitter)
    for i in range(3):
        emitter.event("test", "spooled", {"n": i})
    found = samples(metrics.exposition().decode())
    assert value(found, "sandbox_runner_event_spool_depth", spool=str(spool)) == 3
    assert value(found, "sandbox_runner_event_spool_bytes", spool=str(spool)) > 0
    assert value(found, "sandbox_runner_events_undelivered_total") == 0
    sink.close(flush_timeout=0)

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    lost = Emitter(SpoolSink(RedisSink(dead), blocked / "spool", source="x"), hostname="x")
    metrics.attach(lost)
    lost.event("test", "lost", {})
    assert value(samples(metrics.exposition().decode()), "sandbox_runner_events_undelivered_total") == 1


# -- for real: run-job on rootless podman ------------------------------------------------------------------------------
def _run_job(user: Worker, job: dict[str, Any], shared_dir: Path, work_root: Path, redis_url: str, key: str,
             textfile: Path) -> tuple[Any, float]:
    path = write_job(shared_dir, job, name=f"{job['job_id']}.json")
    t0 = time.monotonic()
    proc = user.run(["sandbox-runner", "run-job", str(path), "--metrics-textfile", str(textfile)],
                    env=user.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
                                 SANDBOX_RUNNER_STATUS_KEY=key, SANDBOX_RUNNER_JOB_INFO_KEY=key,
                                 SANDBOX_RUNNER_MIN_FREE_PERCENT="0"))
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc, time.monotonic() - t0


@pytest.mark.podman
def test_run_job_on_podman_records_phases_and_writes_the_textfile(podman_ready: Worker, shared_dir: Path,
                                                                   work_root: Path, redis_url: str,
                                                                   status_key: str) -> None:
    textfile = work_root / "node.prom"  # srunner writes it; node_exporter would read it
    ok = make_job("sh -c 'sleep 0.5; echo done'")
    ok["job_info"]["time_queued"] = queued(2.0)
    proc, wall = _run_job(podman_ready, ok, shared_dir, work_root, redis_url, status_key, textfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = terminal(read_status_list(redis_url, status_key))
    info = json.loads((Path(done["job"]["job_info"]["job_dir"]) / "_job.json").read_text())["job_info"]
    phases = check_phases(info, want=set(PHASES) - {"other"})
    assert sum(phases[p] for p in INSIDE if p in phases) <= wall
    assert 2.0 <= phases["queue_wait"] < 2.0 + wall
    assert 0.5 <= phases["command"] < wall and phases["container_start"] > 0  # engine calls take real time
    assert phases["image_load"] == 0.0  # busybox is present in srunner's storage: nothing to load
    assert done["job"]["job_info"]["metrics"]["phases"] == phases

    # a job whose image cannot be had: it fails in the backend, and still tells how long the attempt took
    bad = make_job("echo hi", image="localhost/sandbox-runner/does-not-exist:1")
    proc, wall = _run_job(podman_ready, bad, shared_dir, work_root, redis_url, status_key, textfile)
    assert proc.returncode == 1, proc.stdout
    failed = next(d for d in read_status_list(redis_url, status_key)
                  if d.get("status") == "job-failed" and d.get("uuid") == bad["task_id"])
    bad_phases = check_phases(failed["job"]["job_info"],
                              want={"queue_wait", "admission", "setup", "localize", "image_load", "command",
                                    "publish", "triage", "close_up"})
    assert bad_phases["image_load"] > 0

    found = samples(textfile.read_text())  # both runs, accumulated by the two processes
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-completed") == 1
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-failed") == 1
    assert value(found, "sandbox_runner_job_phase_seconds_count", phase="image_load") == 2
    assert value(found, "sandbox_runner_job_phase_seconds_count", phase="container_start") == 1
    assert value(found, "sandbox_runner_job_phase_seconds_sum", phase="command") == pytest.approx(
        phases["command"] + bad_phases["command"], abs=1e-5)
    assert value(found, "sandbox_runner_containers_running") == 0
    assert value(found, "sandbox_runner_work_root_free_bytes", root=str(work_root)) > 0
    assert textfile.stat().st_uid == podman_ready.uid


# -- for real: a Celery worker serving /metrics ------------------------------------------------------------------------
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


@pytest.mark.podman
@pytest.mark.slow
def test_worker_serves_metrics_that_match_the_jobs_it_ran(start_worker, podman_ready: Worker, rabbit_url: str,
                                                          redis_url: str, status_key: str, http, work_root: Path,
                                                          shared_dir: Path) -> None:
    from support.celery_helpers import client, free_port, wait_for

    sizes = {"a.bin": 12345, "b.bin": 67890}
    urls = [http.put_file(name, os.urandom(size)) for name, size in sizes.items()]
    http.faults.fail["/b.bin"] = [503, 2]  # a sick server: two transfer retries before b.bin comes
    port = free_port()
    textdir = shared_dir / "textfiles"
    textdir.mkdir()
    os.chown(textdir, podman_ready.uid, podman_ready.gid)
    w = start_worker(rabbit_url, args=("--metrics-port", str(port), "--metrics-textfile", str(textdir)),
                     SANDBOX_RUNNER_TRANSFER_BACKOFF="0.05")
    before = samples(_scrape(port))
    assert value(before, "sandbox_runner_drain_tripped") == 0
    from sandbox_runner import __version__

    assert value(before, "sandbox_runner_info", version=__version__, worker=w.name) == 1  # which worker this port is
    assert ("sandbox_runner_jobs_total", (("status", "job-completed"), ("type", "sr_test"))) not in before

    ok = make_job("sh -c 'ls -l a.bin b.bin'", localize_urls=[{"url": u} for u in urls])
    bad = make_job("sh -c 'echo broken >&2; exit 3'")
    app = client(rabbit_url, redis_url)
    for job in (ok, bad):
        result = app.send_task("hysds.job_worker.run_job", args=[job], queue=w.queue, task_id=job["task_id"])
        with pytest.raises(Exception, match="non-zero exit code: 3") if job is bad else contextlib.nullcontext():
            result.get(timeout=120)
    docs = read_status_list(redis_url, status_key)
    assert {d["uuid"]: d["status"] for d in docs if d.get("status") in TERMINAL_STATUSES} == {
        ok["task_id"]: "job-completed", bad["task_id"]: "job-failed"}

    found = samples(_scrape(port))
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-completed") == 1
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-failed") == 1
    for phase in ("admission", "setup", "localize", "image_load", "container_start", "command", "publish",
                  "triage", "close_up", "queue_wait"):
        assert value(found, "sandbox_runner_job_phase_seconds_count", phase=phase) == 2, phase
    assert value(found, "sandbox_runner_localized_bytes_total") == sum(sizes.values())
    assert value(found, "sandbox_runner_localized_files_total") == 2
    assert value(found, "sandbox_runner_transfer_retries_total") == 2
    assert value(found, "sandbox_runner_published_datasets_total") == 0  # no datasets.json: the bundle stays
    assert value(found, "sandbox_runner_containers_running") == 0
    assert value(found, "sandbox_runner_drain_failure_streak") == 1  # the failed job ran last
    assert value(found, "sandbox_runner_drain_tripped") == 0
    assert value(found, "sandbox_runner_event_spool_depth", spool=str(work_root / "events" / "spool")) == 0
    assert value(found, "sandbox_runner_work_root_free_bytes", root=str(work_root)) > 0
    assert value(found, "sandbox_runner_work_root_reservations", root=str(work_root)) == 0
    # the phases in the histogram are the ones in the documents
    done = next(d for d in docs if d.get("uuid") == ok["task_id"] and d.get("status") == "job-completed")
    failed = next(d for d in docs if d.get("uuid") == bad["task_id"] and d.get("status") == "job-failed")
    want = done["job"]["job_info"]["metrics"]["phases"]["command"] + \
        failed["job"]["job_info"]["metrics"]["phases"]["command"]
    assert value(found, "sandbox_runner_job_phase_seconds_sum", phase="command") == pytest.approx(want, abs=1e-5)

    # the pilot's textfile says the same (it is rewritten after each job)
    prom = textdir / f"{w.name.replace('@', '_')}.prom"
    text = wait_for(lambda: prom.exists() and "job-failed" in prom.read_text() and prom.read_text(), 30,
                    what="the worker's textfile after both jobs")
    assert value(samples(text), "sandbox_runner_localized_bytes_total") == sum(sizes.values())


@pytest.mark.podman
@pytest.mark.slow
def test_worker_refuses_a_metrics_port_in_use(start_worker, rabbit_url: str) -> None:
    import socket

    from support.celery_helpers import wait_for

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        w = start_worker(rabbit_url, args=("--metrics-port", str(port)), wait=False)
        assert w.proc is not None
        w.proc.wait(timeout=60)  # it stops before taking any job (Celery's exit code for a boot error is 0)
        wait_for(lambda: f"cannot serve /metrics on 0.0.0.0:{port}: Address already in use" in w.text(), 10,
                 what="the reason in the log")
        assert "choose another --metrics-port" in w.text() and " ready." not in w.text()


@pytest.mark.podman
@pytest.mark.slow
def test_worker_metrics_while_a_job_runs_and_after_a_predecessor_died(start_worker, podman_ready: Worker,
                                                                      rabbit_url: str, redis_url: str,
                                                                      status_key: str, work_root: Path) -> None:
    """SIGKILL mid-job, restart: the restarted worker counts its reconcile's job-offline, and while the redelivered
    job runs, one container runs and one disk reservation (the job's 1MB) is held under the work root."""
    from support.celery_helpers import client, containers, free_port, wait_for

    from sandbox_runner.units import parse_size

    port = free_port()
    w = start_worker(rabbit_url, args=("--metrics-port", str(port)))
    job = make_job("sleep 600")
    client(rabbit_url, redis_url).send_task("hysds.job_worker.run_job", args=[job], queue=w.queue,
                                            task_id=job["task_id"])
    label = f"sandbox_runner.task_id={job['task_id']}"
    wait_for(lambda: any(c["State"] == "running" for c in containers(podman_ready, label)), 60, what="container")
    assert value(samples(_scrape(port)), "sandbox_runner_containers_running") == 1
    w.signal(9)
    w.wait(timeout=30)
    w.start()

    def rerun_running() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = samples(_scrape(port))
        key = ("sandbox_runner_containers_running", ())
        return found if found.get(key) == 1 else None

    found = wait_for(rerun_running, 60, interval=0.5, what="the redelivered job running")
    assert value(found, "sandbox_runner_jobs_total", type="sr_test", status="job-offline") == 1
    assert value(found, "sandbox_runner_work_root_reservations", root=str(work_root)) == 1
    assert value(found, "sandbox_runner_work_root_reserved_bytes", root=str(work_root)) == parse_size("1MB")
