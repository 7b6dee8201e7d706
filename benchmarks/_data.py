"""Shared by benchmarks/localize.py and benchmarks/publish.py: a job context, a loopback server process, timing.

The HTTP server runs in its own process (tests/support/servers.py's FileServer, sendfile for bodies), so neither the
baseline nor sandbox_runner shares an interpreter with it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sandbox_runner.events import Emitter, MemorySink  # noqa: E402
from sandbox_runner.job.steps.base import JobContext  # noqa: E402
from sandbox_runner.job.workdir import WorkDir  # noqa: E402
from sandbox_runner.settings import load_settings  # noqa: E402

MiB = 1 << 20

_SERVE = """
import sys, time
sys.path[:0] = [sys.argv[1]]
from pathlib import Path
from support.servers import FileServer
server = FileServer(Path(sys.argv[2]))
server.faults.delay = float(sys.argv[3])
print(server.url, flush=True)
server.serve_forever(poll_interval=0.05)
"""


class ServerProcess:
    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(REPO / "tests"), str(root), str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def make_ctx(work_root: Path, localize_urls: list[dict[str, Any]] | None = None, **env: str) -> JobContext:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(work_root), "SANDBOX_RUNNER_PROGRESS": "never",
                              "HOME": str(work_root), **env}, min_free_percent=0.0)
    jid = f"bench-{uuid.uuid4().hex[:10]}"
    job = {"job_id": jid, "task_id": jid, "type": "bench", "localize_urls": localize_urls or [],
           "job_info": {"id": jid, "status": 0, "job_payload": {"payload_task_id": jid},
                        "metrics": {"inputs_localized": [], "products_staged": []}}}
    ctx = JobContext(job=job, settings=settings, emitter=Emitter(MemorySink(), hostname="bench"))
    ctx.work_root = work_root
    ctx.workdir = WorkDir.create(work_root, jid)
    ctx.context = {"_prov": {}}
    return ctx


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(trials: int, runs: dict[str, Callable[[], object]], cleanup: Callable[[], None]) -> dict[str, float]:
    """Median seconds per named run, alternating the runs trial by trial so machine drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(trials):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(timed(runs[name]))
            cleanup()
    for name, ts in times.items():
        print(f"    {name:<34} " + " ".join(f"{t:6.2f}s" for t in ts), flush=True)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    cpus = os.cpu_count()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "?"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{cpus} CPUs ({model}), load average {' '.join(load)}"


def payload_file(path: Path, size: int) -> None:
    """Incompressible bytes (a checksum must see every byte)."""
    if path.exists() and path.stat().st_size == size:
        return
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 16 * MiB)
            fh.write(os.urandom(n))
            left -= n
