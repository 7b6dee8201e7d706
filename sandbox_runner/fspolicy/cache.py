"""The localize cache as the scrubber sees it: entries with a last use, evicted least-recently-used first.

The cache itself belongs to the localizer (``<root>/cache/``); the scrubber only needs :class:`EvictableCache`.
:class:`MarkerCache` reads HySDS's layout (a dir holding a ``.localized`` marker whose mtime is the last use) and
is what runs until the localizer ships its own implementation of the protocol.

HySDS evicts the *newest* entries first (it reverses its sort). Here :func:`lru_order` yields the oldest first,
in bounded batches, so eviction order is right and memory does not grow with the number of entries.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from sandbox_runner.fspolicy.jobdirs import measure
from sandbox_runner.fspolicy.quarantine import purge

CACHE = "cache"
MARKER = ".localized"
BATCH = 256


class EvictableCache(Protocol):
    def entries(self) -> Iterable[tuple[str, float]]:
        """``(key, last_used)`` of every entry, in any order, streamed."""
        ...

    def evict(self, key: str) -> int:
        """Remove one entry; the bytes given back (0 when it is in use or already gone)."""
        ...

    def size(self) -> int:
        """Bytes the whole cache holds."""
        ...


def lru_order(cache: EvictableCache, batch: int = BATCH,
              after: tuple[float, str] | None = None) -> Iterator[tuple[str, float]]:
    """Entries (used after ``after``) least recently used first, listing the cache once per ``batch`` consumed."""
    while True:
        items = ((used, key) for key, used in cache.entries())
        chosen = heapq.nsmallest(batch, (i for i in items if after is None or i > after))
        for used, key in chosen:
            yield key, used
        if len(chosen) < batch:
            return
        after = chosen[-1]


class MarkerCache:
    """HySDS layout: ``<root>/cache/<h0>/<h1>/<h2>/<h3>/<md5(url)>/`` with a ``.localized`` marker.

    Symlinks are never followed; top-level files (image tarballs being loaded, their locks) are not entries.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, CACHE)

    def _walk(self, path: str, depth: int) -> Iterator[tuple[str, float]]:
        try:
            marker = os.lstat(os.path.join(path, MARKER))
        except OSError:
            marker = None
        if marker is not None and depth > 0:
            yield path, marker.st_mtime
            return
        if depth > 8:  # HySDS nests 5 deep; anything deeper is not a cache entry
            return
        try:
            with os.scandir(path) as it:
                subdirs = [e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for name in sorted(subdirs):
            yield from self._walk(os.path.join(path, name), depth + 1)

    def entries(self) -> Iterator[tuple[str, float]]:
        if os.path.islink(self.dir) or not os.path.isdir(self.dir):
            return
        yield from self._walk(self.dir, 0)

    def evict(self, key: str) -> int:
        if not key.startswith(self.dir + os.sep):
            return 0
        size, _ = measure(key)
        # rename first: a localizer looking the entry up sees it whole or not at all, never half-deleted
        doomed = os.path.join(self.dir, f".evict-{time.time_ns()}-{os.path.basename(key)}")
        try:
            os.rename(key, doomed)
        except OSError:
            return 0
        return 0 if purge(doomed) is not None else size

    def size(self) -> int:
        return sum(measure(key)[0] for key, _ in self.entries())


def open_cache(root: str) -> EvictableCache:
    """The cache under ``root``: the localizer's own, once it provides the protocol; else the HySDS layout."""
    return MarkerCache(root)
