#!/usr/bin/env python3
"""Scrubbing 10,000 job dirs: the ladder against HySDS's cleanup, in the same run, on the same kind of tree.

Each run builds a fresh HySDS work root (``jobs/YYYY/MM/DD/HH/MI/<id>/`` with ``.done``/``.running``,
``_exit_code``, ``_context.json``, ``_job.json``, ``_stdout.txt`` and a 16 KiB product; 10 jobs a minute; one in
20 running with its lock held, one in 20 crashed, one in 10 failed, the rest succeeded), asks to free the bytes
of a quarter of the dirs, and measures

* ours: ``Scrubber.ladder`` (decide + quarantine by rename, then purge), split at the last quarantine;
* baseline: HySDS ``cleanup_old_jobs`` as it is (``os.walk(followlinks=True)``, ``dirs.sort()``, a dir with
  ``.done``/``_context.json``/``_job.json`` and exit code 0 is ``rmtree``'d, free space re-read after each);

time without tracing, then peak Python memory (tracemalloc) in a second run on a fresh tree. Finally the peak
memory of our decide + quarantine phase for several tree sizes with the same amount to free, where the
scrubbable dirs are the newest (so the walk has to look at every dir): flat means it does not grow with the tree.
Runs on a tmpfs when it can mount one (root), else under $TMPDIR.

    .venv/bin/python benchmarks/scrub.py [--dirs 10000] [--scales 2500,10000,40000]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sandbox_runner.fspolicy import FsPolicy  # noqa: E402
from sandbox_runner.fspolicy.ladder import Scrubber  # noqa: E402
from sandbox_runner.fspolicy.report import Action  # noqa: E402
from sandbox_runner.workroot import WorkRoot  # noqa: E402

T0 = 1735689600.0  # 2025-01-01T00:00Z
PRODUCT = b"p" * 16384
CONTEXT = json.dumps({"context": {"k": "v" * 800}}).encode()
JOB = json.dumps({"job_info": {"x": "y" * 1800}}).encode()
POLICY = FsPolicy(order=("succeeded", "failed", "quarantine"), crashed_grace=3600, failed_retention=3 * 86400)


@contextlib.contextmanager
def scratch() -> Iterator[tuple[Path, str]]:
    base = Path(tempfile.mkdtemp(prefix="scrub-bench-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,nr_inodes=1000000", "tmpfs", str(base)],
                             capture_output=True).returncode == 0
    try:
        yield base, "tmpfs" if mounted else f"{base} (no tmpfs: not root)"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def build(root: Path, n: int, locks: list[int], newest_scrubbable: int | None = None) -> int:
    """n job dirs; returns the bytes one succeeded dir occupies. ``newest_scrubbable``: only the newest that many
    dirs succeeded, every older one failed recently (kept by retention), so a scrub must walk the whole tree."""
    now = time.time()
    for i in range(n):
        path = WorkRoot(root).job_dir(f"job-{i:06d}", T0 + 60 * (i // 10))
        path.mkdir(parents=True)
        for name, data in (("_context.json", CONTEXT), ("_job.json", JOB), ("_stdout.txt", b"ok\n"),
                           ("product.dat", PRODUCT)):
            (path / name).write_bytes(data)
        if newest_scrubbable is not None:
            state = "succeeded" if i >= n - newest_scrubbable else "young-failed"
        else:
            state = {0: "running", 1: "crashed"}.get(i % 20) or ("failed" if i % 10 == 2 else "succeeded")
        if state in ("running", "crashed"):
            fd = os.open(path / ".running", os.O_RDWR | os.O_CREAT, 0o644)
            if state == "running":
                fcntl.flock(fd, fcntl.LOCK_EX)
                locks.append(fd)
            else:
                os.close(fd)
            continue
        (path / "_exit_code").write_bytes(b"0\n" if state == "succeeded" else b"1\n")
        (path / ".done").write_bytes(b"2025-01-01T00:00:00Z")
        age = 3600 if state == "young-failed" else 30 * 86400
        os.utime(path / ".done", (now - age, now - age))
    sample = WorkRoot(root).job_dir(f"job-{n - 1:06d}", T0 + 60 * ((n - 1) // 10))
    return sum(p.lstat().st_blocks * 512 for p in sample.iterdir()) + sample.lstat().st_blocks * 512


def free(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


def ours(root: Path, to_free: int) -> dict[str, float]:
    want = free(root) + to_free
    marks: dict[str, float] = {}

    def seen(action: Action) -> None:
        if action.kind == "quarantine":
            marks["quarantined"] = time.perf_counter()
            marks["n"] = marks.get("n", 0) + 1

    t0 = time.perf_counter()
    scrubber = Scrubber(root, POLICY, on_action=seen)
    ok = scrubber.ladder(want, 0)
    t1 = time.perf_counter()
    assert ok, "the ladder should free enough"
    return {"decide+quarantine": marks["quarantined"] - t0, "purge": t1 - marks["quarantined"], "total": t1 - t0,
            "dirs": marks["n"]}


def hysds_cleanup(root: Path, to_free: int) -> dict[str, float]:
    """hysds/utils.py cleanup_old_jobs(zero_status_only=True), with the percent threshold as a byte target."""
    want = free(root) + to_free
    n = 0
    t0 = time.perf_counter()
    for dirpath, dirs, files in os.walk(root / "jobs", followlinks=True):
        dirs.sort()
        if ".done" not in files or "_context.json" not in files or "_job.json" not in files:
            continue
        with open(os.path.join(dirpath, "_exit_code")) as fh:
            if int(fh.read()) != 0:
                continue
        shutil.rmtree(dirpath, ignore_errors=True)
        n += 1
        if free(root) >= want:
            break
    t1 = time.perf_counter()
    return {"total": t1 - t0, "dirs": n}


def run(label: str, fn: Callable[[Path, int], dict[str, float]], n: int, base: Path, traced: bool,
        newest_scrubbable: int | None = None, quarter: bool = True) -> dict[str, float]:
    root = base / f"{label}-{n}-{int(traced)}-{time.monotonic_ns()}"
    locks: list[int] = []
    try:
        per_dir = build(root, n, locks, newest_scrubbable)
        to_free = per_dir * (n // 4 if quarter else (newest_scrubbable or 0) // 2)
        if traced:
            tracemalloc.start()
            result = fn(root, to_free)
            result["peak_kib"] = tracemalloc.get_traced_memory()[1] / 1024
            tracemalloc.stop()
        else:
            result = fn(root, to_free)
        result["to_free_mib"] = to_free / 2**20
        return result
    finally:
        for fd in locks:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", type=int, default=10000)
    ap.add_argument("--scales", default="2500,10000,40000")
    args = ap.parse_args()
    with scratch() as (base, where):
        print(f"scrub benchmark on {where}; {args.dirs} job dirs, freeing the bytes of a quarter of them")
        for label, fn in (("ours", ours), ("hysds", hysds_cleanup)):
            timing = run(label, fn, args.dirs, base, traced=False)
            memory = run(label, fn, args.dirs, base, traced=True)
            parts = ", ".join(f"{k} {v:.3f} s" for k, v in timing.items() if k not in ("dirs", "to_free_mib"))
            print(f"  {label:<6} {int(timing['dirs'])} dirs removed ({timing['to_free_mib']:.1f} MiB): {parts}; "
                  f"peak Python memory {memory['peak_kib']:.0f} KiB")
        print("decide + quarantine vs tree size (only the 500 newest dirs scrubbable; 250 dirs' worth to free):")
        for n in (int(x) for x in args.scales.split(",")):
            timing = run("ours", ours, n, base, traced=False, newest_scrubbable=500, quarter=False)
            memory = run("ours", ours, n, base, traced=True, newest_scrubbable=500, quarter=False)
            print(f"  {n:>6} dirs: decide+quarantine {timing['decide+quarantine']:.3f} s "
                  f"({int(timing['dirs'])} dirs), peak Python memory {memory['peak_kib']:.0f} KiB")


if __name__ == "__main__":
    main()
