"""The localize engine: many ``{url -> path}`` downloads at once, through the cache, verified as they stream.

Checksum files are fetched first (they are tiny), so when a data file streams in, its expected digests are
already known and are computed on the bytes as they pass: no second read of a multi-GB input. A mismatch fails
the job naming the file, and never enters the cache.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.data.localize.cache import Cache, Slot
from sandbox_runner.data.transfer import Transfers
from sandbox_runner.data.transfer.base import Cancelled, OnBytes, Transport
from sandbox_runner.data.transfer.digests import file_digests, verify
from sandbox_runner.data.transfer.local import link_or_clone, link_tree
from sandbox_runner.errors import IntegrityError, TransferError
from sandbox_runner.events.documents import iso_now
from sandbox_runner.redact import redact_url

log = structlog.get_logger("sandbox_runner")


@dataclass(frozen=True)
class Item:
    url: str
    dest: Path
    cache: bool
    #: where the job dir starts, for messages that name the file the way the job knows it
    job_dir: Path

    @property
    def shown(self) -> str:
        return str(self.dest.relative_to(self.job_dir))


def url_basename(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


class LinkedEvent(threading.Event):
    """Set when this event or ``parent`` is: a sibling's failure or the job's cancel stops every download."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                return False
            super().wait(left)
        return True


class Localizer:
    def __init__(self, transfers: Transfers, cache: Cache, cancel: threading.Event,
                 on_bytes: OnBytes | None = None) -> None:
        self.transfers = transfers
        self.cache = cache
        self.stop = LinkedEvent(cancel)
        self.on_bytes = on_bytes

    def run_all(self, items: Sequence[Item], expected: dict[Path, dict[str, str]], workers: int,
                on_done: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Fetch every item (``workers`` at once); the metrics in item order, or the first real error."""
        if not items:
            return []
        results: list[dict[str, Any] | None] = [None] * len(items)

        def one(i: int) -> None:
            results[i] = self.fetch(items[i], expected.get(items[i].dest, {}))
            if on_done is not None:
                on_done()

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))),
                                thread_name_prefix="localize") as pool:
            futures: list[Future[None]] = [pool.submit(one, i) for i in range(len(items))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                self.stop.set()  # in-flight downloads stop at their next chunk
                for f in futures:
                    f.cancel()
            wait(futures)
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if errors:
            # the first failure that is not just "stopped because another failed"
            first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            raise first  # type: ignore[misc]
        return [r for r in results if r is not None]

    def fetch(self, item: Item, expected: dict[str, str]) -> dict[str, Any]:
        start, t0 = iso_now(), time.monotonic()
        transport = self.transfers.transport(item.url)
        item.dest.parent.mkdir(parents=True, exist_ok=True)
        if not item.dest.parent.resolve().is_relative_to(item.job_dir.resolve()):
            raise TransferError(f"localize: {item.shown} resolves outside the job dir (through a symlink)")
        if os.path.lexists(item.dest):
            raise TransferError(f"localize: {item.shown} already exists in the job dir (localized twice?)")
        size = self._cached(item, transport, expected) if item.cache else self._direct(item, transport, expected)
        duration = max(time.monotonic() - t0, 1e-6)
        return {"url": redact_url(item.url), "path": str(item.dest), "disk_usage": size, "time_start": start,
                "time_end": iso_now(), "duration": duration, "transfer_rate": size / duration}

    def _direct(self, item: Item, transport: Transport, expected: dict[str, str]) -> int:
        part = item.dest.with_name(f".{item.dest.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            res = transport.fetch(item.url, part, algos=expected, expected=expected, on_bytes=self.on_bytes,
                                  cancel=self.stop)
            verify(f"{item.shown} (from {redact_url(item.url)})", expected, res.digests)
            os.rename(part, item.dest)  # the job sees its input whole or not at all
        except BaseException:
            shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)
            raise
        return res.size

    def _cached(self, item: Item, transport: Transport, expected: dict[str, str]) -> int:
        with self.cache.hold(item.url, cancel=self.stop) as slot:
            meta = self._usable(slot, item, transport, expected)
            if meta is None:
                meta = self._fill(slot, item, transport, expected)
            data = slot.data(meta)
            if data.is_dir():
                link_tree(data, item.dest, mode="link")
            else:
                link_or_clone(data, item.dest)
            slot.touch()
            return int(meta["size"])

    def _usable(self, slot: Slot, item: Item, transport: Transport,
                expected: dict[str, str]) -> dict[str, Any] | None:
        """The entry's metadata when it is present, still the remote object, and has the expected digests."""
        meta = slot.meta()
        if meta is None:
            return None
        try:
            remote = transport.stat(item.url)
        except TransferError as exc:  # source unreachable: the verified copy we hold is the best we have
            log.warning("cache: cannot revalidate, using cached copy", url=redact_url(item.url), error=str(exc))
            remote = None
        if not slot.fresh(meta, remote):
            return None
        missing = [a for a in expected if a not in meta.get("digests", {})]
        if missing and not meta.get("is_dir"):
            # digests nobody asked for when the entry was filled: read the cached copy once, then remember them
            meta.setdefault("digests", {}).update(file_digests(slot.data(meta), missing, expected))
            slot.update_meta(meta)
        try:
            verify(item.shown, expected, meta.get("digests", {}))
        except IntegrityError:
            slot.drop()  # stale or corrupt: download again, under the same lock
            return None
        return meta

    def _fill(self, slot: Slot, item: Item, transport: Transport, expected: dict[str, str]) -> dict[str, Any]:
        staging = slot.staging()
        name = url_basename(item.url) or "data"
        try:
            res = transport.fetch(item.url, staging / name, algos=expected, expected=expected,
                                  on_bytes=self.on_bytes, cancel=self.stop)
            verify(f"{item.shown} (from {redact_url(item.url)})", expected, res.digests)
            size = res.size if not res.info.is_dir else _tree_size(staging / name)
            meta = {"url": redact_url(item.url), "name": name, "size": size, "is_dir": res.info.is_dir,
                    "etag": res.info.etag, "modified": res.info.modified, "digests": res.digests,
                    "created": time.time()}
            slot.commit(staging, meta)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta



def _tree_size(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)
