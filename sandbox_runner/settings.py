"""Settings: read once, at the edge, into a frozen value object.

Every knob comes from here: command-line options override ``SANDBOX_RUNNER_*`` environment variables, which
override HySDS's own variables where HySDS has one (``HYSDS_WORKER_CFG``, ``HYSDS_DATASETS_CFG``,
``HYSDS_ROOT_WORK_DIR``), which override defaults. Nothing below the edge reads ``os.environ``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sandbox_runner.errors import ConfigError
from sandbox_runner.workroot import WorkRoot

BACKENDS = ("podman", "subprocess", "fake")


@dataclass(frozen=True)
class Settings:
    #: root work dir; jobs go under ``<work_root>/jobs/YYYY/MM/DD/HH/MI/<job_id>/``. None = take the worker
    #: config's ``root_work_dir``, else the per-user default.
    work_root: Path | None = None
    backend: str = "podman"
    #: the subprocess backend's sandbox: "auto" = bubblewrap when it is on PATH, "on" = bubblewrap or fail,
    #: "off" = plain mode (a session of its own under a subreaper; host filesystem and network)
    bwrap: str = "auto"
    #: Redis for status documents; None = events go to ``<work_root>/events/events.msgpack``.
    redis_url: str | None = None
    #: Redis for job_info documents (HySDS's metrics Redis, ``REDIS_INFO_URL``); None = the status Redis.
    redis_info_url: str | None = None
    status_key: str = "logstash"
    job_info_key: str = "logstash"
    status_expires: int = 86400
    #: the worker serves ``<work root>/jobs`` read-only over HTTP on this port (HySDS's ``WEBDAV_PORT``) and
    #: ``job_url`` points there; None = serve nothing (``job_url`` stays ``file://``); 0 = any free port.
    #: ``job_url_host`` is the host put in the URL (None = the node's address, HySDS's ``public_ip``);
    #: ``job_url_bind`` the address listened on. ``job_url_base`` is set by the worker once it serves, never
    #: from the environment: a stand-alone run serves nothing and must not advertise a URL.
    job_url_port: int | None = None
    job_url_host: str | None = None
    job_url_bind: str = "0.0.0.0"
    job_url_base: str | None = None
    podman_socket: str | None = None
    worker_cfg: Path | None = None
    datasets_cfg: Path | None = None
    mount_policy: Path | None = None
    fs_policy: Path | None = None
    network_policy: Path | None = None
    #: what a job may share of the worker beyond its job dir: the engine socket, HySDS's work-root mounts
    #: (``policies/sharing.toml``); None = the shipped default (nothing)
    sharing_policy: Path | None = None
    #: the worker's Celery config (HySDS's ``HYSDS_CELERY_CFG``), mounted read-only at ``<job_dir>/celeryconfig.py``
    celery_cfg: Path | None = None
    #: HySDS's ``HYSDS_GPU_AVAILABLE``: 0 = this node has no GPUs, and a job's ``runtime_options.gpus`` is dropped
    gpu_available: int = 0
    #: the name this worker reports as ``celery_hostname`` (HySDS: ``celery@<program>.<NN>.<host>``).
    worker_name: str = field(default_factory=lambda: f"sandbox-runner@{socket.gethostname()}")
    #: overrides the filesystem policy's ``free.space_percent`` when set
    min_free_percent: float | None = None
    stop_grace: float = 10.0
    log_format: str = "auto"  # auto | console | json
    log_level: str = "info"
    #: data in/out (localize, publish): downloads/uploads at once, retries per transfer, first backoff (seconds,
    #: doubled per attempt), per-operation network timeout, the localize cache (None = ``<work_root>/cache``),
    #: the S3 endpoint for plain ``s3://bucket/key`` URLs (None = AWS), a progress line: auto | always | never
    transfer_concurrency: int = 8
    transfer_retries: int = 5
    transfer_backoff: float = 1.0
    transfer_timeout: float = 60.0
    cache_dir: Path | None = None
    s3_endpoint_url: str | None = None
    progress: str = "auto"
    #: the Celery worker: broker and result backend URLs; seconds between worker-heartbeat events (a consumer
    #: reports a worker offline after two missed beats); the job-drain guard (more than ``drain_threshold``
    #: contiguous failures at ``drain_threshold / drain_window`` per second or faster stops the worker taking
    #: jobs); the redelivery lease's time to live (renewed every third of it); the event spool for when Redis
    #: is unreachable (None = ``<work root>/events/spool``)
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    result_backend: str | None = None
    heartbeat_interval: float = 30.0
    drain_threshold: int = 10
    drain_window: float = 5.0
    lease_ttl: float = 30.0
    spool_dir: Path | None = None
    #: Redis broker only: seconds before an unacked message (its worker was SIGKILLed) is delivered again;
    #: None = kombu's default, one hour. RabbitMQ redelivers as soon as the connection drops.
    broker_visibility_timeout: int | None = None
    #: inside a Slurm pilot: seconds before the allocation's end by which jobs must be done (the pilot's
    #: ``--grace``; its script exports it). Jobs whose time limit does not fit before then are handed back.
    pilot_grace: float = 120.0
    #: where a finished job's user-rules message goes (HySDS's ``USER_RULES_JOB_QUEUE``); "" = send none
    user_rules_queue: str = "user_rules_job"
    #: worker documents (worker-online/-heartbeat/-offline, process_events' shape) on the status Redis: "on", or
    #: "off" where mozart's process_events runs and already writes them from Celery's own worker events
    worker_documents: str = "on"
    #: Prometheus: serve ``/metrics`` on this port (None = off) and address; write the same metrics to this
    #: node_exporter textfile (``*.prom``, or a directory for ``<worker name>.prom``; None = off)
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    metrics_textfile: Path | None = None
    #: ``doctor``'s trivial container: the image it runs (through the same backend and socket as a job), and
    #: where to load it from when absent (``container_image_url`` syntax; None = pull)
    doctor_image: str = "localhost/sandbox-runner/busybox:latest"
    doctor_image_url: str | None = None
    #: the environment the job's ``$VARS`` (mounts, runtime_options) are expanded from. Captured once here.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    uid: int = field(default_factory=os.getuid)
    default_work_root: Path = field(
        default_factory=lambda: Path(os.path.expanduser("~")) / ".local/share/sandbox-runner/work"
    )

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply non-None overrides (command-line options) and re-check."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return _checked(replace(self, **clean))

    def resolve_work_root(self, worker_cfg_root: str | None) -> Path:
        if self.work_root is not None:
            return self.work_root
        if worker_cfg_root:
            return Path(worker_cfg_root)
        return self.default_work_root

    @property
    def node_root(self) -> Path:
        """Where node-local worker state lives (event spool, worker name locks): the work root, or the default."""
        return self.work_root or self.default_work_root

    @property
    def workroot(self) -> WorkRoot:
        """The layout of :attr:`node_root` (jobs, cache, quarantine, events, workers)."""
        return WorkRoot(self.node_root)

    @property
    def event_spool_dir(self) -> Path:
        return self.spool_dir or self.workroot.event_spool


_ENV_MAP: dict[str, str] = {
    "SANDBOX_RUNNER_WORK_ROOT": "work_root",
    "SANDBOX_RUNNER_BACKEND": "backend",
    "SANDBOX_RUNNER_BWRAP": "bwrap",
    "SANDBOX_RUNNER_REDIS_URL": "redis_url",
    "SANDBOX_RUNNER_REDIS_INFO_URL": "redis_info_url",
    "SANDBOX_RUNNER_STATUS_KEY": "status_key",
    "SANDBOX_RUNNER_JOB_INFO_KEY": "job_info_key",
    "SANDBOX_RUNNER_STATUS_EXPIRES": "status_expires",
    "SANDBOX_RUNNER_JOB_URL_PORT": "job_url_port",
    "SANDBOX_RUNNER_JOB_URL_HOST": "job_url_host",
    "SANDBOX_RUNNER_JOB_URL_BIND": "job_url_bind",
    "SANDBOX_RUNNER_PODMAN_SOCKET": "podman_socket",
    "SANDBOX_RUNNER_MOUNT_POLICY": "mount_policy",
    "SANDBOX_RUNNER_POLICY": "fs_policy",
    "SANDBOX_RUNNER_NETWORK_POLICY": "network_policy",
    "SANDBOX_RUNNER_SHARING_POLICY": "sharing_policy",
    "SANDBOX_RUNNER_WORKER_NAME": "worker_name",
    "SANDBOX_RUNNER_MIN_FREE_PERCENT": "min_free_percent",
    "SANDBOX_RUNNER_STOP_GRACE": "stop_grace",
    "SANDBOX_RUNNER_LOG_FORMAT": "log_format",
    "SANDBOX_RUNNER_LOG_LEVEL": "log_level",
    "SANDBOX_RUNNER_TRANSFER_CONCURRENCY": "transfer_concurrency",
    "SANDBOX_RUNNER_TRANSFER_RETRIES": "transfer_retries",
    "SANDBOX_RUNNER_TRANSFER_BACKOFF": "transfer_backoff",
    "SANDBOX_RUNNER_TRANSFER_TIMEOUT": "transfer_timeout",
    "SANDBOX_RUNNER_CACHE_DIR": "cache_dir",
    "SANDBOX_RUNNER_S3_ENDPOINT_URL": "s3_endpoint_url",
    "SANDBOX_RUNNER_PROGRESS": "progress",
    "SANDBOX_RUNNER_BROKER_URL": "broker_url",
    "SANDBOX_RUNNER_RESULT_BACKEND": "result_backend",
    "SANDBOX_RUNNER_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "SANDBOX_RUNNER_DRAIN_THRESHOLD": "drain_threshold",
    "SANDBOX_RUNNER_DRAIN_WINDOW": "drain_window",
    "SANDBOX_RUNNER_LEASE_TTL": "lease_ttl",
    "SANDBOX_RUNNER_SPOOL_DIR": "spool_dir",
    "SANDBOX_RUNNER_BROKER_VISIBILITY_TIMEOUT": "broker_visibility_timeout",
    "SANDBOX_RUNNER_PILOT_GRACE": "pilot_grace",
    "SANDBOX_RUNNER_USER_RULES_QUEUE": "user_rules_queue",
    "SANDBOX_RUNNER_WORKER_DOCUMENTS": "worker_documents",
    "SANDBOX_RUNNER_METRICS_PORT": "metrics_port",
    "SANDBOX_RUNNER_METRICS_ADDR": "metrics_addr",
    "SANDBOX_RUNNER_METRICS_TEXTFILE": "metrics_textfile",
    "SANDBOX_RUNNER_DOCTOR_IMAGE": "doctor_image",
    "SANDBOX_RUNNER_DOCTOR_IMAGE_URL": "doctor_image_url",
    # HySDS's own variables (lower precedence than ours; applied first).
    "HYSDS_WORKER_CFG": "worker_cfg",
    "HYSDS_DATASETS_CFG": "datasets_cfg",
    "HYSDS_CELERY_CFG": "celery_cfg",
    "HYSDS_GPU_AVAILABLE": "gpu_available",
}
_HYSDS_FALLBACKS = {"HYSDS_ROOT_WORK_DIR": "work_root"}


def _coerce(name: str, raw: str, source: str) -> Any:
    kind = str({f.name: f.type for f in fields(Settings)}[name]).removesuffix(" | None")
    text = raw.strip()
    try:
        if kind == "Path":
            return Path(os.path.expanduser(text)) if text else None
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{raw!r} is not a valid {kind}", field=source) from None
    return text or None


def _checked(settings: Settings) -> Settings:
    if settings.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {settings.backend!r} (choose from {', '.join(BACKENDS)})",
                          field="backend")
    if settings.bwrap not in ("auto", "on", "off"):
        raise ConfigError(f"bwrap must be auto, on or off, got {settings.bwrap!r}", field="bwrap")
    if settings.job_url_port is not None and not 0 <= settings.job_url_port <= 65535:
        raise ConfigError(f"{settings.job_url_port} is not a TCP port (0-65535; 0 = any free one)",
                          field="job_url_port")
    if settings.min_free_percent is not None and not 0 <= settings.min_free_percent < 100:
        raise ConfigError(f"{settings.min_free_percent} is not a percentage in [0, 100)",
                          field="min_free_percent")
    if settings.log_format not in ("auto", "console", "json"):
        raise ConfigError(f"unknown log format {settings.log_format!r}", field="log_format")
    if settings.transfer_concurrency < 1 or settings.transfer_retries < 0 or settings.transfer_timeout <= 0:
        raise ConfigError("transfer_concurrency must be >= 1, transfer_retries >= 0 and transfer_timeout > 0",
                          field="transfer")
    if settings.heartbeat_interval <= 0 or settings.lease_ttl <= 0 or settings.drain_window <= 0 \
            or settings.drain_threshold < 1:
        raise ConfigError("heartbeat_interval, lease_ttl and drain_window must be > 0 and drain_threshold >= 1",
                          field="worker")
    if settings.metrics_port is not None and not 0 <= settings.metrics_port < 65536:
        raise ConfigError(f"{settings.metrics_port} is not a TCP port (0-65535)", field="metrics_port")
    if settings.progress not in ("auto", "always", "never"):
        raise ConfigError(f"unknown progress mode {settings.progress!r} (auto, always, never)", field="progress")
    if settings.worker_documents not in ("on", "off"):
        raise ConfigError(f"worker_documents must be on or off, got {settings.worker_documents!r}",
                          field="worker_documents")
    return settings


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the Settings from an environment (default: ``os.environ``) plus explicit overrides."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    for var, name in _HYSDS_FALLBACKS.items():
        if env.get(var):
            values[name] = _coerce(name, env[var], var)
    for var, name in _ENV_MAP.items():
        if env.get(var):
            values[name] = _coerce(name, env[var], var)
    if not values.get("podman_socket") and env.get("CONTAINER_HOST"):
        values["podman_socket"] = env["CONTAINER_HOST"]
    values["env"] = env
    return Settings(**values).with_overrides(**overrides)
