"""Worker names: ``celery@<program>.<NN>.<host>``, as HySDS's supervisord starts its workers.

``program`` is the queue the worker was started for (dots replaced by ``-``, so the name parses back without
ambiguity), ``NN`` a two-digit (or longer) instance number unique on the host, ``host`` the host name (Celery's
``%h``; it may contain dots). Every event a worker sends carries the parts (``worker_program``, ``worker_instance``,
``worker_host``) so a job tracker can facet on queue and instance without parsing names.

On one host, a name is held by at most one live worker: :func:`hold_name` takes an ``flock`` on
``<dir>/<name>.lock`` for the life of the process. The default instance number is the lowest one free, so a
worker restarted after a crash gets its old name back -- and with it, reconciles what its predecessor left.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from sandbox_runner.errors import ConfigError

PREFIX = "celery"
_NAME = re.compile(r"^(?:(?P<prefix>[^@]+)@)?(?P<program>[^.@]+)\.(?P<instance>\d+)\.(?P<host>[^.].*)$")
_held: dict[str, int] = {}  # name -> fd of its lock file, for this process's lifetime


@dataclass(frozen=True)
class WorkerName:
    program: str
    instance: int
    host: str
    prefix: str = PREFIX

    def __str__(self) -> str:
        return f"{self.prefix}@{self.program}.{self.instance:02d}.{self.host}"

    def fields(self) -> dict[str, object]:
        """The parts, as stamped on every event."""
        return {"worker_program": self.program, "worker_instance": self.instance, "worker_host": self.host}


def program_for(queue: str) -> str:
    program = re.sub(r"[^A-Za-z0-9_-]", "-", queue.replace(".", "-")).strip("-")
    if not program:
        raise ConfigError(f"queue {queue!r} gives no usable worker program name", field="queue")
    return program


def make_name(queue: str, instance: int, host: str | None = None) -> WorkerName:
    if instance < 0:
        raise ConfigError(f"instance number must be >= 0, got {instance}", field="instance")
    return WorkerName(program_for(queue), instance, host or socket.gethostname())


def parse_name(name: str) -> WorkerName | None:
    """``celery@factotum-job_worker-small.03.node-7`` -> WorkerName(program, 3, host); None if it does not follow
    the convention (a worker started by hand with another ``-n``)."""
    m = _NAME.match(name.strip())
    if m is None:
        return None
    return WorkerName(m["program"], int(m["instance"]), m["host"], m["prefix"] or PREFIX)


def name_fields(name: str) -> dict[str, object]:
    parsed = parse_name(name)
    return parsed.fields() if parsed else {"worker_program": None, "worker_instance": None, "worker_host": None}


def hold_name(name: str, lock_dir: Path) -> bool:
    """Take the name for this process. False if a live process on this host already holds it."""
    if name in _held:
        return True
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[name] = fd
    return True


def first_free_name(queue: str, lock_dir: Path, host: str | None = None, limit: int = 100) -> WorkerName:
    """The lowest-numbered name for ``queue`` nobody on this host holds (taking it)."""
    for instance in range(1, limit + 1):
        name = make_name(queue, instance, host)
        if hold_name(str(name), lock_dir):
            return name
    raise ConfigError(f"all {limit} worker instance numbers for queue {queue!r} are taken on this host")
