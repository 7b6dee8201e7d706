#!/usr/bin/env python3
"""publish_datasets against ``cp -r``, in one run: one 1 GiB dataset to a ``file://`` location.

sandbox_runner stages into a hidden sibling dir, copies in-kernel (``copy_file_range``, a reflink where the
filesystem has them), and commits with one ``renameat2``; ``cp -r`` copies straight into place. Both write to
the same filesystem; trials alternate. Target: at least 0.9x cp.

    .venv/bin/python benchmarks/publish.py [--size-mib 1024] [--trials 5] [--dir /var/tmp/...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from _data import MiB, interleaved, machine, make_ctx, payload_file

from sandbox_runner.data.publish.steps import publish_datasets
from sandbox_runner.job.steps.base import JobContext
from sandbox_runner.models import load_datasets_config

PROD = "BENCH_20240101"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where to put data (default: a temp dir in /var/tmp)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="sr-bench-publish-", dir="/var/tmp"))
    print(f"machine: {machine()}; data under {base}")
    src, dest = base / "src" / PROD, base / "dest"
    src.mkdir(parents=True, exist_ok=True)
    payload_file(src / "granule.bin", args.size_mib * MiB)
    (src / f"{PROD}.dataset.json").write_text(json.dumps({"version": "v1"}))
    work = base / "work"
    cfg = load_datasets_config({"datasets": [{
        "ipath": "hysds::data/bench", "level": "l0", "type": "bench", "match_pattern": r"/(?P<id>BENCH_\d+)$",
        "publish": {"location": f"file://{dest}/ours/{{id}}"}}]})

    ready: list[JobContext] = []

    def prepare() -> None:
        """A job dir holding the product, as the job left it: set up outside the timed part."""
        ctx = make_ctx(work)
        ctx.datasets_cfg = cfg
        shutil.copytree(src, ctx.job_dir / PROD, copy_function=_hardlink)
        ready.append(ctx)

    def ours() -> None:
        publish_datasets(ready.pop())
        assert (dest / "ours" / PROD / "granule.bin").stat().st_size == args.size_mib * MiB

    def cp() -> None:
        (dest / "cp").mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-r", str(src), str(dest / "cp" / PROD)], check=True)

    def cleanup() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        if not ready:
            shutil.rmtree(work, ignore_errors=True)
            prepare()

    prepare()
    try:
        print(f"  {args.size_mib} MiB dataset to file://, {args.trials} trials each (seconds):")
        med = interleaved(args.trials, {"cp -r": cp, "publish_datasets": ours}, cleanup)
        ratio = med["cp -r"] / med["publish_datasets"]
        print(f"     cp {args.size_mib / med['cp -r']:.0f} MiB/s, publish_datasets "
              f"{args.size_mib / med['publish_datasets']:.0f} MiB/s -> {ratio:.2f}x cp (target >= 0.9x)")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


def _hardlink(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


if __name__ == "__main__":
    main()
