"""The Prometheus view: ``/metrics`` on a worker (``--metrics-port``), a node_exporter textfile for ``run-job`` and
pilots (``--metrics-textfile``). Imported only when one of them is switched on (prometheus_client costs start-up).

Where the numbers come from. Every job's terminal status document already carries what it did: its type and
status, ``job_info.metrics.phases`` (:mod:`.phases`), ``inputs_localized`` and ``products_staged``. So
:class:`JobMetrics` observes the one :class:`~sandbox_runner.events.emitter.Emitter` (``emitter.observers``) and
counts each terminal document once -- the same event stream the job tracker sees, so the two cannot disagree,
and a job that never reached a job dir (refused at admission) is still counted. Documents the sink could neither
send nor spool are counted as undelivered there too. The rest is read when scraped: disk free and reserved under
the work root (statvfs, the reservation files admission keeps), the event spool's backlog (its segment files),
containers running and transfer retries (:mod:`.live`), the job-drain guard.

Why one in-process registry is correct: the worker's pool is :class:`~sandbox_runner.worker.pool.JobThreadPool`,
so every job runs in a thread of the worker process that serves ``/metrics``; there are no child processes whose
counts would need ``PROMETHEUS_MULTIPROC_DIR``. (Celery's prefork pool cannot run our task at all: the task needs
the worker service that ``boot`` makes in the worker process.)

The textfile of ``run-job`` accumulates: each run adds its counts to what the file already holds (under a
``flock`` on ``<file>.lock``, so concurrent run-jobs on a node do not lose each other's), then replaces it
atomically (temporary file in the same directory, ``fsync``, ``rename``). A worker's textfile holds that worker's
counts since it started, rewritten after each job and every :data:`TEXTFILE_EVERY` seconds, as ``/metrics`` would
show them (counters restart with the process, which ``rate()`` expects).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from sandbox_runner.errors import ConfigError
from sandbox_runner.events.documents import TERMINAL_STATUSES
from sandbox_runner.metrics import live
from sandbox_runner.metrics.phases import PHASES

if TYPE_CHECKING:
    from sandbox_runner.events.emitter import Emitter
    from sandbox_runner.settings import Settings
    from sandbox_runner.worker.drain import DrainGuard

log = structlog.get_logger("sandbox_runner.metrics")

#: seconds between rewrites of a worker's textfile (it is also rewritten after each job)
TEXTFILE_EVERY = 15.0
#: phase-duration buckets, seconds: ms-scale engine calls up to a day of queue wait
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
           14400.0, 86400.0, float("inf"))
PHASE_HISTOGRAM = "sandbox_runner_job_phase_seconds"
#: counter family name (exposed with ``_total``) -> (help, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sandbox_runner_jobs": ("Jobs that ended, by job type and terminal status", ("type", "status")),
    "sandbox_runner_localized_bytes": ("Bytes localized into job dirs (job_info.metrics.inputs_localized)", ()),
    "sandbox_runner_localized_files": ("localize_urls entries localized (a directory URL counts once)", ()),
    "sandbox_runner_published_bytes": ("Bytes published (job_info.metrics.products_staged, triage bundles too)", ()),
    "sandbox_runner_published_datasets": ("Datasets published (job_info.metrics.products_staged entries)", ()),
    "sandbox_runner_published_files": ("Files published (the datasets' files, as products_staged counts them)", ()),
    "sandbox_runner_events_undelivered": ("Status/info documents neither sent nor spooled (lost)", ()),
    "sandbox_runner_transfer_retries": ("Transfers retried after a transient failure (localize and publish)", ()),
}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class JobMetrics:
    """The counts of one process (see the module docstring); a prometheus_client collector."""

    def __init__(self, settings: Settings, *, drain: DrainGuard | None = None, name: str | None = None) -> None:
        self.settings = settings
        self.drain = drain
        #: who reports: the worker's name (``celery@<queue>.<NN>.<host>``), or None for run-job
        self.name = name
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in COUNTERS}
        #: phase -> (cumulative count per bucket of BUCKETS, sum)
        self._phases: dict[str, tuple[list[float], float]] = {}
        #: transfer retries counted before this process (a textfile's earlier runs); the live tally adds to it
        self._retries_before = 0.0
        self._retries_at_start = live.TRANSFER_RETRIES.value
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- counting ----------------------------------------------------------------------------------------------------
    def attach(self, emitter: Emitter) -> JobMetrics:
        emitter.observers.append(self.observe)
        return self

    def observe(self, key: str, doc: dict[str, Any], delivered: bool) -> None:
        """Emitter observer: count one document (terminal job documents; anything undelivered)."""
        with self._lock:
            if not delivered:
                self._inc("sandbox_runner_events_undelivered", ())
            if doc.get("resource") != "job" or doc.get("status") not in TERMINAL_STATUSES:
                return
            self._inc("sandbox_runner_jobs", (str(doc.get("type") or "unknown"), str(doc["status"])))
            metrics = _dict(_dict(_dict(doc.get("job")).get("job_info")).get("metrics"))
            for name, seconds in _dict(metrics.get("phases")).items():
                if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                    self._observe_phase(str(name), float(seconds))
            inputs = [e for e in metrics.get("inputs_localized") or [] if isinstance(e, dict)]
            self._inc("sandbox_runner_localized_bytes", (), sum(_number(e.get("disk_usage")) for e in inputs))
            self._inc("sandbox_runner_localized_files", (), float(len(inputs)))
            products = [e for e in metrics.get("products_staged") or [] if isinstance(e, dict)]
            self._inc("sandbox_runner_published_bytes", (), sum(_number(e.get("disk_usage")) for e in products))
            self._inc("sandbox_runner_published_datasets", (), float(len(products)))
            self._inc("sandbox_runner_published_files", (), sum(_number(e.get("files")) for e in products))

    def _inc(self, name: str, labels: tuple[str, ...], by: float = 1.0) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0.0) + by

    def _observe_phase(self, phase: str, seconds: float) -> None:
        counts, total = self._phases.get(phase) or ([0.0] * len(BUCKETS), 0.0)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self._phases[phase] = (counts, total + seconds)

    def merge_text(self, text: str) -> None:
        """Add the counters and histograms of an earlier exposition (our own textfile) to these counts."""
        with self._lock:
            for family in text_string_to_metric_families(text):
                if family.name in COUNTERS:
                    labelnames = COUNTERS[family.name][1]
                    for sample in family.samples:
                        if sample.name != f"{family.name}_total":
                            continue
                        labels = tuple(sample.labels.get(n, "") for n in labelnames)
                        if family.name == "sandbox_runner_transfer_retries":
                            self._retries_before += sample.value
                        else:
                            self._inc(family.name, labels, sample.value)
                elif family.name == PHASE_HISTOGRAM:
                    for sample in family.samples:
                        phase = sample.labels.get("phase", "")
                        counts, total = self._phases.get(phase) or ([0.0] * len(BUCKETS), 0.0)
                        if sample.name.endswith("_bucket"):
                            bound = float(sample.labels.get("le", "nan"))
                            if bound in BUCKETS:
                                counts[BUCKETS.index(bound)] += sample.value
                        elif sample.name.endswith("_sum"):
                            total += sample.value
                        self._phases[phase] = (counts, total)

    # -- the collector -----------------------------------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; collect() is cheap enough to run per scrape

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
            phases = {name: (list(c), t) for name, (c, t) in self._phases.items()}
        counters["sandbox_runner_transfer_retries"] = {
            (): self._retries_before + live.TRANSFER_RETRIES.value - self._retries_at_start}
        for name, (doc, labelnames) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=labelnames)
            series = counters[name] or ({(): 0.0} if not labelnames else {})
            for labels, value in sorted(series.items()):
                family.add_metric(list(labels), value)
            yield family
        hist = HistogramMetricFamily(PHASE_HISTOGRAM, "Seconds each job spent per phase (job_info.metrics.phases)",
                                     labels=["phase"])
        order = {name: i for i, name in enumerate(PHASES)}
        for phase in sorted(phases, key=lambda p: (order.get(p, len(order)), p)):
            counts, total = phases[phase]
            hist.add_metric([phase], [(_le(b), c) for b, c in zip(BUCKETS, counts, strict=True)], total)
        yield hist
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        from sandbox_runner import __version__

        info = GaugeMetricFamily("sandbox_runner_info", "Always 1: the version, and the worker that reports",
                                 labels=["version", "worker"])
        info.add_metric([__version__, self.name or ""], 1.0)
        yield info
        running = GaugeMetricFamily("sandbox_runner_containers_running",
                                    "Job containers (or sandboxes) this process runs now")
        running.add_metric([], float(live.CONTAINERS_RUNNING.value))
        yield running
        yield from _disk(str(self.settings.node_root))
        yield from _spool([self.settings.event_spool_dir, *self._info_spool()])
        if self.drain is not None:
            snap = self.drain.snapshot()
            tripped = GaugeMetricFamily("sandbox_runner_drain_tripped",
                                        "1 once the job-drain guard stopped this worker taking jobs")
            tripped.add_metric([], 1.0 if self.drain.tripped else 0.0)
            yield tripped
            streak = GaugeMetricFamily("sandbox_runner_drain_failure_streak",
                                       "Contiguous job failures the job-drain guard counts now")
            streak.add_metric([], float(snap["count"]))
            yield streak
            threshold = GaugeMetricFamily("sandbox_runner_drain_threshold",
                                          "Contiguous failures beyond which (at the guard's rate) the worker drains")
            threshold.add_metric([], float(snap["threshold"]))
            yield threshold

    def _info_spool(self) -> list[Path]:
        s = self.settings
        if s.redis_info_url and s.redis_info_url != s.redis_url:  # its own spool, see Emitter.from_settings
            spool = s.event_spool_dir
            return [spool.with_name(f"{spool.name}-info")]
        return []

    # -- output ------------------------------------------------------------------------------------------------------
    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: Path, *, accumulate: bool = False) -> None:
        """Replace ``path`` atomically with these metrics; ``accumulate``: add what it held first (run-job)."""
        lock = path.with_name(path.name + ".lock") if accumulate else None
        try:
            with _flocked(lock):
                if accumulate:
                    with contextlib.suppress(FileNotFoundError):
                        self.merge_text(path.read_text())
                _atomic_write(path, self.exposition())
        except OSError as exc:
            raise ConfigError(f"cannot write the metrics textfile {path}: {exc.strerror or exc}",
                              field="metrics_textfile") from None
        except ValueError as exc:  # a file that is not an exposition: say so rather than overwrite it
            raise ConfigError(f"{path} is not a Prometheus text file ({exc}); remove it or name another",
                              field="metrics_textfile") from None


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _disk(root: str) -> Iterator[Metric]:
    from sandbox_runner.fspolicy.admission import live_reservations
    from sandbox_runner.fspolicy.report import Space

    try:
        space = Space.of(root)
    except OSError:
        return  # no work root yet (nothing ran): no figures rather than wrong ones
    reserved = live_reservations(root, clean=False)  # read-only: cleaning is admission's, under its lock
    for name, doc, value in (
        ("sandbox_runner_work_root_free_bytes", "Bytes free under the work root (statvfs, unprivileged)",
         space.free),
        ("sandbox_runner_work_root_capacity_bytes", "Size of the work root's filesystem", space.capacity),
        ("sandbox_runner_work_root_reserved_bytes", "Bytes running jobs have reserved under the work root",
         reserved.bytes),
        ("sandbox_runner_work_root_reservations", "Running jobs holding a disk reservation", reserved.jobs),
    ):
        family = GaugeMetricFamily(name, doc, labels=["root"])
        family.add_metric([root], float(value))
        yield family


def _spool(dirs: list[Path]) -> Iterator[Metric]:
    """Documents and bytes waiting in the event spool (written while Redis was unreachable, not yet replayed)."""
    from sandbox_runner.events.spoolfile import SUFFIX

    records = GaugeMetricFamily("sandbox_runner_event_spool_depth",
                                "Documents waiting in the event spool for their sink", labels=["spool"])
    waiting = GaugeMetricFamily("sandbox_runner_event_spool_bytes", "Bytes waiting in the event spool",
                                labels=["spool"])
    for directory in dirs:
        count = size = 0
        with contextlib.suppress(OSError):
            for seg in directory.glob(f"*{SUFFIX}"):
                c, s = _pending(seg)
                count, size = count + c, size + s
        records.add_metric([str(directory)], float(count))
        waiting.add_metric([str(directory)], float(size))
    yield records
    yield waiting


def _pending(segment: Path) -> tuple[int, int]:
    """(records, bytes) of a spool segment after its delivered offset (the ``.off`` sidecar)."""
    try:
        raw = segment.with_name(segment.name + ".off").read_bytes()
    except OSError:
        raw = b""
    offset = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0
    try:
        with segment.open("rb") as fh:
            fh.seek(offset)
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            count = size = 0
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                unpacker.feed(chunk)
                count += sum(1 for _ in unpacker)
    except (OSError, ValueError, msgpack.UnpackException):
        return 0, 0
    return count, size


@contextlib.contextmanager
def _flocked(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """node_exporter reads ``*.prom`` only: the temporary name (same dir, so rename is atomic) never matches."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # node_exporter runs as another user
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def textfile_path(setting: Path, name: str) -> Path:
    """The file to write: ``setting`` itself (it must end in ``.prom``), or in a directory ``<name>.prom``."""
    if setting.is_dir():
        return setting / f"{_SAFE.sub('_', name)}.prom"
    if setting.suffix != ".prom":
        raise ConfigError(f"metrics textfile {setting} must end in .prom (node_exporter's textfile collector reads "
                          "only those) or be a directory", field="metrics_textfile")
    if not setting.parent.is_dir():
        raise ConfigError(f"metrics textfile {setting}: directory {setting.parent} does not exist",
                          field="metrics_textfile")
    return setting


# -- the worker ------------------------------------------------------------------------------------------------------
class WorkerMetrics:
    """A worker's metrics: ``/metrics`` on ``settings.metrics_port`` and/or a textfile kept current."""

    def __init__(self, settings: Settings, emitter: Emitter, drain: DrainGuard | None = None) -> None:
        self.metrics = JobMetrics(settings, drain=drain, name=emitter.hostname).attach(emitter)
        self.server: Any = None
        self.textfile = textfile_path(settings.metrics_textfile, emitter.hostname) \
            if settings.metrics_textfile is not None else None
        self._stop = threading.Event()
        self._dirty = threading.Event()
        if settings.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                self.server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_addr,
                                                   registry=self.metrics.registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve /metrics on {settings.metrics_addr}:{settings.metrics_port}: "
                                  f"{exc.strerror or exc}; choose another --metrics-port", field="metrics_port") \
                    from None
            log.info("metrics-serving", addr=settings.metrics_addr, port=self.port)
        if self.textfile is not None:
            emitter.observers.append(self._mark)
            self.write()
            threading.Thread(target=self._keep_written, name="metrics-textfile", daemon=True).start()

    @property
    def port(self) -> int | None:
        return int(self.server.server_address[1]) if self.server is not None else None

    def _mark(self, key: str, doc: dict[str, Any], delivered: bool) -> None:
        if doc.get("resource") == "job" and doc.get("status") in TERMINAL_STATUSES:
            self._dirty.set()

    def _keep_written(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(TEXTFILE_EVERY)
            self._dirty.clear()
            if not self._stop.is_set():
                self.write()

    def write(self) -> None:
        if self.textfile is None:
            return
        try:
            self.metrics.write_textfile(self.textfile)
        except ConfigError as exc:  # a full or vanished dir must not take the worker down
            log.error("metrics-textfile-not-written", error=str(exc))

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.write()  # the final counts, after the last job
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
