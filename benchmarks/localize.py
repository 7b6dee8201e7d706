#!/usr/bin/env python3
"""localize_urls against baselines, in one run, over loopback HTTP (the server is a separate process).

1. Throughput: one 1 GiB file with a ``.sha256`` sidecar (so the digest is computed and checked on the way in),
   through the real ``localize_urls`` step, against ``curl -o`` of the same URL into the same filesystem.
   Target: at least 0.9x curl.
2. Many small files: 200 files of 64 KiB with ``transfer_concurrency`` 8 against the same step one at a time
   (``transfer_concurrency=1``), with the server answering after ``--latency`` seconds (a WAN round trip;
   on pure loopback a 2-core machine is CPU-bound either way, so that figure is printed too). Target: 3x.

    .venv/bin/python benchmarks/localize.py [--size-mib 1024] [--trials 3] [--dir /var/tmp/...]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from _data import MiB, ServerProcess, interleaved, machine, make_ctx, payload_file

from sandbox_runner.data.localize.steps import localize_urls


def throughput(base: Path, size_mib: int, trials: int) -> float:
    www = base / "www"
    www.mkdir(parents=True, exist_ok=True)
    big = www / "big.bin"
    payload_file(big, size_mib * MiB)
    h = hashlib.sha256()
    with big.open("rb") as fh:
        while chunk := fh.read(16 * MiB):
            h.update(chunk)
    (www / "big.bin.sha256").write_text(f"{h.hexdigest()}  big.bin\n")
    work, out = base / "work", base / "curl-out"
    out.mkdir(exist_ok=True)
    server = ServerProcess(www)
    url = f"{server.url}/big.bin"
    try:
        def ours() -> None:
            ctx = make_ctx(work, [{"url": url + ".sha256", "cache": False}, {"url": url, "cache": False}])
            localize_urls(ctx)
            assert (ctx.job_dir / "big.bin").stat().st_size == size_mib * MiB

        def curl() -> None:
            subprocess.run(["curl", "-sS", "--fail", "-o", str(out / "big.bin"), url], check=True)

        def cleanup() -> None:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        print(f"  1. {size_mib} MiB over loopback HTTP, {trials} trials each (seconds):")
        med = interleaved(trials, {"curl -o": curl, "localize_urls + sha256": ours}, cleanup)
    finally:
        server.close()
    curl_t, ours_t = med["curl -o"], med["localize_urls + sha256"]
    ratio = curl_t / ours_t
    print(f"     curl {size_mib / curl_t:.0f} MiB/s, localize_urls {size_mib / ours_t:.0f} MiB/s with sha256 "
          f"-> {ratio:.2f}x curl (target >= 0.9x)")
    return ratio


def many_small(base: Path, count: int, latency: float, trials: int) -> float:
    www = base / "small"
    www.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        payload_file(www / f"f{i:03d}.dat", 64 * 1024)
    work = base / "work-small"
    server = ServerProcess(www, delay=latency)
    try:
        items = [{"url": f"{server.url}/f{i:03d}.dat", "local_path": "in/", "cache": False} for i in range(count)]

        def run(concurrency: int) -> None:
            ctx = make_ctx(work, items, SANDBOX_RUNNER_TRANSFER_CONCURRENCY=str(concurrency))
            localize_urls(ctx)
            assert len(list((ctx.job_dir / "in").iterdir())) == count

        def cleanup() -> None:
            shutil.rmtree(work, ignore_errors=True)

        print(f"  2. {count} files of 64 KiB, server latency {latency * 1000:.0f} ms, {trials} trials each:")
        med = interleaved(trials, {"one at a time (concurrency 1)": lambda: run(1),
                                   "parallel (concurrency 8)": lambda: run(8)}, cleanup)
    finally:
        server.close()
    ratio = med["one at a time (concurrency 1)"] / med["parallel (concurrency 8)"]
    print(f"     parallel is {ratio:.1f}x one-at-a-time (target >= 3x)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--dir", type=Path, default=None, help="where to put data (default: a temp dir in /var/tmp)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="sr-bench-localize-", dir="/var/tmp"))
    print(f"machine: {machine()}; data under {base}")
    try:
        throughput(base, args.size_mib, args.trials)
        many_small(base, args.files, args.latency, args.trials)
        many_small(base, args.files, 0.0, args.trials)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
