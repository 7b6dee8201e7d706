"""A worker's life: start (name lock, reconcile, signals, worker-online), heartbeats, shutdown (worker-offline).

It is a Celery worker bootstep, so ``sandbox-runner worker`` and a plain ``celery -A sandbox_runner.celery_app
worker`` behave the same. It starts after the pool and before the consumer, so a predecessor's leftovers are
cleaned up before the first message is taken; worker-offline is sent from ``worker_shutdown``, after the pool has
drained (a warm shutdown waits for running jobs).

Worker events go through the one emitter onto Redis as the worker documents mozart's process_events writes
(:func:`~sandbox_runner.events.documents.worker_event_doc`), with Celery's own fields (hostname, timestamp, freq,
utcoffset, pid, clock, active, processed, loadavg, sw_ident, sw_ver, sw_sys), and process_events'
``hysds-worker-status-<worker>`` key is kept beside them; ``worker_documents=off`` leaves both to a
process_events that already writes them from Celery's own worker events on the broker. Heartbeats
come from a thread of their own, not the consumer's event loop: a broker outage must not make a tracker think the
worker -- and with it its running jobs -- went offline. A consumer calls a worker offline after two missed beats.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import bootsteps

from sandbox_runner.errors import ConfigError
from sandbox_runner.events import Emitter
from sandbox_runner.hpc.handback import PilotDrain, register_control_command
from sandbox_runner.hpc.walltime import ask_scheduler
from sandbox_runner.settings import Settings
from sandbox_runner.worker.jobhttp import JobHTTPServer, start_job_server
from sandbox_runner.worker.lease import LeaseGuard
from sandbox_runner.worker.naming import hold_name, name_fields
from sandbox_runner.worker.reconcile import reconcile
from sandbox_runner.worker.root import pin_work_root
from sandbox_runner.worker.service import SIGNAL_STATUS, WorkerService, attach_service, service_of

log = structlog.get_logger("sandbox_runner.worker")

# the service itself is kept on the worker's Celery app (worker/service.py: attach_service, service_of), where the
# task and the signals find it; these two only this module reads
_heart: Heart | None = None
_metrics: Any = None  # metrics.prom.WorkerMetrics when --metrics-port / --metrics-textfile is on


def celery_fields(kind: str, hostname: str, freq: float, service: WorkerService | None,
                  clock: Callable[[], int] | None = None) -> dict[str, Any]:
    """The fields Celery's own Heart puts in worker events (celery/worker/heartbeat.py: every kind carries
    active, processed and loadavg; the dispatcher adds utcoffset, pid and the Lamport clock), plus ours."""
    from celery.utils.sysinfo import load_average
    from celery.utils.time import utcoffset
    from celery.worker.state import SOFTWARE_INFO, active_requests, all_total_count

    event: dict[str, Any] = {"type": kind, "hostname": hostname, "timestamp": time.time(), "freq": freq,
                             "utcoffset": utcoffset(), "pid": os.getpid(), "clock": clock() if clock else 0,
                             **SOFTWARE_INFO}
    event.update(active=len(active_requests), processed=all_total_count[0], loadavg=list(load_average()))
    if service is not None:
        event["drained"] = service.drain.tripped
    return event


class Heart(threading.Thread):
    def __init__(self, emitter: Emitter, hostname: str, interval: float, service: WorkerService,
                 queues: list[str], *, clock: Callable[[], int] | None = None, enabled: bool = True,
                 guard: LeaseGuard | None = None) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.emitter, self.hostname, self.interval, self.service = emitter, hostname, interval, service
        self.guard = guard  # keeps process_events' hysds-worker-status key along with the documents
        self.queues, self.clock = queues, clock
        #: off where mozart's process_events already turns Celery's own worker events into worker documents
        self.enabled = enabled
        self.stopped = threading.Event()

    def send(self, kind: str, **extra: Any) -> None:
        if not self.enabled:
            log.info(kind, hostname=self.hostname, **extra)  # what the document would have said, in the log only
            return
        event = celery_fields(kind, self.hostname, self.interval, self.service, self.clock)
        event.update(queues=self.queues, **extra)
        self.emitter.worker_event(kind, event)
        if self.guard is not None:
            self.guard.mark_worker(kind, self.interval)

    def run(self) -> None:
        while self.enabled and not self.stopped.wait(self.interval):
            try:
                self.send("worker-heartbeat")
            except Exception as exc:  # a beat must never kill the heart
                log.error("heartbeat-failed", error=str(exc))

    def stop(self) -> None:
        self.stopped.set()


def install_signal_handlers(service: WorkerService) -> None:
    """While a job runs, each of SIGHUP/INT/QUIT/ABRT/TERM stops every job (``job-<signal>``) and then shuts the
    worker down warm (Celery's SIGTERM handler). With no job running, Celery's own handling stays."""
    warm = signal.getsignal(signal.SIGTERM)
    for sig in SIGNAL_STATUS:
        previous = signal.getsignal(sig)
        signal.signal(sig, _handler(service, sig, previous, warm))


def _handler(service: WorkerService, sig: int, previous: Any, warm: Any) -> Callable[[int, Any], None]:
    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and service.pilot is not None:
            # a pilot's TERM is the scheduler ending the job (scancel, qdel, the walltime): drain and hand back
            # what cannot finish before its KILL, then shut down warm. Not in the handler's own frame: the drain
            # takes locks this thread may hold.
            threading.Thread(target=service.pilot.on_term, name="pilot-drain", daemon=True).start()
            if callable(warm):
                warm(signum, frame)
        elif service.interrupt_all(signum) and callable(warm):
            warm(signal.SIGTERM, frame)
        elif callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    return handle


_job_http: JobHTTPServer | None = None


def _serve_jobs(settings: Settings) -> Settings:
    """Start serving the jobs tree when configured; the settings then carry the base URL job URLs start with."""
    global _job_http
    _job_http = start_job_server(settings)
    return settings if _job_http is None else settings.with_overrides(job_url_base=_job_http.base_url)


def _stop_serving_jobs() -> None:
    global _job_http
    server, _job_http = _job_http, None
    if server is not None:
        server.stop()


def make_lifecycle_step(base: Settings) -> type[bootsteps.StartStopStep]:
    class SandboxRunnerWorker(bootsteps.StartStopStep):
        """sandbox_runner's worker start-up; see the module docstring."""

        requires = ("celery.worker.components:Pool",)

        def start(self, parent: Any) -> None:
            boot(base, parent)

        def stop(self, parent: Any) -> None:
            pass  # worker-offline waits for worker_shutdown, after the pool has drained

    return SandboxRunnerWorker


def boot(base: Settings, w: Any) -> WorkerService:
    global _heart
    name = str(w.hostname)
    settings = pin_work_root(base.with_overrides(worker_name=name))  # reconcile where its jobs land
    if not hold_name(name, settings.workroot.workers):
        raise ConfigError(f"another worker named {name} is running on this host", field="worker_name")
    settings = _serve_jobs(settings)  # job_url over HTTP, as HySDS's WebDAV, when job_url_port is set
    queues = sorted(w.app.amqp.queues.consume_from)
    fields: dict[str, Any] = {**name_fields(name), "worker_queues": queues}
    emitter = Emitter.from_settings(settings, settings.node_root, name=name, fields=fields)
    _start_metrics(settings, emitter)  # before reconcile: its job-offline documents count, a taken port stops us
    guard = LeaseGuard(settings.redis_url, name, settings.lease_ttl, settings.status_expires) \
        if settings.redis_url else None
    done = reconcile(settings, emitter, guard, use_podman=settings.backend == "podman")

    def stop_taking_jobs() -> None:
        for queue in queues:
            w.app.control.cancel_consumer(queue, destination=[name], reply=False)
        log.error("job-drain-stopped-consuming", queues=queues)

    def free_the_allocation() -> None:
        log.warning("pilot-exhausted", reason="too little walltime left for the queue's jobs; stopping")
        w.app.control.broadcast("shutdown", destination=[name], reply=False)

    walltime = ask_scheduler(settings.env, settings.pilot_grace)
    if walltime.pilot:
        log.info("pilot-walltime", pilot=walltime.pilot, time_left=walltime.left(), grace=walltime.grace)
    service = WorkerService(settings, emitter, guard, on_drain=stop_taking_jobs, walltime=walltime,
                            on_exhausted=free_the_allocation)
    attach_service(w.app, service)
    if walltime.pilot:
        service.pilot = PilotDrain(service, walltime, settings.stop_grace)
        register_control_command()
    install_signal_handlers(service)
    if _metrics is not None:
        _metrics.metrics.drain = service.drain
    _heart = Heart(emitter, name, settings.heartbeat_interval, service, queues, clock=w.app.clock.forward,
                   enabled=settings.worker_documents == "on", guard=guard)
    _heart.send("worker-online", reconciled={"containers": done.containers, "offline": done.offline,
                                             "closed": done.closed})
    _heart.start()
    return service


def _start_metrics(settings: Settings, emitter: Emitter) -> None:
    global _metrics
    if settings.metrics_port is None and settings.metrics_textfile is None:
        return  # prometheus_client is not even imported
    from sandbox_runner.metrics.prom import WorkerMetrics

    _metrics = WorkerMetrics(settings, emitter)


def shutdown(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown`` (``sender``: the WorkController): the pool has drained; say goodbye and flush what the
    spool still holds."""
    global _heart, _metrics
    app = getattr(sender, "app", None)
    service = service_of(app)
    heart, _heart = _heart, None
    if app is not None:
        attach_service(app, None)
    _stop_serving_jobs()
    if heart is None or service is None:
        return
    heart.stop()
    heart.join(timeout=10)  # a beat still being sent must not land after the goodbye
    heart.send("worker-offline")
    service.close()
    service.emitter.close()
    if _metrics is not None:
        metrics, _metrics = _metrics, None
        metrics.close()
