"""Fields of ``/proc/<pid>/stat``: enough to tell a process from a later one that got the same pid."""

from __future__ import annotations


def stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields after ``comm`` (state, ppid, pgrp, session, ..., starttime at 19), or None if ``pid`` is gone.
    Split after the last ``)``: a command name may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def session_of(pid: int | str) -> int | None:
    fields = stat_fields(pid)
    return int(fields[3]) if fields else None


def start_time(pid: int | str) -> int | None:
    """When ``pid`` started, in clock ticks since boot: with the pid, a process's identity."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None
