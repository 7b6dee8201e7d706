"""A minimal client for the Podman (libpod) REST API: one HTTP/1.1 request per connection, stdlib only.

Why not podman-py's client for the hot path: importing it (requests, urllib3, certifi) costs ~0.2 s of CPU before
the first request -- as much as half of a whole ``podman run --rm`` here -- and it offers no ``attach`` (its
``Container.attach`` raises NotImplementedError), while ``containers.create`` costs an extra inspect round trip.
Everything the backend needs is a handful of JSON calls plus one hijacked attach stream; ``http.client`` over an
``AF_UNIX`` socket does that at ~0.03 s import cost. A fresh connection per request keeps the client thread-safe
(the cancel path stops a container while another thread is blocked in ``wait``) at ~0.1 ms per connect.

Errors are translated here, once: an unreachable service is :class:`ServiceUnreachable`, an HTTP error status is
:class:`APIError` carrying podman's own one-line message. Both are :class:`BackendError`, so nothing foreign leaks.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from typing import IO, Any

from sandbox_runner.errors import BackendError

__all__ = ["APIError", "PodmanAPI", "ServiceUnreachable", "socket_path"]

#: podman 4.x and 5.x both serve this prefix; it pins the request/response shapes we rely on.
API_PREFIX = "/v4.0.0/libpod"
#: for calls that answer promptly; ``wait``, ``attach`` and image loads pass ``timeout=None`` (no limit).
DEFAULT_TIMEOUT = 60.0

Params = Mapping[str, str | int | float | bool | list[str] | None]


class ServiceUnreachable(BackendError):
    """Nothing answers at the socket (absent, refused, or the connection broke)."""


class APIError(BackendError):
    """The service answered with an error status; ``message`` is podman's own explanation."""

    def __init__(self, status: int, message: str, what: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"podman {what}: {message} (HTTP {status})")

    @property
    def gone(self) -> bool:
        """The container no longer exists. podman 4.3 says so with a 404, or, when it is removed while the
        request runs, with a 500 "no such container"."""
        return self.status == 404 or "no such container" in self.message


def socket_path(url: str) -> str | None:
    """The filesystem path of a ``unix://`` URL (also HySDS's ``unix:/path`` and a bare path), else None."""
    if url.startswith("/"):
        return url
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "unix":
        return None
    return (parsed.netloc + parsed.path) or None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _encode_params(params: Params | None) -> str:
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip()[:500] or "no message"
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("cause") or doc)
    return str(doc)


class PodmanAPI:
    """``url``: ``unix:///run/user/1000/podman/podman.sock`` (or ``unix:/...``, a bare path), ``tcp://h:p``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._path = socket_path(url)
        if self._path is None:
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme not in ("tcp", "http") or not parsed.hostname:
                raise BackendError(
                    f"unsupported podman service URL {url!r}: use unix:///path/podman.sock or tcp://host:port"
                )
            self._host, self._port = parsed.hostname, parsed.port or 8080

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._path is not None:
            return _UnixConnection(self._path, timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def open(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        upload: IO[bytes] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        what: str = "",
    ) -> http.client.HTTPResponse:
        """Send one request; return the response (headers read, body not) or raise for an error status.

        ``body`` is sent as JSON; ``upload`` streams a binary file (image tarballs). ``timeout=None`` waits forever
        (``wait``, ``attach``, image loads). The caller reads and closes the response.
        """
        conn = self._connection(timeout)
        headers = {"Host": "d", "Connection": "close"}
        payload: Any = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif upload is not None:
            payload = upload
            headers["Content-Type"] = "application/x-tar"
            headers["Content-Length"] = str(os.fstat(upload.fileno()).st_size)
        url = f"{API_PREFIX}{path}{_encode_params(params)}"
        what = what or f"{method} {path}"
        try:
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ServiceUnreachable(f"podman service at {self.url} is not answering ({what}): {exc}") from None
        if resp.status >= 400:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            conn.close()
            raise APIError(resp.status, _error_message(data), what)
        return resp

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request with a small JSON (or empty) answer, decoded."""
        resp = self.open(method, path, **kwargs)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceUnreachable(f"podman service at {self.url} broke off {method} {path}: {exc}") from None
        finally:
            resp.close()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            self.call("GET", "/_ping", timeout=timeout)
        except BackendError:
            return False
        return True
