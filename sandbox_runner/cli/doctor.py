"""``sandbox-runner doctor``: what a rootless node needs, checked, with what to do when it is missing."""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandbox_runner.cli.exits import EXIT_FAILED, EXIT_OK
from sandbox_runner.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _run(argv: list[str], timeout: float = 10) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_podman() -> Check:
    path = shutil.which("podman")
    if not path:
        return Check("podman", False, "podman is not on PATH",
                     "apt-get install podman runc uidmap (or use --backend subprocess)", required=False)
    code, out = _run(["podman", "--version"])
    return Check("podman", code == 0, out.splitlines()[0] if out else f"exit {code}")


def check_runtime() -> Check:
    if not shutil.which("podman"):
        return Check("oci runtime", False, "no podman", required=False)
    code, out = _run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Path}}"])
    if code != 0:
        return Check("oci runtime", False, out.splitlines()[-1] if out else f"podman info exit {code}",
                     "set runtime = \"runc\" under [engine] in ~/.config/containers/containers.conf")
    ok = out.split()[0] == "runc" if out else False
    return Check("oci runtime", ok, out,
                 "" if ok else "crun fails on hybrid cgroups here: set runtime = \"runc\" in containers.conf",
                 required=False)


def _has_range(path: Path, user: str, uid: int) -> bool:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    return any(line.split(":")[0] in (user, str(uid)) for line in lines if line.count(":") == 2)


def check_subids() -> Check:
    user, uid = getpass.getuser(), os.getuid()
    missing = [f.name for f in (Path("/etc/subuid"), Path("/etc/subgid")) if not _has_range(f, user, uid)]
    if uid == 0:
        return Check("subuid/subgid", True, "running as root (rootful); not needed", required=False)
    return Check("subuid/subgid", not missing,
                 f"ranges for {user} present" if not missing else f"no range for {user} in {', '.join(missing)}",
                 f"as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}")


def check_userns() -> Check:
    code, out = _run(["unshare", "-Ur", "true"])
    return Check("user namespaces", code == 0, "unprivileged user namespaces work" if code == 0 else out,
                 "sysctl -w kernel.unprivileged_userns_clone=1 / user.max_user_namespaces=15000")


def check_socket(settings: Settings) -> Check:
    """The API service answers, and is new enough for ``keep-id:uid=,gid=`` (podman 4.3).

    podman-py serves this one-off check; the per-job path speaks the same REST API through a small stdlib
    client (podman-py costs ~0.15 s to import and cannot attach to a container: see backends/podman/api.py).
    """
    from podman import PodmanClient
    from podman.errors import APIError, PodmanError
    from requests.exceptions import RequestException

    from sandbox_runner.backends.podman.backend import default_socket_url

    url = default_socket_url(settings.env, os.getuid(), settings.podman_socket)
    fix = f"podman --runtime runc system service --time=0 {url} &  (the worker also starts one itself)"
    try:
        with PodmanClient(base_url=url, timeout=5) as client:
            version = str(client.version().get("Version", "?"))
    except (APIError, PodmanError, RequestException, OSError) as exc:
        return Check("podman API socket", False, f"{url}: no podman service answers ({type(exc).__name__})", fix,
                     required=False)
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts and parts < (4, 3):
        return Check("podman API socket", False, f"{url}: podman {version} is older than 4.3 (keep-id:uid=)",
                     "upgrade podman to 4.3 or newer", required=False)
    return Check("podman API socket", True, f"{url} answers (podman {version})", required=False)


def check_bwrap() -> Check:
    if not shutil.which("bwrap"):
        return Check("bubblewrap", False, "bwrap not on PATH", "apt-get install bubblewrap", required=False)
    code, out = _run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-all", "true"])
    return Check("bubblewrap", code == 0, "bwrap sandbox works" if code == 0 else out, required=False)


def check_space(settings: Settings) -> Check:
    root = settings.node_root
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    pct = 100.0 * usage.free / usage.total if usage.total else 0.0
    threshold = settings.min_free_percent if settings.min_free_percent is not None else 10.0
    ok = pct > threshold
    writable = os.access(probe, os.W_OK)
    return Check("work root", ok and writable,
                 f"{root}: {pct:.1f}% free ({usage.free // 2**30} GiB){'' if writable else ', not writable'}",
                 "free space or point SANDBOX_RUNNER_WORK_ROOT elsewhere")


def check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("redis", True, "not configured: events go to <work root>/events/events.msgpack",
                     required=False)
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).ping()
        return Check("redis", True, f"{settings.redis_url} answers")
    except redis.RedisError as exc:
        return Check("redis", False, f"{settings.redis_url}: {exc}", "start redis or fix SANDBOX_RUNNER_REDIS_URL")


def check_sharing(settings: Settings) -> Check:
    """The worker files every job gets (celeryconfig.py, datasets.json) pass the mount policy, and what the
    sharing policy gives away: found here rather than as every job's job-failed."""
    from sandbox_runner.errors import SandboxRunnerError
    from sandbox_runner.policy.mounts import load_mount_policy
    from sandbox_runner.policy.sharing import load_sharing_policy, worker_file_mounts

    root = settings.work_root or settings.default_work_root
    try:
        sharing = load_sharing_policy(settings.sharing_policy)
        policy = load_mount_policy(settings.mount_policy, env=settings.env, work_root=str(root))
        files = worker_file_mounts(settings.celery_cfg, settings.datasets_cfg, (), job_dir=str(root / "jobs" / "x"),
                                   policy=policy, env=settings.env)
    except SandboxRunnerError as exc:
        return Check("job files", False, str(exc),
                     "move the file under an allowed prefix, or add its directory to allow in the mount policy")
    given = ", ".join(f"{m.container.rsplit('/', 1)[1]} <- {m.host}" for m in files) or "none configured"
    socket_types = ", ".join(sharing.engine_socket) or "no job type"
    detail = f"in every job dir (ro): {given}; engine socket for: {socket_types} ({sharing.source})"
    if sharing.engine_socket and settings.uid == 0:
        return Check("job files", False, detail, "the engine socket is given only by rootless workers: jobs of "
                     "those types fail here; run the worker as an unprivileged user", required=False)
    return Check("job files", True, detail, required=False)


def doctor_command(args: argparse.Namespace, settings: Settings) -> int:
    return doctor(settings.with_overrides(work_root=args.work_root, doctor_image=args.image,
                                          doctor_image_url=args.image_url))


def doctor(settings: Settings) -> int:
    from sandbox_runner.cli.doctor_engine import check_job_container, check_work_root_in_service

    checks: list[Callable[[], Check]] = [
        check_podman, check_runtime, check_subids, check_userns,
        lambda: check_socket(settings), check_bwrap, lambda: check_space(settings), lambda: check_redis(settings),
        lambda: check_sharing(settings),
        # the service's view first: the container check may restart a service of ours that lacks the mount
        lambda: check_work_root_in_service(settings), lambda: check_job_container(settings),
    ]
    results = [c() for c in checks]
    for r in results:
        mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
        print(f"{mark} {r.name:<18} {r.detail}")
        if not r.ok and r.fix:
            print(f"     {'':<18} fix: {r.fix}")
    can_run = any(r.ok for r in results if r.name in ("podman API socket", "bubblewrap")) or any(
        r.ok for r in results if r.name == "podman")
    failed = [r for r in results if r.required and not r.ok]
    if not can_run:
        print("no way to run jobs: neither podman nor bubblewrap works here")
    return EXIT_OK if not failed and can_run else EXIT_FAILED
