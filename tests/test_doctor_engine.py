"""`sandbox-runner doctor` runs one real trivial container the way a job would (issue 8, section 1) and checks the
podman service sees the work root (section 3): ok where jobs work, the engine's own words where they do not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.fsjobs import tmpfs
from support.machine import BUSYBOX_TAR, REPO, Worker, require
from test_late_mount import OwnPodman, own_podman

__all__ = ["own_podman"]  # the fixture, re-used from the late-mount tests

pytestmark = pytest.mark.podman


def lines(out: str, name: str) -> list[str]:
    """The doctor's line for check ``name``, and its fix line if any."""
    rows = out.splitlines()
    for i, row in enumerate(rows):
        if row[5:].startswith(f"{name} ") or row[5:] == name:
            return [row] + ([rows[i + 1]] if i + 1 < len(rows) and "fix:" in rows[i + 1] else [])
    raise AssertionError(f"no {name!r} line in:\n{out}")


def doctor_as(worker: Worker, work_root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return worker.run(["sandbox-runner", "doctor", "--work-root", str(work_root), *args], env=worker.env(**env))


def test_doctor_runs_a_real_container_and_passes_where_jobs_work(podman_ready: Worker, work_root: Path) -> None:
    proc = doctor_as(podman_ready, work_root / "w")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = lines(proc.stdout, "job container")[0]
    assert row.startswith("ok ") and f"owned by uid {podman_ready.uid}" in row, row
    assert lines(proc.stdout, "podman sees root")[0].startswith("ok "), proc.stdout
    assert not [p for p in (work_root / "w").iterdir() if p.name.startswith(".doctor-")]  # its job dir is gone


def test_doctor_reports_the_engines_reason_for_a_missing_image(podman_ready: Worker, work_root: Path) -> None:
    proc = doctor_as(podman_ready, work_root, "--image", "localhost/sr-test/no-such-image:1")
    assert proc.returncode == 1, proc.stdout
    row, fix = lines(proc.stdout, "job container")
    assert row.startswith("FAIL") and "localhost/sr-test/no-such-image:1" in row
    assert "could not be pulled" in row and "registry" in row, row  # podman's own words about the pull
    assert "SANDBOX_RUNNER_DOCTOR_IMAGE" in fix


def test_doctor_reports_an_image_without_the_command(own_podman: OwnPodman, shared_dir: Path) -> None:
    """An image that exists but cannot run ``sh``: the engine's "executable file not found" comes through."""
    pod = own_podman
    (shared_dir / "README").write_text("an image with no shell\n")
    empty = shared_dir / "noshell.tar"
    with tarfile.open(empty, "w") as tar:
        tar.add(shared_dir / "README", arcname="README")
    empty.chmod(0o644)
    made = pod.worker.run(["podman", "import", str(empty), "localhost/sr-test/noshell:1"], env=pod.env())
    assert made.returncode == 0, made.stderr  # in this test's own podman storage, not the shared one
    root = pod.mkdir(pod.base / "work")
    pod.start_foreign_service()
    proc = doctor_as(pod.worker, root, "--image", "localhost/sr-test/noshell:1", **pod.env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = lines(proc.stdout, "job container")[0]
    assert row.startswith("FAIL") and "container engine could not start the job" in row, row
    assert "executable file not found" in row and "sh" in row, row


@pytest.mark.parametrize("socket", ["default", "none answering"])
def test_doctor_as_root_runs_the_container_in_rootful_podman(shared_dir: Path, socket: str) -> None:
    """Root right after `make setup` (CI's case: no rootful service is up yet) and root with one running."""
    require(os.getuid() == 0, "runs as root")
    require(shutil.which("podman") is not None and BUSYBOX_TAR.exists(), "podman or the busybox tarball missing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_RUNNER_")}
    sock = Path("/run/podman/podman.sock") if socket == "default" else Path(f"/run/podman/sr-doctor-{os.getpid()}.sock")
    if socket != "default":
        env["SANDBOX_RUNNER_PODMAN_SOCKET"] = f"unix://{sock}"
    try:
        proc = subprocess.run([sys.executable, "-m", "sandbox_runner.cli", "doctor", "--work-root",
                               str(shared_dir / "root-work"), "--image-url", f"file://{BUSYBOX_TAR}"],
                              capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
        row = lines(proc.stdout, "job container")[0]
        assert row.startswith("ok ") and str(sock) in row and "owned by uid 0" in row, proc.stdout + proc.stderr
        if socket != "default":
            assert "stopped it" in row and not sock.exists(), row
    finally:
        if socket != "default":
            subprocess.run(["pkill", "-f", f"system service --time=0 unix://{sock}"], check=False)
            for leftover in sock.parent.glob(f"{sock.name}.*"):
                leftover.unlink(missing_ok=True)


def test_doctor_names_a_work_root_the_service_cannot_see(own_podman: OwnPodman) -> None:
    pod = own_podman
    pod.start_foreign_service()
    with tmpfs(pod.base / "scratch", size="10m") as scratch:
        os.chown(scratch, pod.worker.uid, pod.worker.gid)
        proc = doctor_as(pod.worker, scratch, "--image-url", f"file://{BUSYBOX_TAR}", **pod.env())
        assert proc.returncode == 1, proc.stdout + proc.stderr
        row, fix = lines(proc.stdout, "podman sees root")
        assert row.startswith("FAIL") and str(scratch) in row and "mounted after the podman service" in row, row
        assert "podman system migrate" in fix
        row = lines(proc.stdout, "job container")[0]
        assert row.startswith("FAIL") and "mounted after the podman service" in row, row


def test_doctor_starts_a_service_where_none_answers_and_stops_it(podman_ready: Worker, work_root: Path) -> None:
    """As a job would: with no service at the socket, one is started there; the doctor then stops it again."""
    sock = Path(f"/run/user/{podman_ready.uid}/podman/sr-doctor-{os.getpid()}.sock")  # the user's runtime dir
    # another container of the user runs meanwhile (every service of the user lists it): not a reason to keep
    # the doctor's service, which nobody else talks to
    other = f"sr-doctor-other-{os.getpid()}"
    started = podman_ready.run(["podman", "--runtime", "runc", "run", "-d", "--rm", "--network", "none",
                                "--name", other, "localhost/sandbox-runner/busybox:latest", "sleep", "120"])
    assert started.returncode == 0, started.stderr
    proc = doctor_as(podman_ready, work_root, "--image-url", f"file://{BUSYBOX_TAR}",
                     SANDBOX_RUNNER_PODMAN_SOCKET=f"unix://{sock}")
    try:
        row = lines(proc.stdout, "job container")[0]
        assert row.startswith("ok ") and str(sock) in row, proc.stdout + proc.stderr
        assert "started the podman service" in row and "stopped it" in row, row
        assert not sock.exists()  # nothing answers there any more: the doctor left the machine as it found it
    finally:
        podman_ready.run(["pkill", "-f", f"system service --time=0 unix://{sock}"])
        podman_ready.run(["sh", "-c", f"rm -f {sock}.*"])
        podman_ready.run(["podman", "--runtime", "runc", "rm", "-f", "-t", "0", other])
