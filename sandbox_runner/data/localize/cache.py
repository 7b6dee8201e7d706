"""The shared localize cache under ``<work_root>/cache/``: one verified copy per URL, linked into each job dir.

Layout (HySDS's shape, keyed by sha256 of the URL where HySDS uses md5; HySDS's cache eviction finds entries by
their ``.localized`` marker, so it still reads these)::

    cache/<h0>/<h1>/<h2>/<h3>/<sha256(url)>/   an entry: <name> (file or dir), .meta.json, .localized
    cache/.locks/<sha256(url)>.lock            flock'd while a job fills or links the entry, or it is evicted
    cache/.tmp/<sha256(url)>.<random>/         an entry being downloaded (renamed into place when verified)

Concurrent jobs wanting one URL serialize on its lock: the first downloads, the others find the entry when they
get the lock. An entry appears by one ``rename`` of a complete, verified directory, so nobody sees half of one.
``.localized``'s mtime is the last use. Files are read-only: they are hard-linked into job dirs, where a job
writing into its input would otherwise corrupt everyone's copy. :meth:`Cache.evict` is the scrubber's side
(:class:`~sandbox_runner.fspolicy.cache.EvictableCache`): it never removes an entry a job holds or has linked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_runner.data.transfer.base import Cancelled, RemoteInfo

MARKER = ".localized"
META = ".meta.json"


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass
class Slot:
    """A locked cache entry (present or not) for one URL; only valid inside :meth:`Cache.hold`."""

    cache: Cache
    key: str

    @property
    def path(self) -> Path:
        return self.cache.entry_dir(self.key)

    def meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.path / META).read_text())
        except (OSError, ValueError):
            return None
        data = self.path / str(meta.get("name", ""))
        if not meta.get("name") or not (data.is_dir() if meta.get("is_dir") else data.is_file()):
            return None
        if not meta.get("is_dir"):
            st = data.stat()
            # truncated or written into through a job's hard link: not the bytes we verified
            if st.st_size != meta.get("size") or st.st_mtime_ns != meta.get("mtime_ns", st.st_mtime_ns):
                return None
        return dict(meta)

    def data(self, meta: dict[str, Any]) -> Path:
        return self.path / str(meta["name"])

    def fresh(self, meta: dict[str, Any], remote: RemoteInfo | None) -> bool:
        """The entry still holds the remote object (unknown validators or an unreachable source count as yes)."""
        if remote is None:
            return True
        cached = RemoteInfo(size=meta.get("size") if not meta.get("is_dir") else None, etag=meta.get("etag"),
                            modified=meta.get("modified"))
        return cached.same_as(remote)

    def staging(self) -> Path:
        tmp = self.cache.root / ".tmp" / f"{self.key}.{uuid.uuid4().hex[:12]}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, staging: Path, meta: dict[str, Any]) -> None:
        """Make ``staging`` (holding ``meta['name']``) the entry, read-only, in one rename."""
        data = staging / str(meta["name"])
        if data.is_file():
            meta["mtime_ns"] = data.stat().st_mtime_ns
        (staging / META).write_text(json.dumps(meta, sort_keys=True))
        (staging / MARKER).touch()
        _read_only(staging / str(meta["name"]))
        self.drop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, self.path)

    def update_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.path / f"{META}.tmp"
        tmp.write_text(json.dumps(meta, sort_keys=True))
        os.replace(tmp, self.path / META)

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path / MARKER)

    def drop(self) -> None:
        if self.path.exists():
            doomed = self.cache.root / f".evict-{time.time_ns()}-{self.key}"
            os.rename(self.path, doomed)
            shutil.rmtree(doomed, onerror=_writable_retry)


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry_dir(self, key: str) -> Path:
        return self.root.joinpath(*key[:4], key)

    def _lock_path(self, key: str) -> Path:
        return self.root / ".locks" / f"{key}.lock"

    @contextlib.contextmanager
    def _locked(self, key: str, *, wait: bool, cancel: threading.Event | None = None) -> Iterator[bool]:
        path = self._lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not wait:
                            yield False
                            return
                        # poll rather than block, so a cancelled job stops waiting on someone else's download
                        if cancel is not None and cancel.wait(0.05):
                            raise Cancelled("cancelled while waiting for the cache") from None
                        time.sleep(0.0 if cancel is not None else 0.05)
                # an evictor unlinks the lock file while holding it: a lock on an unlinked file locks nothing
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield True
                    return
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def hold(self, url: str, cancel: threading.Event | None = None) -> Iterator[Slot]:
        """The entry for ``url``, exclusively: fill it, check it, link it, then let go."""
        key = url_key(url)
        with self._locked(key, wait=True, cancel=cancel):
            for leftover in (self.root / ".tmp").glob(f"{key}.*"):
                shutil.rmtree(leftover, onerror=_writable_retry)  # a crashed job's half download
            yield Slot(self, key)

    # -- the scrubber's side (EvictableCache) --------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[str, float]]:
        """``(entry dir, last use)`` of every complete entry."""
        for path in self._entry_dirs():
            try:
                yield str(path), os.stat(path / MARKER).st_mtime
            except OSError:
                continue

    def describe(self) -> Iterator[dict[str, Any]]:
        """Every entry with its URL (redacted), size, freeable bytes, last use and whether a job links it."""
        for key, used in self.entries():
            size, freeable = _sizes(Path(key))
            meta = Slot(self, os.path.basename(key)).meta() or {}
            yield {"key": key, "url": meta.get("url"), "size": size, "freeable": freeable, "last_used": used,
                   "linked": freeable < size}

    def evict(self, key: str) -> int:
        """Remove one entry; bytes given back. 0, entry kept, while a job holds it or has it linked."""
        path = Path(key)
        if path.parent.parent.parent.parent.parent != self.root or not path.is_dir():
            return 0
        with self._locked(path.name, wait=False) as got:
            if not got:
                return 0
            size, freeable = _sizes(path)
            if freeable < size:
                return 0  # a job dir shares these inodes: removing the entry would free nothing
            Slot(self, path.name).drop()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path(path.name))  # see _locked: holders re-check the inode
            return freeable

    def size(self) -> int:
        """Bytes eviction could give back (files also linked into job dirs belong to those jobs)."""
        return sum(_sizes(Path(key))[1] for key, _ in self.entries())

    def _entry_dirs(self) -> Iterator[Path]:
        def walk(path: Path, depth: int) -> Iterator[Path]:
            try:
                with os.scandir(path) as it:
                    names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
            except OSError:
                return
            for name in names:
                if depth == 4:
                    yield path / name
                elif len(name) == 1:
                    yield from walk(path / name, depth + 1)

        yield from walk(self.root, 0)


def _sizes(path: Path) -> tuple[int, int]:
    """(allocated bytes, bytes only this entry holds) under ``path``."""
    total = freeable = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_blocks * 512
            if st.st_nlink <= 1 or stat.S_ISLNK(st.st_mode):
                freeable += st.st_blocks * 512
    return total, freeable


def _read_only(path: Path) -> None:
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o444)
    else:
        os.chmod(path, 0o444)


def _writable_retry(func: Any, path: str, _exc: Any) -> None:
    # read-only files sit in writable dirs, so unlink works; a read-only dir (odd input trees) needs a chmod
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o755)
        func(path)

