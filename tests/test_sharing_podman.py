"""The files and sharing of tests/test_sharing.py for real: rootless podman jobs run by ``sandbox-runner run-job``
as ``srunner``, status documents in a real Redis.

- a job reads the worker's ``celeryconfig.py`` and ``datasets.json`` from its work dir and succeeds; both are
  read-only inside; a secret in ``celeryconfig.py`` reaches no file of the job dir, no triage bundle, no event;
- the engine socket is absent by default and present (a socket, usable by the job's user) for an allowed type,
  where a job's own client gets podman's ``/_ping`` answer through it, and starts a sibling container (as
  OPERA's PGE wrapper starts its dependency image) that writes into the job's dir;
- a job type listed for HySDS's work-root mounts sees ``<root>/jobs|tasks|workers|cache`` read-only;
- ``runtime_options.gpus`` on a node whose ``HYSDS_GPU_AVAILABLE`` claims GPUs but that has no CDI spec: one
  job-failed naming the option; without the claim the job runs without GPUs, as under HySDS;
- ``--dry-run`` refuses ``network: bridge`` as the rootless backend would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from support.jobs import make_job, read_status_list, write_job
from support.machine import BUSYBOX, Worker, require
from test_job_path import job_dir_of, run_job, terminal

SECRET = "amqp-pw-Zq8v41x"


def _worker_files(shared_dir: Path) -> dict[str, str]:
    etc = shared_dir / "etc"
    etc.mkdir()
    etc.chmod(0o755)
    celery = etc / "celeryconfig.py"
    celery.write_text(f'broker_url = "amqp://ops:{SECRET}@mozart//"\nROOT_WORK_DIR = "/data/work"\n')
    pub = shared_dir / "pub"
    pub.mkdir()
    pub.chmod(0o777)
    datasets = etc / "datasets.json"
    datasets.write_text(json.dumps({"datasets": [
        {"ipath": "hysds::data/triaged_job", "level": "NA", "type": "triaged_job",
         "match_pattern": r"/(?P<id>triaged_job-.+)$", "publish": {"location": f"file://{pub}/{{id}}"}}]}))
    for f in (celery, datasets):
        f.chmod(0o644)
    return {"HYSDS_CELERY_CFG": str(celery), "HYSDS_DATASETS_CFG": str(datasets)}


def _md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _everything(root: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


def test_job_reads_celeryconfig_and_datasets_read_only(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                                       redis_url: str, status_key: str) -> None:
    files = _worker_files(shared_dir)
    # the contents are checked by digest, so the job never prints them; writing must fail (read-only)
    cmd = (f"sh -c 'echo \"{_md5(files['HYSDS_CELERY_CFG'])}  celeryconfig.py\" | md5sum -c -s"
           f" && echo \"{_md5(files['HYSDS_DATASETS_CFG'])}  datasets.json\" | md5sum -c -s"
           " && ! (echo x >> celeryconfig.py) && ! (echo x >> datasets.json) && ! rm -f datasets.json"
           " && echo read-only-ok'")
    _, docs = run_job(podman_ready, make_job(cmd), shared_dir, work_root, redis_url, status_key, "podman",
                         **files)
    done = terminal(docs)
    jd = job_dir_of(docs)
    assert done["status"] == "job-completed", (done.get("error"), (jd / "_stderr.txt").read_text())
    assert (jd / "_stdout.txt").read_text() == "read-only-ok\n"
    # on the host: empty mount points owned by the worker, the worker's files untouched
    for name in ("celeryconfig.py", "datasets.json"):
        assert (jd / name).read_bytes() == b"" and (jd / name).stat().st_uid == podman_ready.uid
    assert SECRET in Path(files["HYSDS_CELERY_CFG"]).read_text()
    run_sh = (jd / "_run.sh").read_text()
    assert f"{files['HYSDS_CELERY_CFG']}:{jd}/celeryconfig.py:ro" in run_sh
    assert SECRET not in _everything(jd) and SECRET not in json.dumps(docs, default=str)


def test_celeryconfig_secret_reaches_no_triage_bundle(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                                      redis_url: str, status_key: str) -> None:
    files = _worker_files(shared_dir)
    # a careless job: it also prints the file to its stderr, which triage bundles (redacted)
    job = make_job("sh -c 'grep -c broker_url celeryconfig.py; cp celeryconfig.py copy.txt; cat celeryconfig.py >&2;"
                   " exit 3'")
    job["params"]["_triage_additional_globs"] = ["celeryconfig.py", "datasets.json"]
    _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman", **files)
    done = terminal(docs)
    assert done["status"] == "job-failed" and "exit code: 3" in done["error"], done["error"]
    jd = job_dir_of(docs)
    assert (jd / "_stdout.txt").read_text() == "1\n"  # it did read the file
    (bundle,) = (shared_dir / "pub").iterdir()
    assert (bundle / "celeryconfig.py").read_bytes() == b"" and (bundle / "_run.sh").exists()
    assert SECRET in (jd / "_stderr.txt").read_text()  # the job's own output, in its own dir
    assert "broker_url = \"amqp://ops:REDACTED@mozart//\"" in (bundle / "_stderr.txt").read_text()
    assert SECRET not in _everything(bundle)
    # the job's own copy is the job's doing, in its own dir; nothing the worker writes carries it
    assert SECRET in (jd / "copy.txt").read_text()
    assert SECRET not in _everything(bundle) + json.dumps(docs, default=str) + (jd / "_run.sh").read_text()


def _sharing_policy(shared_dir: Path, text: str) -> str:
    path = shared_dir / "sharing.toml"
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def test_engine_socket_only_for_allowed_job_types(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                                  redis_url: str, status_key: str) -> None:
    sock = podman_ready.socket
    probe = (f"sh -c 'if [ -e {sock} ]; then echo present; else echo absent; fi;"
             f" [ -S {sock} ] && [ -w {sock} ] && echo usable; echo \"host=$CONTAINER_HOST uid=$HOST_UID\"'")
    policy = _sharing_policy(shared_dir, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n')
    _, docs = run_job(podman_ready, make_job(probe, job_type="job-other"), shared_dir, work_root, redis_url,
                      status_key, "podman", SANDBOX_RUNNER_SHARING_POLICY=policy)
    assert terminal(docs)["status"] == "job-completed"
    assert (job_dir_of(docs) / "_stdout.txt").read_text() == "absent\nhost= uid=\n"
    redis_clear(redis_url, status_key)
    _, docs = run_job(podman_ready, make_job(probe, job_type="job-SCIFLO_L3"), shared_dir, work_root, redis_url,
                      status_key, "podman", SANDBOX_RUNNER_SHARING_POLICY=policy)
    assert terminal(docs)["status"] == "job-completed", terminal(docs).get("error")
    jd = job_dir_of(docs)
    assert (jd / "_stdout.txt").read_text() == f"present\nusable\nhost=unix://{sock} uid={podman_ready.uid}\n"
    params = json.loads((jd / "_docker_params.json").read_text())
    (entry,) = params.values()
    assert entry["engine_socket"] == sock
    assert entry["labels"]["sandbox_runner.engine_socket"].startswith(f"{sock}: job type 'job-SCIFLO_L3' matches")


#: a static HTTP-over-unix-socket client (the test image, static busybox, has none), as a PGE's podman client:
#: ``api SOCKET METHOD PATH [BODY-FILE]`` prints the reply
API_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    static char body[65536], buf[65536];
    ssize_t n, len = 0;
    int fd;
    if (argc < 4) return 64;
    if (argc > 4) {
        int in = open(argv[4], O_RDONLY);
        if (in < 0 || (len = read(in, body, sizeof body)) < 0) { perror("body"); return 4; }
    }
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 2; }
    n = snprintf(buf, sizeof buf, "%s %s HTTP/1.0\r\nHost: d\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zd\r\n\r\n", argv[2], argv[3], len);
    if (write(fd, buf, n) < 0 || (len && write(fd, body, len) < 0)) { perror("write"); return 3; }
    while ((n = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
"""


def _api_client(shared_dir: Path) -> Path:
    require(shutil.which("gcc") is not None, "gcc (with a static libc) is needed to build the socket client")
    src, out = shared_dir / "api.c", shared_dir / "api"
    src.write_text(API_C)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(src)], check=True, capture_output=True)
    out.chmod(0o755)
    return out


def test_allowed_job_talks_to_the_engine(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                         redis_url: str, status_key: str) -> None:
    client = _api_client(shared_dir)
    policy = _sharing_policy(shared_dir, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n')
    job = make_job(f"./api {podman_ready.socket} GET /_ping", job_type="job-SCIFLO_L3",
                   container_mappings={str(client): "api"})
    _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman",
                      SANDBOX_RUNNER_SHARING_POLICY=policy)
    jd = job_dir_of(docs)
    assert terminal(docs)["status"] == "job-completed", (jd / "_stderr.txt").read_text()
    reply = (jd / "_stdout.txt").read_text()
    assert reply.startswith("HTTP/1.0 200 OK") and "Libpod-Api-Version" in reply and reply.endswith("OK"), reply
    # the same client, a job type not allowed: the socket is not there to connect to
    redis_clear(redis_url, status_key)
    job = make_job(f"./api {podman_ready.socket} GET /_ping", job_type="job-other",
                   container_mappings={str(client): "api"})
    _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman",
                      SANDBOX_RUNNER_SHARING_POLICY=policy)
    jd = job_dir_of(docs)
    assert terminal(docs)["status"] == "job-failed"
    assert (jd / "_stderr.txt").read_text() == "connect: No such file or directory\n"


def redis_clear(redis_url: str, key: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).delete(key)


def test_gpus_without_a_cdi_device_fail_naming_the_option(podman_ready: Worker, shared_dir: Path,
                                                          work_root: Path, redis_url: str, status_key: str) -> None:
    job = make_job("echo ran", runtime_options={"gpus": "all"})
    _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman",
                      HYSDS_GPU_AVAILABLE="1")
    failed = [d for d in docs if d.get("resource") == "job" and d["status"] == "job-failed"]
    assert len(failed) == 1, [d.get("status") for d in docs]
    error = failed[0]["error"]
    assert error.startswith("runtime option gpus cannot be honoured on this node (gpus=all -> nvidia.com/gpu=all)")
    assert "unresolvable CDI devices nvidia.com/gpu=all" in error and "HYSDS_GPU_AVAILABLE=0" in error
    assert (job_dir_of(docs) / "_stdout.txt").read_text() == ""
    # HYSDS_GPU_AVAILABLE unset (this node's truth): the option is dropped, as HySDS drops it, and the job runs
    redis_clear(redis_url, status_key)
    _, docs = run_job(podman_ready, make_job("echo ran", runtime_options={"gpus": "all"}), shared_dir, work_root,
                      redis_url, status_key, "podman")
    assert terminal(docs)["status"] == "job-completed"
    (entry,) = json.loads((job_dir_of(docs) / "_docker_params.json").read_text()).values()
    assert "gpus" not in entry["runtime_options"] and entry["labels"]["sandbox_runner.gpus"].startswith("dropped")


def _dry_run(worker: Worker, job: dict[str, Any], shared_dir: Path, work_root: Path,
             **env: str) -> subprocess.CompletedProcess[str]:
    path = write_job(shared_dir, job)
    return worker.run(["sandbox-runner", "run-job", str(path), "--backend", "podman", "--dry-run"],
                      env=worker.env(SANDBOX_RUNNER_WORK_ROOT=str(work_root), **env))


def test_dry_run_shows_what_the_rootless_backend_would_send(podman_ready: Worker, shared_dir: Path,
                                                            work_root: Path, redis_url: str,
                                                            status_key: str) -> None:
    proc = _dry_run(podman_ready, make_job("echo hi", runtime_options={"network": "bridge"}), shared_dir, work_root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "network 'bridge' cannot be honoured: rootless podman's bridge needs /dev/net/tun" in proc.stderr
    proc = _dry_run(podman_ready, make_job("echo hi", runtime_options={"gpus": "device=0,1", "memory": "1g"}),
                    shared_dir, work_root, HYSDS_GPU_AVAILABLE="1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    create = doc["podman_create"]
    assert create["devices"] == [{"path": "nvidia.com/gpu=0"}, {"path": "nvidia.com/gpu=1"}]
    assert create["netns"] == {"nsmode": "host"} and create["userns"] == {"nsmode": "keep-id"}
    assert create["resource_limits"] == {"memory": {"limit": 1 << 30}}
    assert create["name"] == doc["name"] and create["command"] == ["echo", "hi"]
    # nothing was created or run
    assert not list(work_root.glob("jobs/*")) and read_status_list(redis_url, status_key) == []


def test_work_root_mounts_for_a_listed_type(podman_ready: Worker, shared_dir: Path, work_root: Path,
                                            redis_url: str, status_key: str) -> None:
    policy = _sharing_policy(shared_dir, '[work_root]\nallow = ["lw-*"]\n')
    other = work_root / "jobs" / "2026" / "other-job"
    other.mkdir(parents=True)
    (other / "_job.json").write_text("{}")
    subprocess.run(["chown", "-R", f"{podman_ready.uid}:{podman_ready.gid}", str(work_root / "jobs")], check=True)
    probe = (f"sh -c 'cat {other}/_job.json && ls -d {work_root}/tasks {work_root}/workers {work_root}/cache"
             f" && ! touch {other}/x && ! touch {work_root}/tasks/x && touch mine && echo ok'")
    _, docs = run_job(podman_ready, make_job(probe, job_type="lw-purge"), shared_dir, work_root, redis_url,
                      status_key, "podman", SANDBOX_RUNNER_SHARING_POLICY=policy)
    jd = job_dir_of(docs)
    assert terminal(docs)["status"] == "job-completed", (jd / "_stderr.txt").read_text()
    assert (jd / "_stdout.txt").read_text().endswith("ok\n") and (jd / "mine").exists()  # its own dir stays rw
    assert not (other / "x").exists()
    # a type not listed sees no other job's dir
    redis_clear(redis_url, status_key)
    _, docs = run_job(podman_ready, make_job(f"cat {other}/_job.json"), shared_dir, work_root, redis_url,
                      status_key, "podman", SANDBOX_RUNNER_SHARING_POLICY=policy)
    assert terminal(docs)["status"] == "job-failed"


#: what a PGE wrapper does with the socket: start its dependency image as a sibling on the job dir, wait for it
SIBLING_SH = """set -e
name=sr-test-sibling-$1
printf 'BODY' "$2" "$name" "$PWD" "$PWD" "$PWD" "$PWD" > body.json
./api SOCKET POST /v4.0.0/libpod/containers/create body.json | head -1
./api SOCKET POST "/v4.0.0/libpod/containers/$name/start" | head -1
./api SOCKET POST "/v4.0.0/libpod/containers/$name/wait" | tail -1
./api SOCKET DELETE "/v4.0.0/libpod/containers/$name" | head -1
"""
#: the sibling's create body (a printf format: image, name, then the job dir four times)
SIBLING_BODY = json.dumps({
    "image": "%s", "name": "%s", "command": ["sh", "-c", "echo from-sibling > %s/sibling.txt"], "work_dir": "%s",
    "mounts": [{"type": "bind", "source": "%s", "destination": "%s", "options": ["rbind", "rw"]}],
    "netns": {"nsmode": "none"}, "userns": {"nsmode": "keep-id"}})


def test_allowed_job_starts_a_sibling_container_on_its_job_dir(podman_ready: Worker, shared_dir: Path,
                                                              work_root: Path, redis_url: str,
                                                              status_key: str) -> None:
    client = _api_client(shared_dir)
    script = shared_dir / "sibling.sh"
    script.write_text(SIBLING_SH.replace("SOCKET", podman_ready.socket).replace("BODY", SIBLING_BODY))
    script.chmod(0o644)
    policy = _sharing_policy(shared_dir, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n')
    tag = uuid.uuid4().hex[:8]
    job = make_job(f"sh sibling.sh {tag} {BUSYBOX}", job_type="job-SCIFLO_L3",
                   container_mappings={str(client): "api", str(script): "sibling.sh"})
    try:
        _, docs = run_job(podman_ready, job, shared_dir, work_root, redis_url, status_key, "podman",
                          SANDBOX_RUNNER_SHARING_POLICY=policy)
    finally:  # never leave the sibling behind, whatever happened
        podman_ready.run(["podman", "--remote", "--url", f"unix://{podman_ready.socket}", "rm", "-f",
                          f"sr-test-sibling-{tag}"])
    jd = job_dir_of(docs)
    out = (jd / "_stdout.txt").read_text()
    assert terminal(docs)["status"] == "job-completed", out + (jd / "_stderr.txt").read_text()
    # created, started, exit code 0, removed
    assert out.splitlines() == ["HTTP/1.0 201 Created", "HTTP/1.0 204 No Content", "0", "HTTP/1.0 200 OK"], out
    # the sibling wrote into the job's dir: the same path on the host, in the job, and in the sibling
    assert (jd / "sibling.txt").read_text() == "from-sibling\n"
    assert (jd / "sibling.txt").stat().st_uid == podman_ready.uid
