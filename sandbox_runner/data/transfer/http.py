"""``http(s)://`` through httpx: streamed, hashed on the way, retried with backoff, resumed with ``Range``.

A broken connection (a proxy timing out, a reset) costs only the bytes not yet received: the next attempt asks
for ``Range: bytes=<have>-`` with ``If-Range`` set to the object's validator, so a changed object restarts from
zero instead of splicing two versions. Attempts that made progress do not count against the retry budget.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from pathlib import Path

import httpcore._sync.http11 as _h11
import httpx

from sandbox_runner import __version__
from sandbox_runner.data.transfer.base import (
    Cancelled,
    FetchResult,
    FileSink,
    OnBytes,
    RemoteInfo,
    backoff_delay,
    wait_or_cancel,
)
from sandbox_runner.errors import TransferError
from sandbox_runner.redact import redact_url
from sandbox_runner.settings import Settings

# httpcore reads 64 KiB per recv(); every read runs through h11's Python state machine, which caps a single
# stream at a few hundred MiB/s. 1 MiB reads cut that per-byte overhead ~4x (only ever raised, never lowered).
# A private attribute: a future httpcore without it is slower, not broken.
with contextlib.suppress(AttributeError):
    _h11.HTTP11Connection.READ_NUM_BYTES = max(_h11.HTTP11Connection.READ_NUM_BYTES, 1 << 20)

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Retry(Exception):
    """A transient failure: worth another attempt after a backoff."""


def make_client(settings: Settings) -> httpx.Client:
    auth: httpx.Auth | None = None
    netrc = Path(settings.env.get("NETRC") or Path(settings.env.get("HOME") or "/nonexistent") / ".netrc")
    if netrc.is_file():
        # Earthdata-style sites: credentials per host from ~/.netrc (never from the URL we log)
        auth = httpx.NetRCAuth(str(netrc))
    return httpx.Client(
        timeout=httpx.Timeout(settings.transfer_timeout),
        follow_redirects=True,
        # proxies and CA bundles come from Settings, not from whatever environment the worker was started in
        trust_env=False,
        auth=auth,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=settings.transfer_concurrency * 2),
        # identity: we store the object's bytes, not a transfer encoding of them (digests must match)
        headers={"Accept-Encoding": "identity", "User-Agent": f"sandbox-runner/{__version__}"},
    )


def _validator(resp: httpx.Response) -> str | None:
    etag = resp.headers.get("etag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return resp.headers.get("last-modified")


def _total(resp: httpx.Response) -> int | None:
    crange = resp.headers.get("content-range", "")
    if "/" in crange and not crange.endswith("/*"):
        return int(crange.rsplit("/", 1)[1])
    length = resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _range_start(resp: httpx.Response) -> int | None:
    crange = resp.headers.get("content-range", "")
    try:
        return int(crange.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


class HttpTransport:
    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings)

    def close(self) -> None:
        self.client.close()

    def _auth(self, url: str) -> httpx.Auth | httpx._client.UseClientDefault:
        # credentials in the URL win over ~/.netrc (httpx would otherwise prefer the client's auth)
        parsed = httpx.URL(url)
        if parsed.userinfo:
            return httpx.BasicAuth(parsed.username, parsed.password)
        return httpx.USE_CLIENT_DEFAULT

    def stat(self, url: str) -> RemoteInfo | None:
        try:
            resp = self.client.head(url, auth=self._auth(url))
        except httpx.HTTPError as exc:
            raise TransferError(f"HEAD {redact_url(url)} failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (404, 410):
            return None
        if resp.status_code >= 400:
            raise TransferError(f"HEAD {redact_url(url)}: HTTP {resp.status_code}")
        return RemoteInfo(size=_total(resp), etag=resp.headers.get("etag"),
                          modified=resp.headers.get("last-modified"))

    def fetch(self, url: str, dest: Path, *, algos: Iterable[str] = (), expected: dict[str, str] | None = None,
              on_bytes: OnBytes | None = None, cancel: threading.Event | None = None) -> FetchResult:
        sink = FileSink(dest, algos)
        try:
            info = self._download(url, sink, on_bytes, cancel)
        except BaseException:
            sink.discard()
            raise
        sink.close()
        return FetchResult(size=sink.size, digests=sink.digests.hexdigests(expected), info=info)

    def _download(self, url: str, sink: FileSink, on_bytes: OnBytes | None,
                  cancel: threading.Event | None) -> RemoteInfo:
        shown = redact_url(url)
        failures = 0
        validator: list[str | None] = [None]  # the object's validator, learnt by the first response
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"download of {shown} cancelled")
            before = sink.size
            try:
                info = self._attempt(url, sink, validator, on_bytes, cancel)
                if info.size is not None and sink.size != info.size:
                    raise _Retry(f"got {sink.size} of {info.size} bytes")
                return info
            except (_Retry, httpx.TransportError) as exc:
                if isinstance(exc, httpx.UnsupportedProtocol):
                    raise TransferError(f"GET {shown}: {exc}") from None
                failures = 0 if sink.size > before else failures + 1  # progress resets the budget
                if failures > self.settings.transfer_retries:
                    raise TransferError(f"GET {shown} failed after {failures} attempts without progress "
                                        f"({sink.size} bytes received): {type(exc).__name__}: {exc}") from None
                wait_or_cancel(backoff_delay(max(failures, 1), self.settings.transfer_backoff), cancel)

    def _attempt(self, url: str, sink: FileSink, validator: list[str | None], on_bytes: OnBytes | None,
                 cancel: threading.Event | None) -> RemoteInfo:
        headers = {}
        if sink.size:
            headers["Range"] = f"bytes={sink.size}-"
            if validator[0]:
                headers["If-Range"] = validator[0]
        with self.client.stream("GET", url, headers=headers, auth=self._auth(url)) as resp:
            status = resp.status_code
            if status in RETRY_STATUS:
                raise _Retry(f"HTTP {status}")
            if status == 416 and sink.size:
                # the object shrank under us: forget what we have and start over
                self._restart(sink, on_bytes)
                raise _Retry("range not satisfiable")
            if status not in (200, 206):
                raise TransferError(f"GET {redact_url(url)}: HTTP {status} {resp.reason_phrase}".rstrip())
            if status == 200 or _range_start(resp) != sink.size:
                # no resume (server ignores Range, or the object changed under If-Range): start over
                self._restart(sink, on_bytes)
            info = RemoteInfo(size=_total(resp), etag=resp.headers.get("etag"),
                              modified=resp.headers.get("last-modified"))
            validator[0] = _validator(resp)
            for chunk in resp.iter_raw():
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"download of {redact_url(url)} cancelled")
                sink.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return info

    @staticmethod
    def _restart(sink: FileSink, on_bytes: OnBytes | None) -> None:
        if on_bytes is not None and sink.size:
            on_bytes(-sink.size)
        sink.truncate()
