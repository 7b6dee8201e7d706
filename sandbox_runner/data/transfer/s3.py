"""``s3://`` (and ``s3s://``) through boto3, an optional extra: ``pip install 'sandbox-runner[s3]'``.

URLs come in two shapes, as in HySDS/osaka: ``s3://bucket/key`` (AWS, or ``Settings.s3_endpoint_url``), and
``s3://host:port/bucket/key`` with the endpoint in the URL (``s3s://`` or port 443 for https). A key that is not an
object but a prefix of some is a directory. Credentials come from boto3's own chain (or a datasets.json
``s3-profile-name``); they never appear in a URL we log.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

_REGION = re.compile(r"s3[.-](?P<region>[a-z]{2}-[a-z]+-\d)\.amazonaws\.com$")


@dataclass(frozen=True)
class S3Url:
    endpoint: str | None
    region: str
    bucket: str
    key: str

    def at(self, key: str) -> S3Url:
        return S3Url(self.endpoint, self.region, self.bucket, key)


Target = str | S3Url  # a URL, or an already parsed one (publish builds keys under a prefix)


def _shown(target: Target) -> str:
    return redact_url(target) if isinstance(target, str) else f"s3://{target.bucket}/{target.key}"


def parse_s3(url: str, default_endpoint: str | None = None) -> S3Url:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("s3", "s3s") or not parts.netloc:
        raise TransferError(f"not an S3 URL: {redact_url(url)}")
    netloc, path = parts.netloc.rpartition("@")[2], urllib.parse.unquote(parts.path.lstrip("/"))
    if ":" in netloc or netloc.endswith("amazonaws.com"):
        host, _, port = netloc.partition(":")
        bucket, _, key = path.partition("/")
        match = _REGION.search(host)
        secure = parts.scheme == "s3s" or port == "443" or host.endswith("amazonaws.com")
        endpoint = f"{'https' if secure else 'http'}://{host}{'' if host.endswith('amazonaws.com') else ':' + port}"
        return S3Url(endpoint, match["region"] if match else "us-east-1", bucket, key)
    return S3Url(default_endpoint, "us-east-1", netloc, path)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise TransferError("s3:// URLs need boto3: install the 's3' extra (pip install 'sandbox-runner[s3]')") \
            from None
    return boto3


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3Transport:
    def __init__(self, settings: Settings, profile: str | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self._clients: dict[tuple[str | None, str], Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._clients.clear()

    def loc(self, target: Target) -> S3Url:
        return target if isinstance(target, S3Url) else parse_s3(target, self.settings.s3_endpoint_url)

    def client(self, loc: S3Url) -> Any:
        # boto3 sessions are not thread-safe to create; clients are safe to share once made
        with self._lock:
            key = (loc.endpoint, loc.region)
            if key not in self._clients:
                from botocore.config import Config

                session = _boto3().session.Session(profile_name=self.profile)
                self._clients[key] = session.client(
                    "s3", endpoint_url=loc.endpoint, region_name=loc.region,
                    config=Config(retries={"max_attempts": self.settings.transfer_retries + 1, "mode": "standard"},
                                  connect_timeout=self.settings.transfer_timeout,
                                  read_timeout=self.settings.transfer_timeout,
                                  max_pool_connections=max(10, self.settings.transfer_concurrency * 2)))
            return self._clients[key]

    # -- reads ---------------------------------------------------------------------------------------------------
    def keys(self, url: Target) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object under the prefix ``url`` + ``/``."""
        loc = self.loc(url)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        try:
            for page in self.client(loc).get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                                                   Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj["Size"])
        except Exception as exc:
            raise TransferError(f"cannot list {_shown(url)}: {_code(exc) or exc}") from None

    def stat(self, url: Target) -> RemoteInfo | None:
        loc = self.loc(url)
        try:
            head = self.client(loc).head_object(Bucket=loc.bucket, Key=loc.key)
            return RemoteInfo(size=int(head["ContentLength"]), etag=head.get("ETag"))
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise TransferError(f"cannot stat {_shown(url)}: {_code(exc) or exc}") from None
        for _ in self.keys(url):
            return RemoteInfo(is_dir=True)
        return None

    def get_bytes(self, url: Target) -> bytes | None:
        loc = self.loc(url)
        try:
            return bytes(self.client(loc).get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise TransferError(f"cannot read {_shown(url)}: {_code(exc) or exc}") from None

    def fetch(self, url: str, dest: Path, *, algos: Iterable[str] = (), expected: dict[str, str] | None = None,
              on_bytes: OnBytes | None = None, cancel: threading.Event | None = None) -> FetchResult:
        info = self.stat(url)
        if info is None:
            raise TransferError(f"{_shown(url)} does not exist")
        loc = self.loc(url)
        if info.is_dir:
            prefix, total = loc.key.rstrip("/") + "/", 0
            dest.mkdir()
            for key, _size in self.keys(url):
                target = dest / key[len(prefix):]
                if not target.resolve().is_relative_to(dest.resolve()):
                    continue  # a key like "a/../../x" must not write outside the destination
                target.parent.mkdir(parents=True, exist_ok=True)
                total += self._fetch_file(loc.at(key), target, (), None, on_bytes, cancel).size
            return FetchResult(size=total, info=info)
        return self._fetch_file(loc, dest, algos, expected, on_bytes, cancel, info)

    def _fetch_file(self, loc: S3Url, dest: Path, algos: Iterable[str], expected: dict[str, str] | None,
                    on_bytes: OnBytes | None, cancel: threading.Event | None,
                    info: RemoteInfo | None = None) -> FetchResult:
        sink = FileSink(dest, algos)
        try:
            info = self._download(loc, sink, info, on_bytes, cancel)
        except BaseException:
            sink.discard()
            raise
        sink.close()
        return FetchResult(size=sink.size, digests=sink.digests.hexdigests(expected), info=info)

    def _download(self, loc: S3Url, sink: FileSink, info: RemoteInfo | None, on_bytes: OnBytes | None,
                  cancel: threading.Event | None) -> RemoteInfo:
        client, failures = self.client(loc), 0
        shown = f"s3://{loc.bucket}/{loc.key}"
        while True:
            before = sink.size
            try:
                extra = {"Range": f"bytes={sink.size}-"} if sink.size else {}
                if sink.size and info is not None and info.etag:
                    extra["IfMatch"] = info.etag
                resp = client.get_object(Bucket=loc.bucket, Key=loc.key, **extra)
                if not sink.size:
                    info = RemoteInfo(size=int(resp["ContentLength"]), etag=resp.get("ETag"))
                for chunk in resp["Body"].iter_chunks(1 << 20):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"download of {shown} cancelled")
                    sink.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                assert info is not None
                if info.size is None or sink.size == info.size:
                    return info
                error = f"got {sink.size} of {info.size} bytes"
            except (Cancelled, AssertionError):
                raise
            except Exception as exc:  # botocore's stream/connection errors: retried with a ranged resume
                if _code(exc) == "PreconditionFailed":  # the object changed: start over
                    sink.truncate()
                elif _code(exc) in ("404", "NoSuchKey", "AccessDenied", "403"):
                    raise TransferError(f"GET {shown}: {_code(exc)}") from None
                error = f"{type(exc).__name__}: {exc}"
            failures = 0 if sink.size > before else failures + 1
            if failures > self.settings.transfer_retries:
                raise TransferError(f"GET {shown} failed after {failures} attempts: {error}")
            wait_or_cancel(backoff_delay(max(failures, 1), self.settings.transfer_backoff), cancel)

    # -- writes (publish) ----------------------------------------------------------------------------------------
    def put_file(self, path: Path, url: Target) -> None:
        loc = self.loc(url)
        try:
            self.client(loc).upload_file(str(path), loc.bucket, loc.key)
        except Exception as exc:
            raise TransferError(f"cannot upload {path.name} to {_shown(url)}: {_code(exc) or exc}") from None

    def put_bytes(self, data: bytes, url: Target, *, exclusive: bool = False) -> bool:
        """Write a small object; with ``exclusive``, False when it already exists (``If-None-Match: *``)."""
        loc = self.loc(url)
        extra = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self.client(loc).put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
            return True
        except Exception as exc:
            if exclusive and _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise TransferError(f"cannot write {_shown(url)}: {_code(exc) or exc}") from None

    def delete(self, urls: list[Target]) -> None:
        by_bucket: dict[tuple[str | None, str, str], list[str]] = {}
        for url in urls:
            loc = self.loc(url)
            by_bucket.setdefault((loc.endpoint, loc.region, loc.bucket), []).append(loc.key)
        for (endpoint, region, bucket), keys in by_bucket.items():
            client = self.client(S3Url(endpoint, region, bucket, ""))
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i:i + 1000]]
                try:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                except Exception as exc:
                    raise TransferError(f"cannot delete from s3 bucket {bucket}: {_code(exc) or exc}") from None
