"""SubprocessBackend against real processes: plain (setsid) and bubblewrap modes, as root and as srunner."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from support.machine import VENV_BIN, Worker, require

from sandbox_runner.backends import subprocess as subprocess_backend
from sandbox_runner.backends.base import Backend, ContainerSpec, JobIO, Mount, RunResult
from sandbox_runner.backends.fake import FAKE_PID, FakeBackend
from sandbox_runner.backends.subprocess import SubprocessBackend
from sandbox_runner.errors import BackendError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["bwrap", "plain"])
def backend(request: pytest.FixtureRequest) -> SubprocessBackend:
    if request.param == "bwrap":
        require(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
        return SubprocessBackend(use_bwrap=True)
    return SubprocessBackend(use_bwrap=False)


@pytest.fixture
def bwrap_backend() -> SubprocessBackend:
    require(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    return SubprocessBackend(use_bwrap=True)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "job"
    d.mkdir()
    return d


def spec(job_dir: Path, *argv: str, **kw: Any) -> ContainerSpec:
    return ContainerSpec(name="t-" + uuid.uuid4().hex[:6], image=None, argv=argv, workdir=str(job_dir), **kw)


def run(backend: Backend, s: ContainerSpec, io: JobIO | None = None) -> tuple[RunResult, str, str]:
    d = Path(s.workdir)
    io = io or JobIO(stdout=d / "_stdout.txt", stderr=d / "_stderr.txt")
    result = backend.run(s, io)
    return result, io.stdout.read_text(), io.stderr.read_text()


def sh(job_dir: Path, script: str, **kw: Any) -> ContainerSpec:
    return spec(job_dir, "sh", "-c", script, **kw)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def cancel_when_started(io: JobIO) -> None:
    """Set ``io.cancel`` from another thread once the job has printed "started"."""
    threading.Thread(target=lambda: wait_for(lambda: "started" in read(io.stdout)) and io.cancel.set()).start()


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# --- both modes ---------------------------------------------------------------------------------------------
def test_stdout_exact_and_stderr_separate(backend: SubprocessBackend, job_dir: Path) -> None:
    result, out, err = run(backend, sh(job_dir, "printf 'hello\\n  world\\n'; echo oops >&2"))
    assert (result.exit_code, out, err) == (0, "hello\n  world\n", "oops\n")


def test_exit_code_cwd_and_on_start(backend: SubprocessBackend, job_dir: Path) -> None:
    started: list[tuple[int, str | None]] = []
    io = JobIO(job_dir / "o", job_dir / "e", on_start=lambda pid, cid: started.append((pid, cid)))
    result, out, _ = run(backend, sh(job_dir, "pwd; exit 3"), io)
    assert result.exit_code == 3
    assert out == f"{job_dir}\n"
    assert started == [(result.pid, None)] and result.pid > 0
    assert result.started <= result.ended


@pytest.mark.parametrize(("sig", "code"), [("KILL", 137), ("TERM", 143), ("SEGV", 139)])
def test_signal_death_is_128_plus_n(backend: SubprocessBackend, job_dir: Path, sig: str, code: int) -> None:
    result, _, _ = run(backend, sh(job_dir, f"kill -{sig} $$"))
    assert result.exit_code == code


def test_cancel_sends_sigterm_to_the_job(backend: SubprocessBackend, job_dir: Path) -> None:
    io = JobIO(job_dir / "o", job_dir / "e")
    script = "trap 'echo got-term; exit 7' TERM; echo started; sleep 30 & wait"
    cancel_when_started(io)
    t0 = time.monotonic()
    result, out, _ = run(backend, sh(job_dir, script, stop_grace=10), io)
    assert time.monotonic() - t0 < 5  # the job's trap ended it: no waiting out the grace period
    assert result.exit_code == 7 and "got-term" in out


def test_cancel_kills_after_grace(backend: SubprocessBackend, job_dir: Path) -> None:
    marker = f"98{uuid.uuid4().int % 10**6}"
    io = JobIO(job_dir / "o", job_dir / "e")
    cancel_when_started(io)
    t0 = time.monotonic()
    result, _, _ = run(backend, sh(job_dir, f"trap '' TERM; echo started; sleep {marker}", stop_grace=0.5), io)
    elapsed = time.monotonic() - t0
    assert result.exit_code == 137
    assert 0.5 <= elapsed < 4
    assert wait_for(lambda: not processes_with(f"sleep\0{marker}"), 3), "the job's children outlived it"


def test_cancel_set_before_start(backend: SubprocessBackend, job_dir: Path) -> None:
    marker = f"97{uuid.uuid4().int % 10**6}"
    io = JobIO(job_dir / "o", job_dir / "e")
    io.cancel.set()
    t0 = time.monotonic()
    result, _, _ = run(backend, spec(job_dir, "sleep", marker), io)
    # plain: SIGTERM reaches sleep (143); bwrap: if the command is not forked yet the sandbox is SIGKILLed (137)
    assert result.exit_code in (143, 137) and time.monotonic() - t0 < 3
    assert wait_for(lambda: not processes_with(f"sleep\0{marker}"), 3), "the sandbox outlived the cancel"


def test_command_not_found_is_exit_127(backend: SubprocessBackend, job_dir: Path) -> None:
    result, out, err = run(backend, spec(job_dir, "sr-no-such-command-xyz", "arg"))
    assert result.exit_code == 127 and out == ""
    assert err == 'Unable to exec "sr-no-such-command-xyz": No such file or directory\n'
    assert result.engine_error == ("the sandbox could not start the job: executable file not found: "
                                   "sr-no-such-command-xyz")


def test_command_not_executable_is_exit_127(backend: SubprocessBackend, job_dir: Path) -> None:
    (job_dir / "run.sh").write_text("#!/bin/sh\necho hi\n")
    result, _, err = run(backend, spec(job_dir, "./run.sh"))
    assert result.exit_code == 127
    assert err == 'Unable to exec "./run.sh": Permission denied\n'
    assert result.engine_error == "the sandbox could not start the job: permission denied: ./run.sh"
    (job_dir / "run.sh").chmod(0o755)  # and with the bit set, a job-dir-relative command runs
    assert run(backend, spec(job_dir, "./run.sh"))[1] == "hi\n"


def test_worker_secrets_do_not_leak(monkeypatch: pytest.MonkeyPatch, job_dir: Path) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    for use_bwrap in (False, shutil.which("bwrap") is not None):
        b = SubprocessBackend(use_bwrap=use_bwrap)  # the base env is taken at construction: after setenv
        result, out, _ = run(b, spec(job_dir, "env", env={"JOB_VAR": "x"}), JobIO(job_dir / "o", job_dir / "e"))
        names = {line.split("=", 1)[0] for line in out.splitlines()}
        assert result.exit_code == 0
        assert "SECRET_TOKEN" not in names and "hunter2" not in out
        assert {"PATH", "HOME", "LANG", "JOB_VAR"} <= names


def test_output_appears_while_job_runs(backend: SubprocessBackend, job_dir: Path) -> None:
    io = JobIO(job_dir / "o", job_dir / "e")
    worker = threading.Thread(target=run, args=(backend, sh(job_dir, "echo early; echo warn >&2; sleep 20"), io))
    worker.start()
    try:
        assert wait_for(lambda: read(io.stdout) == "early\n")
        assert io.stderr.read_text() == "warn\n"
        assert worker.is_alive()
    finally:
        io.cancel.set()
        worker.join(10)
    assert not worker.is_alive()


def test_image_is_ignored_with_one_warning(
    backend: SubprocessBackend, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess_backend, "_WARNED", set())  # "once" is per process, across backend instances
    with structlog.testing.capture_logs() as logs:
        for b in (backend, backend, SubprocessBackend(use_bwrap=backend.bwrap is not None)):
            s = ContainerSpec(name="img", image="hysds/hello:latest", argv=("true",), workdir=str(job_dir))
            assert run(b, s, JobIO(job_dir / "o", job_dir / "e"))[0].exit_code == 0
    warned = [e for e in logs if e["event"] == "subprocess-image-ignored"]
    assert len(warned) == 1 and warned[0]["image"] == "hysds/hello:latest" and warned[0]["log_level"] == "warning"


def test_missing_work_dir_is_backend_error(backend: SubprocessBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not an absolute directory"):
        backend.run(spec(tmp_path / "nope", "true"), JobIO(tmp_path / "o", tmp_path / "e"))


# --- bubblewrap only ----------------------------------------------------------------------------------------
def interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:]}


def test_bwrap_has_no_network(bwrap_backend: SubprocessBackend, job_dir: Path) -> None:
    result, out, _ = run(bwrap_backend, spec(job_dir, "cat", "/proc/net/dev"))
    assert result.exit_code == 0 and interfaces(out) == {"lo"}
    probe = "import socket; socket.create_connection(('127.0.0.1', 6379), timeout=2); print('connected')"
    result, out, err = run(bwrap_backend, spec(job_dir, "/usr/bin/python3", "-c", probe))
    assert result.exit_code != 0 and "connected" not in out and "Error" in err


def test_bwrap_network_host_shares_the_host_network(bwrap_backend: SubprocessBackend, job_dir: Path) -> None:
    result, out, _ = run(bwrap_backend, spec(job_dir, "cat", "/proc/net/dev", network="host"))
    assert result.exit_code == 0
    assert interfaces(out) == interfaces(Path("/proc/net/dev").read_text())


def test_bwrap_root_is_read_only_work_dir_writable(bwrap_backend: SubprocessBackend, job_dir: Path) -> None:
    target = Path("/usr") / f"sr-test-{uuid.uuid4().hex[:8]}"
    result, _, err = run(bwrap_backend, sh(job_dir, f"touch {target}"))
    assert result.exit_code != 0 and "Read-only file system" in err and not target.exists()
    result, _, _ = run(bwrap_backend, sh(job_dir, "echo data > out.txt; mkdir -p a/b"))
    assert result.exit_code == 0 and (job_dir / "out.txt").read_text() == "data\n" and (job_dir / "a/b").is_dir()


def test_bwrap_tmp_is_private(bwrap_backend: SubprocessBackend, job_dir: Path) -> None:
    host_file = Path("/tmp") / f"sr-test-{uuid.uuid4().hex[:8]}"
    host_file.write_text("host")
    try:
        result, _, _ = run(bwrap_backend, sh(job_dir, f"test ! -e {host_file} && echo x > {host_file}.new"))
        assert result.exit_code == 0 and not Path(f"{host_file}.new").exists()
    finally:
        host_file.unlink()


def test_bwrap_mounts_ro_and_rw(bwrap_backend: SubprocessBackend, job_dir: Path, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data.txt").write_text("input\n")
    mounts = (
        Mount(host=str(ro), container=f"{job_dir}/in", mode="ro"),
        Mount(host=str(rw), container="/tmp/results", mode="rw"),
    )
    script = "cat in/data.txt; touch in/new || echo ro-refused; echo res > /tmp/results/r.txt"
    result, out, _ = run(bwrap_backend, sh(job_dir, script, mounts=mounts))
    assert result.exit_code == 0 and out == "input\nro-refused\n"
    assert not (ro / "new").exists() and (rw / "r.txt").read_text() == "res\n"


def test_bwrap_mount_over_a_parent_of_the_work_dir(bwrap_backend: SubprocessBackend, tmp_path: Path) -> None:
    # HySDS mounts <root>/jobs, which contains the job dir; the job dir must stay visible and writable.
    jobs = tmp_path / "jobs"
    job_dir = jobs / "2026" / "j1"
    job_dir.mkdir(parents=True)
    mounts = (Mount(host=str(jobs), container=str(jobs), mode="ro"),)
    result, _, _ = run(bwrap_backend, sh(job_dir, "echo ok > f", mounts=mounts))
    assert result.exit_code == 0 and (job_dir / "f").read_text() == "ok\n"


def test_bwrap_mount_target_missing_on_host_is_created(bwrap_backend: SubprocessBackend, job_dir: Path,
                                                       tmp_path: Path) -> None:
    """HySDS jobs mount at paths the host lacks (/home/ops/.netrc, /data/in); the rest of the root stays."""
    src = tmp_path / "anc"
    src.mkdir()
    (src / "f.txt").write_text("ancillary\n")
    mounts = (Mount(host=str(src), container="/sr-no-such-dir/x", mode="ro"),
              Mount(host=str(src), container="/home/sr-no-such-user/in", mode="ro"))
    script = ("cat /sr-no-such-dir/x/f.txt /home/sr-no-such-user/in/f.txt > out.txt; test -x /usr/bin/env && "
              "echo usr-visible >> out.txt; touch /sr-no-such-dir/y 2>/dev/null || echo root-ro >> out.txt; "
              "ls /run >> out.txt")
    io = JobIO(job_dir / "o", job_dir / "e")
    result = bwrap_backend.run(spec(job_dir, "sh", "-c", script, mounts=mounts), io)
    assert result.exit_code == 0, io.stderr.read_text()
    assert (job_dir / "out.txt").read_text() == "ancillary\nancillary\nusr-visible\nroot-ro\n"


# --- as the unprivileged worker user (the point of bwrap: rootless nodes) -----------------------------------
AS_USER_SCRIPT = """
import json, sys, threading
from pathlib import Path
from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends import subprocess as subprocess_backend
from sandbox_runner.backends.subprocess import SubprocessBackend
job = sys.argv[1]
b = SubprocessBackend(use_bwrap=True)
def go(script, cancel_after=None):
    io = JobIO(Path(job) / "o", Path(job) / "e")
    for p in (io.stdout, io.stderr):
        p.write_text("")
    if cancel_after is not None:
        threading.Timer(cancel_after, io.cancel.set).start()
    s = ContainerSpec(name="u", image=None, argv=("sh", "-c", script), workdir=job, stop_grace=0.5)
    r = b.run(s, io)
    return {"code": r.exit_code, "out": io.stdout.read_text(), "err": io.stderr.read_text()}
print(json.dumps({
    "id": go("id -u"),
    "net": go("cat /proc/net/dev"),
    "usr": go("touch /usr/sr-x"),
    "write": go("echo w > written; cat written"),
    "exit": go("exit 3"),
    "cancel": go("trap '' TERM; sleep 30", cancel_after=0.3),
    "term": go("trap 'exit 7' TERM; sleep 30 & wait", cancel_after=0.3),
    "missing": go("exec sr-no-such-command"),
}))
"""


def test_bwrap_as_unprivileged_user(worker: Worker, shared_dir: Path) -> None:
    require(shutil.which("bwrap") is not None, "bubblewrap (bwrap) is not installed")
    job = shared_dir / "job"
    job.mkdir()
    os.chown(job, worker.uid, worker.gid)
    proc = worker.run([str(VENV_BIN / "python"), "-c", AS_USER_SCRIPT, str(job)], cwd=str(REPO), timeout=60)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["id"] == {"code": 0, "out": f"{worker.uid}\n", "err": ""}
    assert interfaces(res["net"]["out"]) == {"lo"}
    assert res["usr"]["code"] != 0 and "Read-only file system" in res["usr"]["err"]
    assert res["write"]["out"] == "w\n" and (job / "written").stat().st_uid == worker.uid
    assert res["exit"]["code"] == 3
    assert res["cancel"]["code"] == 137  # TERM ignored: killed after the grace period
    assert res["term"]["code"] == 7  # SIGTERM reached the job inside the sandbox's user namespace
    assert res["missing"]["code"] == 127


# --- the test double ----------------------------------------------------------------------------------------
def test_fake_backend_records_writes_and_runs_script(job_dir: Path) -> None:
    def script(s: ContainerSpec, io: JobIO) -> int:
        (Path(s.workdir) / "product.txt").write_text("made")
        return 5

    fake = FakeBackend(script, stdout="out\n", stderr="err\n")
    pids: list[int] = []
    io = JobIO(job_dir / "o", job_dir / "e", on_start=lambda pid, cid: pids.append(pid))
    s = spec(job_dir, "run", "x")
    result, out, err = run(fake, s, io)
    assert (result.exit_code, out, err, fake.calls, pids) == (5, "out\n", "err\n", [s], [FAKE_PID])
    assert (job_dir / "product.txt").read_text() == "made"
    assert FakeBackend(exit_code=2).run(s, io).exit_code == 2


#: A job that leaves processes behind, all of which ignore SIGTERM and SIGHUP: a daemon (double fork, a session
#: of its own, re-parented away from the job) and a child in the job's group. $1 marks every process of it.
FORKING_JOB = """
(setsid sh -c 'trap "" TERM HUP; : > daemon-ready; sleep "$0"; sleep "$0"' "$1" &)
sh -c 'trap "" TERM HUP; : > child-ready; sleep "$0"' "$1" &
echo started
wait
"""

_KILLED_WORKER = """
import sys, threading
from pathlib import Path
from sandbox_runner.backends.base import ContainerSpec, JobIO
from sandbox_runner.backends.subprocess import SubprocessBackend
d = Path(sys.argv[1])
spec = ContainerSpec(name="orphan", image=None, argv=("sh", "-c", sys.argv[3], "job", sys.argv[2]), workdir=str(d))
io = JobIO(d / "o", d / "e", on_start=lambda pid, cid: (d / "pid").write_text(str(pid)))
# in a thread of its own, as in a worker: the job must die with the process, not only with the main thread
t = threading.Thread(target=SubprocessBackend(use_bwrap=False).run, args=(spec, io))
t.start()
t.join()
"""


_MARKERS: list[str] = []


def _marker() -> str:
    marker = f"96{uuid.uuid4().int % 10**6}"
    _MARKERS.append(marker)
    return marker


@pytest.fixture(autouse=True)
def _no_leftovers() -> Any:
    """A failing plain-mode test must not leave its job's processes to the next one."""
    yield
    while _MARKERS:
        for pid in processes_with(_MARKERS.pop()):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


def _session(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[3])


def _forked(job_dir: Path, marker: str) -> list[int]:
    """The forking job's processes once both leftovers are set up (their traps in place)."""
    ready = lambda: (job_dir / "daemon-ready").exists() and (job_dir / "child-ready").exists()  # noqa: E731
    assert wait_for(ready, 10), f"the job never forked: {read(job_dir / 'e')}"
    return processes_with(marker)


def test_plain_mode_job_dies_with_a_sigkilled_worker(job_dir: Path) -> None:
    """Everything the job forked, the daemon in a session of its own too, dies with the worker's process."""
    import signal
    import subprocess
    import sys

    marker = _marker()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, str(job_dir), marker, FORKING_JOB], cwd=REPO,
                            stdout=subprocess.DEVNULL)
    found = _forked(job_dir, marker)
    supervisor = int((job_dir / "pid").read_text())
    assert {_session(p) for p in found} - {_session(supervisor)}, "the daemon did not leave the job's session"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_for(lambda: not processes_with(marker), 5), f"{processes_with(marker)} outlived the worker"


def test_plain_mode_what_the_job_leaves_ends_with_it(job_dir: Path) -> None:
    """As a container's processes end with its pid 1: the job exits, its daemon and background child go."""
    marker = _marker()
    script = FORKING_JOB.replace("wait", 'while [ ! -e child-ready ] || [ ! -e daemon-ready ]; do sleep 0.01; done')
    result, out, _ = run(SubprocessBackend(use_bwrap=False), spec(job_dir, "sh", "-c", script, "job", marker))
    assert (result.exit_code, out) == (0, "started\n")
    assert not processes_with(marker)


def test_plain_mode_cancel_kills_a_daemonized_grandchild(job_dir: Path) -> None:
    marker = _marker()
    script = "trap '' TERM HUP\n" + FORKING_JOB
    io = JobIO(job_dir / "o", job_dir / "e")
    threading.Thread(target=lambda: _forked(job_dir, marker) and io.cancel.set()).start()
    result, _, _ = run(SubprocessBackend(use_bwrap=False),
                       spec(job_dir, "sh", "-c", script, "job", marker, stop_grace=0.3), io)
    assert result.exit_code == 137  # TERM ignored by all: killed after the grace period
    assert not processes_with(marker)


def test_plain_mode_a_killed_supervisor_takes_all_of_the_job_along(job_dir: Path) -> None:
    """The supervisor itself SIGKILLed (the OOM killer's pick): the backend finds the rest by the run's token in
    their environment, the daemon in another session too."""
    import signal

    marker = _marker()
    io = JobIO(job_dir / "o", job_dir / "e", on_start=lambda pid, cid: (job_dir / "pid").write_text(str(pid)))
    tokens: list[bytes] = []

    def kill_supervisor() -> None:
        for pid in _forked(job_dir, marker):
            tokens.extend(v for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                          if v.startswith(b"SANDBOX_RUNNER_SUPERVISOR="))
        os.kill(int((job_dir / "pid").read_text()), signal.SIGKILL)

    threading.Thread(target=kill_supervisor).start()
    result, _, _ = run(SubprocessBackend(use_bwrap=False), spec(job_dir, "sh", "-c", FORKING_JOB, "job", marker), io)
    assert result.exit_code == 137
    supervisor = int((job_dir / "pid").read_text())
    assert len(set(tokens)) == 1 and tokens[0].startswith(f"SANDBOX_RUNNER_SUPERVISOR={supervisor}:".encode())
    assert wait_for(lambda: not processes_with(marker), 5), processes_with(marker)


def test_plain_mode_with_more_than_1024_fds_open(job_dir: Path) -> None:
    """A busy worker's fds go past select()'s 1024: the supervisor's pipe keeps its number, so it must poll."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(hard == resource.RLIM_INFINITY or hard >= 1200, f"RLIMIT_NOFILE hard limit {hard} < 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        result, out, err = run(SubprocessBackend(use_bwrap=False), sh(job_dir, "echo ok"))
        assert (result.exit_code, out, err) == (0, "ok\n", "")
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
