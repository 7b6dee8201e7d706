"""As root, in rootful podman, the job-spec's ``uid``/``gid`` are honoured (issue 8, section 1): the command runs as
them, can write its job dir (handed to them before the start), and what it writes is theirs on the host; the
worker's own files stay root's. No uid: the job runs as root and its files are root's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.jobs import make_job, write_job
from support.machine import BUSYBOX_TAR, REPO, require


@pytest.mark.parametrize(("uid", "gid"), [(2000, 2001), (None, None), (0, 0), (None, 2345)])
def test_rootful_job_runs_as_the_job_spec_ids_and_owns_what_it_writes(
        shared_dir: Path, uid: int | None, gid: int | None) -> None:
    require(os.getuid() == 0, "the rootful test runs as root")
    require(shutil.which("podman") is not None and BUSYBOX_TAR.exists(), "podman or the busybox tarball missing")
    job = make_job("sh -c 'id -u; id -g; mkdir sub && touch sub/made made'", container_image_url=f"file://{BUSYBOX_TAR}")
    job["params"]["job_specification"].update({k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None})
    root = shared_dir / "rootful-work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_RUNNER_")}
    proc = subprocess.run([sys.executable, "-m", "sandbox_runner.cli", "run-job", str(write_job(shared_dir, job)),
                           "--backend", "podman", "--work-root", str(root)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    job_dir = next(root.glob(f"jobs/*/*/*/*/*/{job['job_id']}"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + (job_dir / "_stderr.txt").read_text()
    want = (uid or 0, gid or 0)
    assert (job_dir / "_stdout.txt").read_text().split() == [str(want[0]), str(want[1])]
    handed = () if uid is None else (job_dir,)  # a gid alone runs as root, who needs no job dir of its own
    for path in (job_dir / "made", job_dir / "sub", job_dir / "sub" / "made", *handed):
        assert (path.stat().st_uid, path.stat().st_gid) == want, path
    if gid is not None:  # _run.sh re-runs it as it ran
        words = " ".join((job_dir / "_run.sh").read_text().replace("\\\n", " ").split())
        assert f"--user {want[0]}:{want[1]}" in words, words
    for path in ("_job.json", "_context.json", "_stdout.txt", "_exit_code"):  # the worker's, written as root
        assert (job_dir / path).stat().st_uid == 0, path
