"""Worker names: our naming convention parses back, and a new worker takes the first name no live worker holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_runner.worker.naming import first_free_name, make_name, parse_name


@pytest.mark.parametrize(("queue", "instance", "host"), [
    ("factotum-job_worker-small", 3, "node-7"), ("system.jobs.queue", 12, "ip-10-0-0-1.ec2.internal"),
    ("q", 0, "h"), ("jobs.10.x", 1, "a.b.c")])
def test_names_parse_back(queue: str, instance: int, host: str) -> None:
    name = make_name(queue, instance, host)
    text = str(name)
    assert text.startswith("celery@") and f".{instance:02d}." in text
    assert parse_name(text) == name and "." not in name.program
    assert name.fields() == {"worker_program": name.program, "worker_instance": instance, "worker_host": host}


@pytest.mark.parametrize("text", ["celery@localhost", "worker1@host", "celery@q.x.host", ""])
def test_unconventional_names_do_not_parse(text: str) -> None:
    assert parse_name(text) is None


def test_first_free_name_skips_names_held_by_live_workers(tmp_path: Path) -> None:
    held = make_name("q", 1, "h")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(tmp_path / f"{held}.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert first_free_name("q", tmp_path, host="h").instance == 2
    finally:
        holder.kill()
        holder.wait()
