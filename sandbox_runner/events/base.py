"""The one contract every event sink meets, and the one way documents are packed.

A sink has one write operation, mirroring what HySDS's log_utils does on Redis: ``push(key, doc)`` is
``RPUSH key msgpack(doc)``, and with ``status=(task_id, value, ttl)`` also ``SETEX hysds-job-status-<task_id>
ttl value``. Concrete sinks (:mod:`sandbox_runner.events.sinks`) and the spool in front of Redis
(:mod:`sandbox_runner.events.spool`) both build on this module, so neither needs the other's internals.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack


class EventSink(Protocol):
    description: str

    def push(self, key: str, doc: dict[str, Any], *, status: tuple[str, str, int] | None = None) -> None:
        """Append ``doc`` to list ``key``; if ``status=(task_id, value, ttl)`` also set the status key."""
        ...

    def close(self) -> None: ...


def pack(doc: dict[str, Any]) -> bytes:
    """msgpack, as HySDS writes it; values msgpack cannot hold (paths, datetimes) go as their ``str``, and a lone
    surrogate (no character, so not UTF-8) as its ``\\udXXX`` text: a document is never lost to one string."""
    return msgpack.packb(doc, default=str, use_bin_type=True, unicode_errors="backslashreplace")
