"""Where a dataset is published, and how each kind of location makes that atomic and no-clobber.

``file://``  copies into a hidden sibling dir, then ``renameat2(RENAME_NOREPLACE)`` (or ``RENAME_EXCHANGE`` when
             replacing, keeping the old copy until every dataset of the job is in, so a rollback can swap it back).
``http(s)``  WebDAV: PUTs into a hidden staging collection, then one ``MOVE`` with ``Overwrite: F`` (or ``T``).
``s3://``    no rename exists: an ``If-None-Match: *`` claim object, the files, ``<id>.dataset.json`` last as the
             commit point; any failure deletes every key written. A crash mid-way leaves the claim naming the
             payload, which is what lets the retry of that payload clean up and publish.
Every destination keeps ``_publish.context.json`` (payload, task, job) in the dataset: it is how a later publish
tells a retry of the same payload from a clash with someone else's dataset.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

from sandbox_runner.data.transfer import Transfers, scheme_of
from sandbox_runner.data.transfer.local import clone_file, url_path
from sandbox_runner.data.transfer.webdav import child
from sandbox_runner.errors import NoClobberError, PublishError, TransferError
from sandbox_runner.redact import redact_url

RECORD = "_publish.context.json"
Files = list[tuple[Path, str]]  # (local file, path inside the dataset)

_AT_FDCWD, _NOREPLACE, _EXCHANGE = -100, 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 unavailable")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


class Destination(Protocol):
    shown: str

    def existing(self) -> dict[str, Any] | None:
        """None when nothing is at the location; else its publish record ({} when it has none)."""
        ...

    def put(self, files: Files, *, replace: bool) -> None:
        """Publish whole or not at all; NoClobberError when something is there and ``replace`` is off."""
        ...

    def undo(self) -> None:
        """Take back a put (another dataset of the job failed)."""
        ...

    def finish(self) -> None:
        """Every dataset is in: drop what was kept for :meth:`undo`."""
        ...


class FileDestination:
    def __init__(self, location: str) -> None:
        self.path = url_path(location)
        self.shown = location
        self._backup: Path | None = None
        self._done = False

    def existing(self) -> dict[str, Any] | None:
        if not os.path.lexists(self.path):
            return None
        return _parse((self.path / RECORD).read_bytes() if (self.path / RECORD).is_file() else None)

    def put(self, files: Files, *, replace: bool) -> None:
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".{self.path.name}.staging-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir()
            for src, rel in files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                clone_file(src, staging / rel)
            self._commit(staging, replace)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._done = True

    def _commit(self, staging: Path, replace: bool) -> None:
        try:
            if replace and os.path.lexists(self.path):
                renameat2(staging, self.path, _EXCHANGE)  # atomic swap: readers see old or new, never neither
                self._backup = staging
            else:
                renameat2(staging, self.path, _NOREPLACE)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise NoClobberError(f"{self.shown} appeared while publishing") from None
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            self._commit_fallback(staging, replace)

    def _commit_fallback(self, staging: Path, replace: bool) -> None:
        # a filesystem without renameat2 flags: check-then-rename (a non-empty target still fails the rename)
        if os.path.lexists(self.path):
            if not replace:
                raise NoClobberError(f"{self.shown} appeared while publishing")
            self._backup = staging.with_name(staging.name + ".old")
            os.rename(self.path, self._backup)
        os.rename(staging, self.path)

    def undo(self) -> None:
        if not self._done:
            return
        doomed = self.path.with_name(f".{self.path.name}.undo-{uuid.uuid4().hex[:12]}")
        os.rename(self.path, doomed)
        if self._backup is not None:
            os.rename(self._backup, self.path)
            self._backup = None
        shutil.rmtree(doomed, ignore_errors=True)
        self._done = False

    def finish(self) -> None:
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None


class DavDestination:
    def __init__(self, location: str, transfers: Transfers) -> None:
        self.url = location.rstrip("/")
        self.shown = redact_url(location)
        self.dav = transfers.dav()
        self._done = False

    def existing(self) -> dict[str, Any] | None:
        if not self.dav.exists(self.url + "/"):
            return None
        return _parse(self.dav.get_bytes(child(self.url, RECORD)))

    def put(self, files: Files, *, replace: bool) -> None:
        parent, name = self.url.rsplit("/", 1)
        self.dav.makedirs(parent + "/")
        staging = f"{parent}/.{name}.staging-{uuid.uuid4().hex[:12]}"
        try:
            self.dav.makedirs(staging + "/")
            made = {""}
            for src, rel in files:
                folder = rel.rpartition("/")[0]
                if folder not in made:
                    self.dav.makedirs(f"{staging}/{folder}/")
                    made.add(folder)
                self.dav.put(src, child(staging, rel).replace("%2F", "/"))
            if not self.dav.move(staging + "/", self.url + "/", overwrite=replace):
                raise NoClobberError(f"{self.shown} appeared while publishing")
        except BaseException:
            self._quiet_delete(staging + "/")
            raise
        self._done = True

    def _quiet_delete(self, url: str) -> None:
        # the original error matters more than this one; a hidden staging collection is harmless
        with contextlib.suppress(TransferError):
            self.dav.delete(url)

    def undo(self) -> None:
        if self._done:
            self.dav.delete(self.url + "/")
            self._done = False

    def finish(self) -> None:
        return None


class S3Destination:
    def __init__(self, location: str, transfers: Transfers, profile: str | None) -> None:
        self.s3 = transfers.s3(profile)
        self.loc = self.s3.loc(location)
        self.prefix = self.loc.key.rstrip("/")
        self.shown = redact_url(location)
        self._written: list[str] = []

    def _at(self, rel: str) -> Any:
        return self.loc.at(f"{self.prefix}/{rel}")

    def _keys(self) -> list[str]:
        return [k for k, _ in self.s3.keys(self.loc.at(self.prefix))]

    def existing(self) -> dict[str, Any] | None:
        if not self._keys():
            return None
        return _parse(self.s3.get_bytes(self._at(RECORD)))

    def put(self, files: Files, *, replace: bool) -> None:
        before = set(self._keys()) if replace else set()
        record = next((src for src, rel in files if rel == RECORD), None)
        commit = sorted(files, key=lambda f: (f[1].endswith(".dataset.json"), f[1] == RECORD))
        try:
            if record is not None:
                if not self.s3.put_bytes(record.read_bytes(), self._at(RECORD), exclusive=not replace):
                    raise NoClobberError(f"{self.shown} is being published by someone else")
                self._written.append(f"{self.prefix}/{RECORD}")
            for src, rel in commit:
                if rel != RECORD:
                    self.s3.put_file(src, self._at(rel))
                    self._written.append(f"{self.prefix}/{rel}")
        except BaseException:
            self.undo()
            raise
        stale = before - set(self._written)
        if stale:  # files of the replaced version that the new one does not have
            self.s3.delete([self.loc.at(k) for k in sorted(stale)])

    def undo(self) -> None:
        written, self._written = self._written, []
        if written:
            self.s3.delete([self.loc.at(k) for k in written])

    def finish(self) -> None:
        self._written = []


def _parse(raw: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def destination(location: str, transfers: Transfers, profile: str | None = None) -> Destination:
    scheme = scheme_of(location)
    if scheme == "file":
        return FileDestination(location)
    if scheme in ("http", "https", "dav", "davs"):
        return DavDestination(location, transfers)
    if scheme in ("s3", "s3s"):
        return S3Destination(location, transfers, profile)
    raise PublishError(f"cannot publish to {redact_url(location)}: unsupported scheme {scheme!r} "
                       "(file, s3, http(s) WebDAV)")
