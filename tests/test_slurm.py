"""The single-node Slurm that `make setup` installs (scripts/setup/slurm.sh), for real: `sbatch` as the
unprivileged user ``srunner`` runs `sandbox-runner run-job` inside a batch job, with rootless podman, and the
job's status documents reach Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from support.jobs import make_job, read_status_list, write_job
from support.machine import Worker, require

from sandbox_runner.events.documents import TERMINAL_STATUSES


def slurm_up() -> None:
    require(shutil.which("sbatch") is not None, "Slurm is not installed (run `make setup`)")
    for _ in range(60):  # a pilot of an earlier test may still be completing: the node is busy, not down
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, check=False)
        if state.returncode != 0 or state.stdout.split()[:1] != ["completing"]:
            break
        time.sleep(0.5)
    require(state.returncode == 0 and state.stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"]),
            f"the Slurm node is not up ({state.stdout.strip() or state.stderr.strip()}; run `make setup`)")


def test_sbatch_as_srunner_runs_a_rootless_podman_job(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                                       redis_url: str, status_key: str) -> None:
    slurm_up()
    job = make_job("echo hello-from-slurm")
    path = write_job(shared_dir, job)
    out = work_root / "slurm-%j.out"
    script = "\n".join([
        "#!/bin/bash",
        'echo "slurm job $SLURM_JOB_ID as $(id -un)"',
        f"exec sandbox-runner run-job {path} --backend podman",
        "",
    ])
    env = podman_ready.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), SANDBOX_RUNNER_REDIS_URL=redis_url,
                           SANDBOX_RUNNER_STATUS_KEY=status_key, SANDBOX_RUNNER_JOB_INFO_KEY=status_key)
    proc = podman_ready.run(["sbatch", "--wait", "--parsable", "-J", "sr-test-slurm", "-t", "5",
                             "-o", str(out), "--chdir", str(work_root)], env=env, input=script.encode(),
                            timeout=300)
    slurm_id = proc.stdout.strip().split(";")[0]
    logs = "\n".join(p.read_text() for p in work_root.glob("slurm-*.out"))
    assert proc.returncode == 0, f"sbatch: {proc.stderr}\n{logs}"
    assert f"slurm job {slurm_id} as {podman_ready.name}" in logs

    docs = [d for d in read_status_list(redis_url, status_key) if d.get("resource") == "job"]
    terminal = [d for d in docs if d["status"] in TERMINAL_STATUSES]
    assert [d["status"] for d in terminal] == ["job-completed"], [d["status"] for d in docs]
    job_dir = Path(terminal[0]["job"]["job_info"]["job_dir"])
    assert "hello-from-slurm" in (job_dir / "_stdout.txt").read_text()
