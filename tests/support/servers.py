"""Real servers on loopback for the data-in/out tests and benchmarks (no mocks of the transports).

:class:`FileServer` is an HTTP/1.1 server over a directory with what localize and publish need from the real
world: ``Range`` / ``If-Range`` / ``ETag``, keep-alive, ``sendfile`` for big bodies, and faults a test can arm —
drop the connection half way through a body, delay every response (a WAN round trip), fail a WebDAV ``PUT``.
It also speaks the WebDAV subset publish uses (``PUT``, ``MKCOL``, ``MOVE`` with ``Overwrite``, ``DELETE``).
:func:`moto_server` runs moto's S3 in server mode, so boto3 talks real HTTP to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Faults:
    #: path -> bytes after which the body is cut off (once per arm: the retry must get the whole file)
    drop_after: dict[str, int] = field(default_factory=dict)
    #: seconds to wait before answering any request (models network latency)
    delay: float = 0.0
    #: fail PUTs after this many have succeeded (a publish interrupted half way)
    put_budget: int | None = None
    #: ignore Range headers (a server without resume support)
    no_range: bool = False
    #: path -> [status, times]: answer GETs with that status (a sick server) that many times first
    fail: dict[str, list[int]] = field(default_factory=dict)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path) -> count
        self.sent: Counter[str] = Counter()  # path -> body bytes sent (a resume sends only the rest)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def put_file(self, rel: str, data: bytes, *, sidecars: tuple[str, ...] = (), wrong: bool = False) -> str:
        """Serve ``data`` at ``/rel`` (plus ``rel.<algo>`` sidecars, md5sum-style; ``wrong`` corrupts them)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        for algo in sidecars:
            digest = hashlib.new(algo, data).hexdigest()
            if wrong:
                digest = hashlib.new(algo, data + b"tampered").hexdigest()
            (path.parent / f"{path.name}.{algo}").write_text(f"{digest}  {path.name}\n")
        return f"{self.url}/{rel}"

    def count(self, method: str, rel: str) -> int:
        with self.lock:
            return self.requests[(method, "/" + rel.lstrip("/"))]

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format: str, *args: Any) -> None:  # tests stay quiet
        return

    # -- helpers -------------------------------------------------------------------------------------------------
    def _begin(self) -> Path | None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        with self.server.lock:
            self.server.requests[(self.command, rel)] += 1
        if self.server.faults.delay:
            time.sleep(self.server.faults.delay)
        target = (self.server.root / rel.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.root.resolve()):
            self._reply(HTTPStatus.FORBIDDEN)
            return None
        return target

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _drain(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- reads ---------------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        target = self._begin()
        if target is None:
            return
        rel_path = "/" + target.relative_to(self.server.root.resolve()).as_posix()
        with self.server.lock:
            failing = self.server.faults.fail.get(rel_path)
            if failing and failing[1] > 0:
                failing[1] -= 1
            else:
                failing = None
        if failing:
            self._reply(failing[0], b"try again later")
            return
        if not target.is_file():
            self._reply(HTTPStatus.NOT_FOUND)
            return
        st = target.stat()
        size, etag = st.st_size, f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        ranged = match is not None and not self.server.faults.no_range and if_range in (None, etag)
        if ranged and match is not None:
            start = int(match[1]) if match[1] else max(0, size - int(match[2] or 0))
            end = min(int(match[2]), size - 1) if match[1] and match[2] else size - 1
            if start >= size:
                self._reply(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, headers={"Content-Range": f"*/{size}"})
                return
        self.send_response(HTTPStatus.PARTIAL_CONTENT if ranged else HTTPStatus.OK)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "none" if self.server.faults.no_range else "bytes")
        self.send_header("ETag", etag)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        rel = "/" + target.relative_to(self.server.root.resolve()).as_posix()
        with self.server.lock:
            cut = self.server.faults.drop_after.pop(rel, None)
        self.wfile.flush()
        with target.open("rb") as fh:
            count = end - start + 1 if cut is None else max(0, min(cut - start, end - start + 1))
            with self.server.lock:
                self.server.sent[rel] += count
            _sendfile(self.connection, fh.fileno(), start, count)
        if cut is not None:
            # a broken connection, as a proxy or a flaky network leaves it: headers promised more bytes
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    # -- WebDAV writes -------------------------------------------------------------------------------------------
    def do_PUT(self) -> None:
        target = self._begin()
        body = self._drain()
        if target is None:
            return
        with self.server.lock:
            budget = self.server.faults.put_budget
            if budget is not None:
                self.server.faults.put_budget = budget - 1
        if budget is not None and budget <= 0:
            self._reply(HTTPStatus.INSUFFICIENT_STORAGE)
            return
        if not target.parent.is_dir():
            self._reply(HTTPStatus.CONFLICT)
            return
        existed = target.exists()
        target.write_bytes(body)
        self._reply(HTTPStatus.NO_CONTENT if existed else HTTPStatus.CREATED)

    def do_PROPFIND(self) -> None:
        target = self._begin()
        self._drain()
        if target is None:
            return
        if not target.exists():
            self._reply(HTTPStatus.NOT_FOUND)
            return
        body = (f'<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>{self.path}</D:href>'
                '<D:propstat><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>')
        self._reply(HTTPStatus.MULTI_STATUS, body.encode(), {"Content-Type": "application/xml"})

    def do_MKCOL(self) -> None:
        target = self._begin()
        self._drain()
        if target is None:
            return
        if target.exists():
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED)
        elif not target.parent.is_dir():
            self._reply(HTTPStatus.CONFLICT)
        else:
            target.mkdir()
            self._reply(HTTPStatus.CREATED)

    def do_DELETE(self) -> None:
        target = self._begin()
        if target is None:
            return
        if not target.exists():
            self._reply(HTTPStatus.NOT_FOUND)
            return
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        self._reply(HTTPStatus.NO_CONTENT)

    def do_MOVE(self) -> None:
        target = self._begin()
        if target is None:
            return
        dest_rel = urllib.parse.unquote(urllib.parse.urlsplit(self.headers.get("Destination", "")).path)
        dest = (self.server.root / dest_rel.lstrip("/")).resolve()
        overwrite = self.headers.get("Overwrite", "T").upper() != "F"
        if not target.exists():
            self._reply(HTTPStatus.NOT_FOUND)
        elif dest.exists() and not overwrite:
            self._reply(HTTPStatus.PRECONDITION_FAILED)
        else:
            existed = dest.exists()
            if existed:
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.rename(target, dest)
            self._reply(HTTPStatus.NO_CONTENT if existed else HTTPStatus.CREATED)


def _sendfile(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    while count > 0:
        sent = os.sendfile(sock.fileno(), fd, offset, min(count, 1 << 24))
        if sent == 0:
            break
        offset += sent
        count -= sent


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[FileServer]:
    root.mkdir(parents=True, exist_ok=True)
    with FileServer(root) as server:
        yield server


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
