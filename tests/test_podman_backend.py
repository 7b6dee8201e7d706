"""PodmanBackend against srunner's real rootless podman service, with the backend itself running as srunner.

pytest runs as root; every job goes through tests/support/podman_harness.py started with ``runuser -u srunner``, so the
backend talks to the service exactly as the worker does (its own uid, its own socket, keep-id mapping). Job dirs
live in a temp dir owned by srunner. Skips without srunner/.venv/socket/test image, fails instead under CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.machine import BUSYBOX, BUSYBOX_TAR, VENV_BIN, Worker, require

from sandbox_runner.backends.podman.api import APIError, PodmanAPI

pytestmark = pytest.mark.podman

HARNESS = Path(__file__).parent / "support" / "podman_harness.py"


@dataclass
class Harness:
    worker: Worker
    base: Path

    @property
    def url(self) -> str:
        return f"unix://{self.worker.socket}"

    def _argv(self) -> list[str]:
        env = [f"{k}={v}" for k, v in self.worker.env().items()]
        return ["runuser", "-u", self.worker.name, "--", "env", "-i", *env, str(VENV_BIN / "python"), str(HARNESS)]

    def start(self, req: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"socket": self.url, **req}))
        proc.stdin.close()
        return proc

    def finish(self, proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout)
        assert proc.returncode == 0, f"harness failed ({proc.returncode}): {err}"
        answer: dict[str, Any] = json.loads(out)
        return answer

    def mkdir(self, name: str) -> Path:
        path = self.base / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o755)
        os.chown(path, self.worker.uid, self.worker.gid)
        return path

    def job_request(self, argv: list[str], job_dir: Path | None = None, **spec: Any) -> dict[str, Any]:
        job_dir = job_dir or self.mkdir("job")
        fields = {"name": f"sr-test-{uuid.uuid4().hex[:10]}", "image": BUSYBOX, "argv": argv, "workdir": str(job_dir)}
        fields.update(spec)
        return {
            "op": "run",
            "spec": fields,
            "stdout": str(job_dir / "_stdout.txt"),
            "stderr": str(job_dir / "_stderr.txt"),
        }

    def run(self, argv: list[str], job_dir: Path | None = None, **kw: Any) -> tuple[dict[str, Any], Path]:
        extra = {k: kw.pop(k) for k in ("cancel_after", "probe_label", "image_cache") if k in kw}
        req = self.job_request(argv, job_dir, **kw) | extra
        return self.finish(self.start(req)), Path(req["spec"]["workdir"])


@pytest.fixture
def harness(podman_ready: Worker, shared_dir: Path) -> Harness:
    require(HARNESS.exists(), f"{HARNESS} missing")
    return Harness(podman_ready, shared_dir)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    result: dict[str, Any] = answer["result"]
    return result


def test_stdout_is_byte_exact(harness: Harness) -> None:
    answer, job = harness.run(sh(r"printf 'hello\nworld'; printf '\000\001\377 no newline at the end'"))
    assert ok(answer)["exit_code"] == 0
    assert (job / "_stdout.txt").read_bytes() == b"hello\nworld\x00\x01\xff no newline at the end"
    assert (job / "_stderr.txt").read_bytes() == b""


def test_stderr_separate_and_exit_code(harness: Harness) -> None:
    answer, job = harness.run(sh("echo out; echo err >&2; echo out2; exit 3"))
    result = ok(answer)
    assert result["exit_code"] == 3
    assert (job / "_stdout.txt").read_bytes() == b"out\nout2\n"
    assert (job / "_stderr.txt").read_bytes() == b"err\n"
    assert result["pid"] > 0 and answer["started"] == [result["pid"], result["container_id"]]
    assert result["image_id"] and result["started"] <= result["ended"]


def test_large_output_is_complete(harness: Harness) -> None:
    answer, job = harness.run(sh("head -c 3000000 /dev/urandom > blob; cat blob; cat blob >&2"))
    assert ok(answer)["exit_code"] == 0
    blob = (job / "blob").read_bytes()
    assert (job / "_stdout.txt").read_bytes() == blob and (job / "_stderr.txt").read_bytes() == blob


def test_output_is_written_while_the_job_runs(harness: Harness) -> None:
    req = harness.job_request(sh("echo first; sleep 3; echo second"))
    stdout = Path(req["stdout"])
    proc = harness.start(req)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (stdout.exists() and stdout.read_bytes() == b"first\n"):
        assert proc.poll() is None, "the job ended before its first line showed up in the file"
        time.sleep(0.05)
    assert stdout.read_bytes() == b"first\n" and proc.poll() is None
    assert ok(harness.finish(proc))["exit_code"] == 0
    assert stdout.read_bytes() == b"first\nsecond\n"


def test_files_belong_to_the_worker(harness: Harness) -> None:
    answer, job = harness.run(sh("id -u; id -g; mkdir sub; touch sub/made"))
    assert ok(answer)["exit_code"] == 0
    assert (job / "_stdout.txt").read_text().split() == [str(harness.worker.uid), str(harness.worker.gid)]
    for path in (job / "sub", job / "sub" / "made", job / "_stdout.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == (harness.worker.uid, harness.worker.gid), path


@pytest.mark.parametrize(("uid", "gid"), [(0, 0), (2000, 2000), (None, None)])
def test_uid_gid_are_honoured_and_files_still_belong_to_the_worker(
    harness: Harness, uid: int | None, gid: int | None
) -> None:
    w = harness.worker
    answer, job = harness.run(sh("id -u; id -g; touch made"), uid=uid, gid=gid)
    assert ok(answer)["exit_code"] == 0
    inside = [str(w.uid if uid is None else uid), str(w.gid if gid is None else gid)]
    assert (job / "_stdout.txt").read_text().split() == inside
    made = (job / "made").stat()
    assert (made.st_uid, made.st_gid) == (w.uid, w.gid)


def test_read_only_and_read_write_mounts(harness: Harness) -> None:
    ro, rw = harness.mkdir("ro"), harness.mkdir("rw")
    (ro / "given.txt").write_text("input")
    script = "cat /in/given.txt; echo; echo x > /in/new && echo ro-writable; echo y > /out/new && echo rw-ok; true"
    mounts = [
        {"host": str(ro), "container": "/in", "mode": "ro"},
        {"host": str(rw), "container": "/out", "mode": "rw"},
    ]
    answer, job = harness.run(sh(script), mounts=mounts)
    assert ok(answer)["exit_code"] == 0
    assert (job / "_stdout.txt").read_text() == "input\nrw-ok\n"
    assert b"Read-only file system" in (job / "_stderr.txt").read_bytes()
    assert not (ro / "new").exists() and (rw / "new").read_text() == "y\n"
    assert (rw / "new").stat().st_uid == harness.worker.uid


def test_network_none_has_only_loopback(harness: Harness) -> None:
    answer, job = harness.run(["ls", "/sys/class/net"])
    assert ok(answer)["exit_code"] == 0
    assert (job / "_stdout.txt").read_text().split() == ["lo"]


def test_labels_while_running_and_container_removed_after(harness: Harness) -> None:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    labels = {"sandbox_runner.job_id": job_id, "sandbox_runner.task_id": "task-1"}
    answer, _ = harness.run(["sleep", "1"], labels=labels, probe_label=f"sandbox_runner.job_id={job_id}")
    result = ok(answer)
    assert len(answer["running"]) == 1
    running = answer["running"][0]
    assert running["id"] == result["container_id"] and running["state"] == "running"
    assert running["labels"]["sandbox_runner.job_id"] == job_id
    assert running["labels"]["sandbox_runner.task_id"] == "task-1"
    assert running["labels"]["sandbox_runner.worker"] == "harness"  # from PodmanBackend(worker=...)
    assert answer["after"] == []


@pytest.mark.parametrize(
    ("script", "codes"),
    [
        ("sleep 300", (143,)),  # the init forwards SIGTERM, sleep dies of it
        ("trap '' TERM; sleep 300 & wait; sleep 300", (137,)),  # ignores SIGTERM: SIGKILL after the grace
    ],
)
def test_cancel_stops_within_grace(harness: Harness, script: str, codes: tuple[int, ...]) -> None:
    job_id = f"cancel-{uuid.uuid4().hex[:8]}"
    answer, _ = harness.run(
        sh(script), stop_grace=2, cancel_after=0.5, labels={"sandbox_runner.job_id": job_id},
        probe_label=f"sandbox_runner.job_id={job_id}",
    )  # fmt: skip
    result = ok(answer)
    assert result["exit_code"] in codes
    assert result["ended"] - result["started"] < 0.5 + 2 + 5  # cancel delay + grace + slack on a busy machine
    assert answer["after"] == []


def test_image_loaded_from_tarball_once_by_two_processes(harness: Harness) -> None:
    require(BUSYBOX_TAR.exists(), f"{BUSYBOX_TAR} missing (run `make setup`)")
    name = f"localhost/sr-test/loaded-{uuid.uuid4().hex[:8]}:v1"
    cache = harness.mkdir("cache")
    api = PodmanAPI(harness.url)
    req = {"op": "ensure_image", "name": name, "url": str(BUSYBOX_TAR), "cache_dir": str(cache)}
    try:
        procs = [harness.start(req), harness.start(req)]
        answers = [harness.finish(p) for p in procs]
        assert all(a["ok"] for a in answers), answers
        assert answers[0]["image_id"] == answers[1]["image_id"]
        loads = [e for a in answers for e in a["logs"] if e["event"] == "image-loaded"]
        assert len(loads) == 1, answers
        assert (cache / (name.replace("/", "_").replace(":", "_") + ".load.lock")).exists()
        # and a job that names it runs in it
        answer, job = harness.run(["echo", "in-loaded"], image=name, image_cache=str(cache))
        assert ok(answer)["image_id"] == answers[0]["image_id"]
        assert (job / "_stdout.txt").read_text() == "in-loaded\n"
    finally:
        with contextlib.suppress(APIError):
            api.call("DELETE", f"/images/{name}")  # the tag only: busybox shares the image


def test_run_loads_a_missing_image_from_its_url(harness: Harness) -> None:
    require(BUSYBOX_TAR.exists(), f"{BUSYBOX_TAR} missing (run `make setup`)")
    name = f"localhost/sr-test/byurl-{uuid.uuid4().hex[:8]}:latest"
    try:
        answer, job = harness.run(
            ["echo", "ok"], image=name, image_url=f"file://{BUSYBOX_TAR}", image_cache=str(harness.mkdir("cache"))
        )
        assert ok(answer)["exit_code"] == 0 and (job / "_stdout.txt").read_text() == "ok\n"
        assert any(e["event"] == "image-loaded" for e in answer["logs"])
    finally:
        with contextlib.suppress(APIError):
            PodmanAPI(harness.url).call("DELETE", f"/images/{name}")


def test_missing_image_without_url_is_an_image_error(harness: Harness) -> None:
    name = f"localhost/sr-test/absent-{uuid.uuid4().hex[:8]}:nope"
    answer, _ = harness.run(["true"], image=name, image_cache=str(harness.mkdir("cache")))
    assert not answer["ok"] and answer["type"] == "ImageError" and answer["kind"] == "image"
    prefix = f"image '{name}' is not present locally, has no container_image_url, and could not be pulled: "
    assert answer["message"].startswith(prefix) and len(answer["message"]) > len(prefix)


def test_runtime_options_take_effect(harness: Harness) -> None:
    opts = {"env": {"EXTRA": "yes"}, "hostname": "sandbox", "ulimit": "nofile=512:512", "shm-size": "8m",
            "init": "true", "cap_drop": "ALL"}  # fmt: skip
    answer, job = harness.run(sh("echo $EXTRA; hostname; ulimit -n; df -k /dev/shm | tail -1"), runtime_options=opts)
    assert ok(answer)["exit_code"] == 0
    lines = (job / "_stdout.txt").read_text().splitlines()
    assert lines[:3] == ["yes", "sandbox", "512"]
    assert lines[3].split()[1] == "8192"


@pytest.mark.parametrize(
    ("runtime_options", "mounts", "message"),
    [
        ({"frobnicate": "1"}, [], "runtime option 'frobnicate' is not supported"),
        ({"privileged": "true"}, [], "runtime option 'privileged' is not allowed"),
        ({}, [{"host": "/run/user/{uid}/podman", "container": "/p"}], "refusing to mount"),
    ],
)
def test_refusals_create_no_container(
    harness: Harness, runtime_options: dict[str, str], mounts: list[dict[str, str]], message: str
) -> None:
    job_id = f"refused-{uuid.uuid4().hex[:8]}"
    mounts = [{k: v.format(uid=harness.worker.uid) for k, v in m.items()} for m in mounts]
    answer, _ = harness.run(
        ["true"], runtime_options=runtime_options, mounts=mounts, labels={"sandbox_runner.job_id": job_id}
    )
    assert not answer["ok"] and answer["type"] == "BackendError" and message in answer["message"]
    listing = PodmanAPI(harness.url).call(
        "GET",
        "/containers/json",
        params={"all": True, "filters": json.dumps({"label": [f"sandbox_runner.job_id={job_id}"]})},
    )
    assert listing == []


def test_starts_a_service_when_none_answers(harness: Harness) -> None:
    """A socket nobody serves: the backend starts ``podman system service`` there for its user, then runs."""
    sock = Path(harness.worker.runtime_dir) / "podman" / f"sr-test-{uuid.uuid4().hex[:8]}.sock"
    req = harness.job_request(["echo", "served"])
    pid = None
    try:
        answer = harness.finish(harness.start({**req, "socket": f"unix://{sock}"}))
        pid = answer.get("service_pid")
        assert ok(answer)["exit_code"] == 0 and pid, answer
        assert Path(req["stdout"]).read_text() == "served\n"
        assert any(e["event"] == "podman-service-started" for e in answer["logs"])
        assert Path(f"/proc/{pid}").stat().st_uid == harness.worker.uid
        # it outlives its starter, so it must not keep the starter's working directory (conmon inherits it)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        # by pid: ours from the answer, else the one process serving this test's unique socket
        for proc in [pid] if pid else _pids_with_arg(f"unix://{sock}"):
            os.kill(proc, 15)
        for leftover in (sock, sock.with_name(sock.name + ".log"), sock.with_name(sock.name + ".start.lock")):
            leftover.unlink(missing_ok=True)


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if arg.encode() in cmdline.read_bytes().split(b"\0"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
