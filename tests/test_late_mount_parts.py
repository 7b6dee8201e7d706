"""The parts the late-mount handling is built of, against real processes, sockets and mount namespaces: what a
process sees (``/proc/PID/root``), who owns a service (the record beside its socket), reaping a retired one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fsjobs import tmpfs
from support.machine import require

from sandbox_runner.backends.podman.mountns import (
    hidden_paths,
    owned_service,
    peer_pid,
    reap_retired,
    start_ticks,
    statfs_missing,
)

#: a process that listens on argv[1], accepts connections and holds them until the peer closes
SERVER = """
import socket, sys, threading
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
print("up", flush=True)
def hold(c):
    while c.recv(1): pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=hold, args=(c,), daemon=True).start()
"""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    sock = str(tmp_path / "svc.sock")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, sock], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    yield proc, sock
    proc.kill()
    proc.wait()


def test_statfs_missing_reads_podmans_message() -> None:
    msg = "statfs /scratch/jobs/2026/01/01/00/00/j1: no such file or directory"
    assert statfs_missing(msg) == "/scratch/jobs/2026/01/01/00/00/j1"
    assert statfs_missing("crun: executable file `x` not found") is None
    assert statfs_missing("statfs /x: permission denied") is None


def test_hidden_paths_compares_the_process_view_with_ours(tmp_path: Path) -> None:
    require(os.getuid() == 0 and shutil.which("unshare") is not None, "needs root for a mount namespace")
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir()
    late.mkdir()
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with tmpfs(late) as mnt:  # mounted after the process made its namespace
            (mnt / "job").mkdir()
            got = hidden_paths(proc.pid, [str(early), str(mnt), str(mnt / "job"), str(tmp_path / "absent")])
            # the mount point is a dir there too, but not this one (the job would write under the mount point)
            assert got == [str(mnt), str(mnt / "job")]
            assert hidden_paths(os.getpid(), [str(mnt / "job")]) == []
    finally:
        proc.kill()
        proc.wait()
    assert hidden_paths(proc.pid, [str(early)]) is None  # no such process: cannot tell


def _record(sock: str, pid: int, ticks: int | None) -> None:
    Path(f"{sock}.owner.json").write_text(json.dumps({"pid": pid, "start_ticks": ticks, "runtime_dir": None}))


def test_owned_only_when_the_record_names_the_live_listener(listener: tuple[subprocess.Popen[str], str],
                                                            tmp_path: Path) -> None:
    proc, sock = listener
    assert peer_pid(sock) == proc.pid
    assert owned_service(sock) is None  # no record: foreign
    _record(sock, proc.pid, start_ticks(proc.pid))
    owned = owned_service(sock)
    assert owned is not None and owned.pid == proc.pid
    _record(sock, proc.pid, (start_ticks(proc.pid) or 0) + 1)  # same pid, another process (pid reuse)
    assert owned_service(sock) is None
    other = subprocess.Popen(["sleep", "30"])
    try:  # a live process, but neither the listener nor its parent (which the record may name: podman re-execs)
        _record(sock, other.pid, start_ticks(other.pid))
        assert owned_service(sock) is None
    finally:
        other.kill()
        other.wait()
    Path(f"{sock}.owner.json").write_text("{not json")
    assert owned_service(sock) is None


def test_a_retired_service_is_reaped_only_once_it_serves_no_connection(
        listener: tuple[subprocess.Popen[str], str]) -> None:
    proc, sock = listener
    retired = Path(f"{sock}.retired.json")
    retired.write_text(json.dumps([{"pids": [proc.pid], "listener": proc.pid, "start_ticks": start_ticks(proc.pid)}]))
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock)
    time.sleep(0.2)  # accepted
    reap_retired(sock)
    assert proc.poll() is None and retired.exists()  # a job's stream is still on it
    conn.close()
    time.sleep(0.2)
    reap_retired(sock)
    assert proc.wait(timeout=5) == -9 and not retired.exists()
