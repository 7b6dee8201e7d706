"""As root, jobs run in rootful podman: the container's rlimits are fitted to what the service's host grants
(rootful podman asks for nofile 1048576, which runc may not set: "error setting rlimit type 7")."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from support.jobs import make_job, write_job
from support.machine import BUSYBOX, BUSYBOX_TAR, REPO, require

from sandbox_runner.backends.podman.spec import fit_rootful_rlimits, service_rlimits


def test_service_rlimits_are_the_peer_process_own(tmp_path: Path) -> None:
    sock = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock)
    server.listen(1)
    accepter = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepter.start()
    limits = service_rlimits(sock)  # the peer is this very process
    accepter.join(timeout=5)
    server.close()
    assert limits == {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                      "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[1]}


def test_fitted_limits_leave_the_job_specs_own() -> None:
    body = {"r_limits": [{"type": "nofile", "soft": 10, "hard": 20}]}
    fitted = fit_rootful_rlimits(body, {"nofile": 500, "nproc": 700})
    assert fitted["r_limits"] == [{"type": "nofile", "soft": 10, "hard": 20},
                                  {"type": "nproc", "soft": 700, "hard": 700}]
    assert body["r_limits"] == [{"type": "nofile", "soft": 10, "hard": 20}]  # a copy


def test_run_job_as_root_in_rootful_podman(shared_dir: Path) -> None:
    require(os.getuid() == 0, "the rootful test runs as root")
    require(shutil.which("podman") is not None and BUSYBOX_TAR.exists(), "podman or the busybox tarball missing")
    job = make_job("sh -c 'id -u; ulimit -n'", container_image_url=f"file://{BUSYBOX_TAR}")
    path = write_job(shared_dir, job)
    root = shared_dir / "rootful-work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_RUNNER_")}
    proc = subprocess.run([sys.executable, "-m", "sandbox_runner.cli", "run-job", str(path), "--backend", "podman",
                           "--work-root", str(root)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_dir = next(root.glob(f"jobs/*/*/*/*/*/{job['job_id']}*"))
    out = (job_dir / "_stdout.txt").read_text().split()
    assert out[0] == "0" and int(out[1]) <= resource.getrlimit(resource.RLIMIT_NOFILE)[1], out
    params = json.loads((job_dir / "_docker_params.json").read_text())
    assert BUSYBOX in json.dumps(params)
