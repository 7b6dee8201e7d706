"""``file://`` (and bare absolute paths): reflink, hard link or in-kernel copy, as the filesystem allows.

Order of preference when no digest is wanted: a reflink (copy-on-write: instant, and the copy is independent),
then ``copy_file_range`` (in-kernel, no bytes through Python). When a digest is wanted the bytes must pass through
us anyway, so the copy is a read-hash-write stream: one pass, never a copy followed by a re-read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from sandbox_runner.data.transfer.base import Cancelled, FetchResult, FileSink, OnBytes, RemoteInfo
from sandbox_runner.errors import TransferError

FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int)
_CHUNK = 1 << 20


def url_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("", "file") or parts.netloc not in ("", "localhost"):
        raise TransferError(f"not a local file URL: {url!r}")
    return Path(urllib.parse.unquote(parts.path))


def _reflink(src: Path, dst: Path) -> bool:
    with src.open("rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
            return True
        except OSError:
            os.close(fd)
            fd = -1
            os.unlink(dst)
            return False
        finally:
            if fd >= 0:
                os.close(fd)


def clone_file(src: Path, dst: Path, on_bytes: OnBytes | None = None) -> None:
    """An independent copy of ``src`` at ``dst`` (must not exist): reflink, else ``copy_file_range``."""
    if _reflink(src, dst):
        if on_bytes is not None:
            on_bytes(src.stat().st_size)
        return
    with src.open("rb") as s, open(dst, "xb") as d:
        try:
            while n := os.copy_file_range(s.fileno(), d.fileno(), 1 << 30):
                if on_bytes is not None:
                    on_bytes(n)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # copy_file_range refused (old kernel, odd filesystem pair): a plain buffered copy
            d.seek(0)
            d.truncate()
            s.seek(0)
            shutil.copyfileobj(s, d, _CHUNK)


def link_or_clone(src: Path, dst: Path) -> str:
    """Put ``src`` at ``dst`` without duplicating data where possible; returns how ("reflink", "hardlink", "copy").

    Hard links share the inode, so callers that hand files to a job keep the source read-only.
    """
    if _reflink(src, dst):
        return "reflink"
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
            raise
    clone_file(src, dst)
    return "copy"


def link_tree(src: Path, dst: Path, mode: str = "link") -> None:
    """A directory tree at ``dst`` whose files are linked (``mode="link"``) or cloned from ``src``'s.

    Symlinks are recreated as symlinks (as ``cp -a``), never followed out of the tree.
    """
    dst.mkdir(parents=True, exist_ok=True)
    with os.scandir(src) as it:
        entries = list(it)
    for entry in entries:
        s, d = Path(entry.path), dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(s), d)
        elif entry.is_dir():
            link_tree(s, d, mode)
        elif mode == "link":
            link_or_clone(s, d)
        else:
            clone_file(s, d)


class FileTransport:
    def stat(self, url: str) -> RemoteInfo | None:
        path = url_path(url)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TransferError(f"cannot stat {path}: {exc.strerror}") from None
        return RemoteInfo(size=None if path.is_dir() else st.st_size, modified=str(st.st_mtime_ns),
                          is_dir=path.is_dir())

    def fetch(self, url: str, dest: Path, *, algos: Iterable[str] = (), expected: dict[str, str] | None = None,
              on_bytes: OnBytes | None = None, cancel: threading.Event | None = None) -> FetchResult:
        src = url_path(url)
        info = self.stat(url)
        if info is None:
            raise TransferError(f"{src} does not exist")
        algos = tuple(algos)
        try:
            if info.is_dir:
                link_tree(src, dest, mode="clone")
                size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(dest) for f in fs)
                return FetchResult(size=size, info=info)
            if not algos:
                clone_file(src, dest, on_bytes)
                return FetchResult(size=dest.stat().st_size, info=info)
            sink = FileSink(dest, algos)
            try:
                with src.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(f"copy of {src} cancelled")
                        sink.write(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
            except BaseException:
                sink.discard()
                raise
            sink.close()
            return FetchResult(size=sink.size, digests=sink.digests.hexdigests(expected), info=info)
        except OSError as exc:
            raise TransferError(f"cannot copy {src}: {exc.strerror or exc}") from None
