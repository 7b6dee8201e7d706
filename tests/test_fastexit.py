"""``sandbox-runner run-job`` ends without the interpreter's teardown (sandbox_runner/fastexit.py): same output,
same exit status, every other exit handler still run; only the module-by-module teardown is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.jobs import make_job, write_job
from support.machine import REPO, VENV_BIN, require


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=False, timeout=60, cwd=REPO)


def test_later_exit_handlers_run_output_is_flushed_and_the_code_is_kept() -> None:
    proc = python("""
        import atexit, sys
        from sandbox_runner.cli import fastexit
        fastexit.arm()
        atexit.register(lambda: print("registered later, ran", file=sys.stderr))
        sys.stdout.write("x" * 200_000)  # buffered on a pipe: lost unless flushed before _exit
        sys.exit(fastexit.set_code(3))
    """)
    assert proc.returncode == 3
    assert proc.stdout == "x" * 200_000
    assert proc.stderr == "registered later, ran\n"


def test_teardown_is_skipped_only_when_a_code_was_recorded() -> None:
    # an object freed at teardown says so: with a recorded code it is not freed, without one it is
    code = """
        import sys
        from sandbox_runner.cli import fastexit
        class Loud:
            def __del__(self):
                sys.stderr.write("torn down\\n")
        keep = Loud()
        fastexit.arm()
        {end}
    """
    fast = python(code.format(end="sys.exit(fastexit.set_code(0))"))
    assert (fast.returncode, fast.stderr) == (0, "")
    failed = python(code.format(end="raise RuntimeError('boom')"))  # main raised: the normal exit reports it
    assert failed.returncode == 1
    assert "RuntimeError: boom" in failed.stderr and failed.stderr.endswith("torn down\n")


def test_run_job_from_the_command_line_prints_its_lines_and_exits_with_the_job(tmp_path: Path) -> None:
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    env = dict(os.environ, SANDBOX_RUNNER_WORK_ROOT=str(tmp_path / "root"), SANDBOX_RUNNER_MIN_FREE_PERCENT="0")
    ok = write_job(tmp_path, make_job("true"), "ok.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"job_id": ')
    runs = [subprocess.run([str(VENV_BIN / "sandbox-runner"), "run-job", str(path), "--backend", "fake"],
                           capture_output=True, text=True, check=False, timeout=120, env=env) for path in (ok, bad)]
    assert runs[0].returncode == 0, runs[0].stdout + runs[0].stderr
    lines = runs[0].stdout.splitlines()
    assert lines[0].startswith("job-completed: job sr_test-") and lines[0].endswith("exit code 0")
    assert lines[1].startswith("  work dir: ") and lines[2].startswith("  events:   file ")
    job_dir = Path(lines[1].split(": ", 1)[1].strip())
    assert (job_dir / ".done").exists()
    assert json.loads((job_dir / "_job.json").read_text())["job_info"]["status"] == 0
    assert runs[1].returncode == 1
    assert runs[1].stdout.startswith("job-failed: ") and "not valid JSON" in runs[1].stdout
