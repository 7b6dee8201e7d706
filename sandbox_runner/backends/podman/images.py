"""Make sure a job's image is in the worker's podman storage: local -> tarball load under a lock -> pull.

HySDS's ``ensure_image_loaded`` marks a load in progress with an ``atomic_write``-n lock file that a crashed worker
leaves behind (the next job then waits 600 s). Here the lock is ``fcntl.flock`` on
``<cache_dir>/<name>.load.lock``: the kernel drops it when its holder dies, and a second job (thread or process)
that wanted the same image blocks on it, then finds the image present and loads nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.backends.podman.api import APIError, PodmanAPI
from sandbox_runner.errors import BackendError, ImageError

__all__ = ["ensure_image", "image_id"]

log = structlog.get_logger("sandbox_runner.images")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/:@")


def image_id(client: PodmanAPI, name: str) -> str | None:
    """The id of the local image ``name``, or None when there is none (one inspect call)."""
    try:
        doc = client.call("GET", f"/images/{_quote(name)}/json")
    except APIError as exc:
        if exc.status == 404:
            return None
        raise
    return str(doc["Id"])


def _split(name: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); the tag is what follows the last ``:`` after the last ``/``."""
    if "@" in name:
        raise ImageError(f"image '{name}' is named by digest and cannot be given that name after a load")
    head, _, last = name.rpartition("/")
    repo, sep, tag = last.partition(":")
    return (f"{head}/{repo}" if head else repo), (tag if sep else "latest")


def _fetch(url: str, cache_dir: Path) -> tuple[Path, bool]:
    """The local tarball for ``url`` and whether it is our download (deleted after the load, like HySDS)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url)
        if not path.is_file():
            raise ImageError(f"container_image_url {url} does not name a readable file")
        return path, False
    if parsed.scheme not in ("http", "https"):
        raise ImageError(f"container_image_url {url}: only file://, plain paths and http(s):// are supported")
    import httpx  # lazily: only jobs whose image must be downloaded pay for it

    target = cache_dir / (os.path.basename(parsed.path) or "image.tar")
    part = target.with_name(target.name + ".part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as resp:
            resp.raise_for_status()
            with open(part, "wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
        part.replace(target)
    except (httpx.HTTPError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise ImageError(f"could not download container_image_url {url}: {exc}") from None
    return target, True


def _load(client: PodmanAPI, name: str, url: str, cache_dir: Path) -> str:
    tarball, downloaded = _fetch(url, cache_dir)
    try:
        with open(tarball, "rb") as data:
            doc: Any = client.call("POST", "/images/load", upload=data, timeout=None, what=f"load {tarball}")
    except OSError as exc:
        raise ImageError(f"could not read image tarball {tarball}: {exc.strerror}") from None
    except BackendError as exc:
        raise ImageError(f"image '{name}' could not be loaded from {url}: {exc}") from None
    finally:
        if downloaded:
            tarball.unlink(missing_ok=True)
    names = list((doc or {}).get("Names") or [])
    log.info("image-loaded", image=name, url=url, tags=names)
    found = image_id(client, name)
    if found is None and names:
        # the tarball carries another tag (or none): give the image the name the job asked for
        repo, tag = _split(name)
        client.call("POST", f"/images/{_quote(names[0])}/tag", params={"repo": repo, "tag": tag})
        found = image_id(client, name)
    if found is None:
        raise ImageError(f"loaded {url}, but it did not provide image '{name}' (it holds {names or 'no tags'})")
    return found


def _pull(client: PodmanAPI, name: str) -> str:
    # libpod streams JSON progress lines and reports failures in-band ({"error": ...}) after a 200
    resp = client.open("POST", "/images/pull", params={"reference": name, "quiet": True}, timeout=None)
    error = ""
    try:
        for line in resp:
            text = line.decode("utf-8", "replace").strip()
            if '"error"' in text:
                error = str(json.loads(text).get("error") or text)
    finally:
        resp.close()
    found = image_id(client, name)
    if found is None:
        raise ImageError(error or "the pull finished but the image is still not there")
    return found


def ensure_image(client: PodmanAPI, name: str, url: str | None, cache_dir: Path, *, pull: bool = True) -> str:
    """Return the id of image ``name``, loading it from ``url`` or pulling it first if it is not present."""
    found = image_id(client, name)
    if found is not None:
        return found
    if url:
        lock_path = cache_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".load.lock")
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ImageError(f"image cache {cache_dir} is not usable: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # a concurrent loader of the same image finishes first
            return image_id(client, name) or _load(client, name, url, cache_dir)
        finally:
            os.close(lock_fd)  # releases the lock; the file stays (unlinking it would race the next locker)
    reason = "pulling is disabled for this worker"
    if pull:
        try:
            return _pull(client, name)
        except (ImageError, APIError) as exc:
            reason = exc.message if isinstance(exc, APIError) else str(exc)
    raise ImageError(
        f"image '{name}' is not present locally, has no container_image_url, and could not be pulled: {reason}"
    )
