"""What a scrub measures and reports: free space, one action, and the running totals of a scrub."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Space:
    capacity: int
    free: int
    files: int  # 0 on filesystems without an inode count: inode thresholds do not apply
    ffree: int

    @classmethod
    def of(cls, path: str) -> Space:
        st = os.statvfs(path)
        return cls(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail)


@dataclass(frozen=True)
class Action:
    kind: str  # quarantine | purge | evict | skip (a dir it may not move: another user's, a mount point)
    path: str
    bytes: int
    inodes: int
    #: succeeded | failed | crashed | quarantine | ttl | cache | cache-cap; for a skip also unlistable (a dir it
    #: cannot list, so the job dirs under it are not seen) and unknown (a job dir whose lock it cannot probe)
    reason: str
    error: str | None = None
    #: bytes a failed purge gave back before its error (most of a tree may go before one file refuses)
    freed: int | None = None

    @property
    def given_back(self) -> int:
        """Bytes this action really freed: none for a move or a skip, all for a clean purge or eviction."""
        if self.kind in ("quarantine", "skip"):
            return 0
        if self.error:
            return self.freed or 0
        return self.bytes


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    #: bytes and inodes the last ladder could not free (0, 0: its target holds)
    short: tuple[int, int] = (0, 0)

    def add(self, action: Action) -> None:
        self.counts[action.kind] = self.counts.get(action.kind, 0) + 1
        # a quarantine's bytes are what it moved (freed on purge); every other kind counts what it gave back
        given = action.bytes if action.kind == "quarantine" else action.given_back
        self.bytes[action.kind] = self.bytes.get(action.kind, 0) + given
        # a skip is a dir it may not touch, not a failure: the threshold decides whether the scrub did its job
        self.errors += action.error is not None and action.kind != "skip"

    @property
    def freed(self) -> int:
        return self.bytes.get("purge", 0) + self.bytes.get("evict", 0)
