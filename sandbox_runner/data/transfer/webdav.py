"""The WebDAV verbs publish needs over ``http(s)://`` (and osaka's ``dav(s)://``): PUT, MKCOL, MOVE, DELETE.

MOVE with ``Overwrite: F`` is what makes a publish atomic and no-clobber on a DAV server: files go to a hidden
staging collection, then one MOVE puts the whole dataset in place or fails with 412 if something is there.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx

from sandbox_runner.data.transfer.base import backoff_delay, wait_or_cancel
from sandbox_runner.data.transfer.http import RETRY_STATUS, make_client
from sandbox_runner.errors import TransferError
from sandbox_runner.redact import redact_url
from sandbox_runner.settings import Settings


def http_url(url: str) -> str:
    """``dav://`` -> ``http://``, ``davs://`` -> ``https://`` (osaka's names for the same thing)."""
    scheme, rest = url.split("://", 1)
    return {"dav": "http", "davs": "https"}.get(scheme, scheme) + "://" + rest


def child(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + urllib.parse.quote(name)


class WebDav:
    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings)

    def close(self) -> None:
        self.client.close()

    def _send(self, method: str, url: str, *, ok: tuple[int, ...], path: Path | None = None,
              headers: dict[str, str] | None = None) -> int:
        """One request, retried on transient failures; returns the status when it is in ``ok``."""
        url = http_url(url)
        attempt = 0
        while True:
            attempt += 1
            try:
                if path is not None:
                    with path.open("rb") as fh:
                        hdrs = {**(headers or {}), "Content-Length": str(path.stat().st_size)}
                        resp = self.client.request(method, url, content=fh, headers=hdrs)
                else:
                    resp = self.client.request(method, url, headers=headers)
                if resp.status_code in ok:
                    return resp.status_code
                if resp.status_code not in RETRY_STATUS:
                    raise TransferError(f"{method} {redact_url(url)}: HTTP {resp.status_code}")
                error = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt > self.settings.transfer_retries:
                raise TransferError(f"{method} {redact_url(url)} failed after {attempt} attempts: {error}")
            wait_or_cancel(backoff_delay(attempt, self.settings.transfer_backoff), None)

    def exists(self, url: str) -> bool:
        status = self._send("PROPFIND", url, ok=(200, 207, 404, 405, 501), headers={"Depth": "0"})
        if status in (405, 501):  # no PROPFIND (a plain PUT-capable server): fall back to HEAD
            status = self._send("HEAD", url, ok=(200, 204, 404, 403))
            return status in (200, 204)
        return status != 404

    def get_bytes(self, url: str, limit: int = 1 << 20) -> bytes | None:
        try:
            resp = self.client.get(http_url(url))
        except httpx.HTTPError:
            return None
        return resp.content[:limit] if resp.status_code == 200 else None

    def makedirs(self, url: str) -> None:
        """MKCOL ``url`` and any missing parents (405: it already exists)."""
        parts = urllib.parse.urlsplit(http_url(url))
        segments = [s for s in parts.path.split("/") if s]
        for i in range(1, len(segments) + 1):
            path = "/" + "/".join(segments[:i]) + "/"
            self._send("MKCOL", urllib.parse.urlunsplit(parts._replace(path=path)), ok=(200, 201, 405))

    def put(self, path: Path, url: str) -> None:
        self._send("PUT", url, ok=(200, 201, 204), path=path)

    def move(self, src: str, dst: str, *, overwrite: bool) -> bool:
        """MOVE ``src`` to ``dst``; False when ``dst`` exists and ``overwrite`` is off (412)."""
        status = self._send("MOVE", src, ok=(200, 201, 204, 412),
                            headers={"Destination": http_url(dst), "Overwrite": "T" if overwrite else "F"})
        return status != 412

    def delete(self, url: str) -> None:
        self._send("DELETE", url, ok=(200, 204, 404))
