"""Events: one emitter for everything a job, a worker or a scrubber reports.

Humans read structlog lines; machines read msgpack documents on Redis (HySDS's ``logstash`` list and
``hysds-job-status-<task_id>`` keys), or, with no Redis configured, a msgpack file under the work root.
"""

from sandbox_runner.events.base import EventSink
from sandbox_runner.events.emitter import Emitter
from sandbox_runner.events.sinks import FileSink, MemorySink, RedisSink, open_sink

__all__ = ["Emitter", "EventSink", "FileSink", "MemorySink", "RedisSink", "open_sink"]
