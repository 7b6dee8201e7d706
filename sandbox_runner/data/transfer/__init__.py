"""Transports by URL scheme: ``http(s)`` (httpx), ``file`` (links and in-kernel copies), ``s3(s)`` (boto3 extra).

:class:`Transfers` makes each transport once per step (one httpx connection pool, one boto3 client per endpoint)
and closes them together; nothing here is imported until a URL of that scheme shows up.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

from sandbox_runner.data.transfer.base import FetchResult, RemoteInfo, Transport
from sandbox_runner.errors import TransferError
from sandbox_runner.redact import redact_url
from sandbox_runner.settings import Settings

__all__ = ["FetchResult", "RemoteInfo", "Transfers", "Transport", "scheme_of"]

HTTP = ("http", "https")
S3 = ("s3", "s3s")
DAV = ("dav", "davs")


def scheme_of(url: str) -> str:
    """The lower-cased scheme; a bare absolute path counts as ``file``."""
    if url.startswith("/"):
        return "file"
    return urllib.parse.urlsplit(url).scheme.lower()


class Transfers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Any] = {}
        self._lock = threading.RLock()  # dav is made from http, under the same lock

    def _get(self, kind: str) -> Any:
        with self._lock:
            if kind not in self._made:
                self._made[kind] = self._make(kind)
            return self._made[kind]

    def _make(self, kind: str) -> Any:
        if kind == "http":
            from sandbox_runner.data.transfer.http import HttpTransport

            return HttpTransport(self.settings)
        if kind == "file":
            from sandbox_runner.data.transfer.local import FileTransport

            return FileTransport()
        if kind == "dav":
            from sandbox_runner.data.transfer.webdav import WebDav

            return WebDav(self.settings, client=self._get("http").client)
        if kind.startswith("s3"):
            from sandbox_runner.data.transfer.s3 import S3Transport

            return S3Transport(self.settings, profile=kind.partition(":")[2] or None)
        raise AssertionError(kind)

    def transport(self, url: str) -> Transport:
        """The fetching transport for ``url``; TransferError for a scheme we do not speak."""
        scheme = scheme_of(url)
        if scheme in HTTP:
            return self._get("http")
        if scheme == "file":
            return self._get("file")
        if scheme in S3:
            return self._get("s3")
        raise TransferError(f"unsupported URL scheme {scheme!r} in {redact_url(url)} (http, https, file, s3)")

    def dav(self) -> Any:
        return self._get("dav")

    def s3(self, profile: str | None = None) -> Any:
        return self._get(f"s3:{profile}" if profile else "s3")

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, {}
        for kind, obj in made.items():
            if kind != "dav":  # shares the http client
                obj.close() if hasattr(obj, "close") else None
