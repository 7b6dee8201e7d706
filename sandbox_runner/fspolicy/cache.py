"""The localize cache as the scrubber sees it: entries with a last use, evicted least-recently-used first.

The cache itself belongs to the localizer (``<root>/cache/``, :mod:`sandbox_runner.data.localize.cache`): it knows which
entries a job holds or has linked, so eviction goes through its ``evict``. The scrubber only needs
:class:`EvictableCache`: entries with a last use (``.localized``'s mtime), evict one, total size.

HySDS evicts the *newest* entries first (it reverses its sort). Here :func:`lru_order` yields the oldest first,
in bounded batches, so eviction order is right and memory does not grow with the number of entries.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from sandbox_runner.workroot import WorkRoot

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


class _NoCache:
    """Stands in for a ``<root>/cache`` that is a symlink: it points out of the root, so it is not ours to evict."""

    def entries(self) -> Iterator[tuple[str, float]]:
        return iter(())

    def evict(self, key: str) -> int:
        return 0

    def size(self) -> int:
        return 0


def open_cache(root: str) -> EvictableCache:
    """The localizer's cache under ``root`` (:class:`sandbox_runner.data.localize.cache.Cache` implements the
    protocol)."""
    from sandbox_runner.data.localize.cache import Cache

    cache_dir = os.fspath(WorkRoot(Path(root)).cache)
    if os.path.islink(cache_dir):
        return _NoCache()
    return Cache(Path(cache_dir))
