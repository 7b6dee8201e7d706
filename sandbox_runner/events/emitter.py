"""The one emitter: every job status, job_info, custom and worker event goes through :class:`Emitter`.

Each document is logged through structlog (for humans and log shippers) and pushed, msgpack-encoded, to the sink
(for machines). A sink failure is logged loudly but never turns a finished job into a crashed worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sandbox_runner.errors import EventSinkError
from sandbox_runner.events.base import EventSink
from sandbox_runner.events.documents import (
    custom_event_doc,
    job_info_doc,
    job_status_doc,
    status_ttl,
    worker_event_doc,
)
from sandbox_runner.events.sinks import open_sink

if TYPE_CHECKING:
    from sandbox_runner.settings import Settings


class Emitter:
    def __init__(
        self,
        sink: EventSink,
        *,
        hostname: str,
        status_key: str = "logstash",
        job_info_key: str = "logstash",
        status_expires: int = 86400,
        fields: dict[str, Any] | None = None,
        info_sink: EventSink | None = None,
    ) -> None:
        self.sink = sink
        #: where job_info documents go when the site keeps them apart (HySDS's metrics Redis), else ``sink``
        self.info_sink = info_sink
        #: stamped on every document (a Celery worker adds its name's parts, so a tracker can facet on them)
        self.fields = dict(fields or {})
        self.hostname = hostname
        self.status_key = status_key
        self.job_info_key = job_info_key
        self.status_expires = status_expires
        self.log = structlog.get_logger("sandbox_runner")

    @classmethod
    def from_settings(cls, settings: Settings, root: Path, *, name: str | None = None,
                      fields: dict[str, Any] | None = None) -> Emitter:
        """The emitter every edge uses: Redis behind the spool when configured, else the file under ``root``."""
        name = name or settings.worker_name
        sink = open_sink(settings.redis_url, root, spool_dir=settings.event_spool_dir, source=name)
        info_sink = None
        if settings.redis_info_url and settings.redis_info_url != settings.redis_url:
            # its own spool: a spool replays into the one Redis it was written for
            spool = settings.event_spool_dir
            info_sink = open_sink(settings.redis_info_url, root, spool_dir=spool.with_name(f"{spool.name}-info"),
                                  source=name)
        return cls(sink, hostname=name, status_key=settings.status_key, job_info_key=settings.job_info_key,
                   status_expires=settings.status_expires, fields=fields, info_sink=info_sink)

    def _deliver(self, key: str, doc: dict[str, Any], status: tuple[str, str, int] | None = None,
                 sink: EventSink | None = None) -> bool:
        for name, value in self.fields.items():
            doc.setdefault(name, value)
        try:
            (sink or self.sink).push(key, doc, status=status)
            return True
        except EventSinkError as exc:
            self.log.error("event not delivered", error=str(exc), doc_type=doc.get("type"),
                           status=doc.get("status"))
            return False

    def job_status(
        self,
        job: dict[str, Any],
        status: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        doc = job_status_doc(job, status, self.hostname, error=error, traceback=traceback, extra=extra or None)
        fields = {"job_id": doc["job_id"], "task_id": doc["uuid"]}
        if error is not None:
            self.log.error(status, error=error, **fields)
        else:
            self.log.info(status, **fields)
        task_id = doc["uuid"]
        ttl = status_ttl(job, self.status_expires)
        self._deliver(self.status_key, doc, (task_id, status, ttl) if task_id else None)
        return doc

    def job_info(self, job: dict[str, Any]) -> dict[str, Any]:
        doc = job_info_doc(job)
        self._deliver(self.job_info_key, doc, sink=self.info_sink)
        return doc

    def event(self, event_type: str, status: str, event: dict[str, Any],
              tags: list[str] | None = None) -> dict[str, Any]:
        doc = custom_event_doc(event_type, status, event, self.hostname, tags)
        self.log.info(f"{event_type}/{status}", **{k: v for k, v in event.items() if _loggable(v)})
        self._deliver(self.status_key, doc)
        return doc

    def worker_event(self, status: str, event: dict[str, Any], worker_type: str = "worker") -> dict[str, Any]:
        doc = worker_event_doc(status, event, self.hostname, worker_type)
        self.log.debug(status, hostname=self.hostname, active=event.get("active"))
        self._deliver(self.status_key, doc)
        return doc

    def close(self) -> None:
        self.sink.close()
        if self.info_sink is not None:
            self.info_sink.close()


def _loggable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
