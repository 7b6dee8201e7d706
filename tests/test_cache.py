"""The localize cache's scrubber side: entries, last use, eviction that never hurts a job, self-healing."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from support.servers import FileServer

from sandbox_runner.data.localize.cache import Cache, url_key
from sandbox_runner.data.localize.steps import localize_urls
from sandbox_runner.fspolicy.cache import lru_order, open_cache


def _fill(make_ctx, http: FileServer, names: list[str]):  # type: ignore[no-untyped-def]
    urls = [http.put_file(n, os.urandom(50_000)) for n in names]
    ctx = make_ctx([{"url": u} for u in urls])
    localize_urls(ctx)
    return ctx, urls, Cache(ctx.work_root / "cache")


def test_entries_last_use_and_lru_order(make_ctx, http: FileServer) -> None:
    ctx, urls, cache = _fill(make_ctx, http, ["a.bin", "b.bin", "c.bin"])
    entries = dict(cache.entries())
    assert len(entries) == 3 and all(Path(k).name == url_key(u) for k, u in zip(sorted(entries), sorted(
        urls, key=lambda u: str(cache.entry_dir(url_key(u)))), strict=True))
    old = time.time() - 3600
    for key in entries:
        os.utime(Path(key) / ".localized", (old, old))
    time.sleep(0.01)
    again = make_ctx([{"url": urls[1]}])  # a hit: b becomes the most recently used
    localize_urls(again)
    order = [k for k, _ in lru_order(cache)]
    assert order[-1] == str(cache.entry_dir(url_key(urls[1])))
    assert http.count("GET", "b.bin") == 1  # the hit did not download again
    # the scrubber opens the same cache
    assert sorted(k for k, _ in open_cache(str(ctx.work_root)).entries()) == sorted(entries)


def test_evict_never_while_held_or_linked(make_ctx, http: FileServer) -> None:
    ctx, urls, cache = _fill(make_ctx, http, ["x.bin"])
    key = str(cache.entry_dir(url_key(urls[0])))
    assert cache.evict(key) == 0 and Path(key).exists()  # the job dir still links its files
    assert cache.size() < 50_000  # linked bytes belong to the job, not to the cache cap (metadata does)
    shutil.rmtree(ctx.job_dir)
    assert cache.size() > 0
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with cache.hold(urls[0]):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    assert cache.evict(key) == 0 and Path(key).exists()  # a job is filling or linking it right now
    release.set()
    t.join()
    freed = cache.evict(key)
    assert freed >= 50_000 and not Path(key).exists() and list(cache.entries()) == []
    assert not (cache.root / ".locks" / f"{url_key(urls[0])}.lock").exists()
    fresh = make_ctx([{"url": urls[0]}])
    localize_urls(fresh)  # evicted: downloaded again
    assert http.count("GET", "x.bin") == 2


def test_bad_keys_are_not_evicted(make_ctx, http: FileServer, tmp_path: Path) -> None:
    _ctx, _urls, cache = _fill(make_ctx, http, ["y.bin"])
    outside = tmp_path / "precious"
    outside.mkdir()
    assert cache.evict(str(outside)) == 0 and outside.exists()
    assert cache.evict(str(cache.root / ".." / "jobs")) == 0


def test_damaged_entry_and_crash_leftovers_heal(make_ctx, http: FileServer) -> None:
    _ctx, urls, cache = _fill(make_ctx, http, ["z.bin"])
    entry = cache.entry_dir(url_key(urls[0]))
    data = entry / "z.bin"
    os.chmod(data, 0o644)
    size = data.stat().st_size
    with data.open("r+b") as fh:  # someone wrote into the shared copy, same size
        fh.write(b"garbage")
    assert data.stat().st_size == size
    leftover = cache.root / ".tmp" / f"{url_key(urls[0])}.deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "z.bin").write_bytes(b"half a download from a crashed job")
    again = make_ctx([{"url": urls[0]}])
    localize_urls(again)
    assert http.count("GET", "z.bin") == 2
    assert (again.job_dir / "z.bin").read_bytes() == (http.root / "z.bin").read_bytes()
    assert not leftover.exists()
