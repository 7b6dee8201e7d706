"""``_run.sh``: the job's command as a script an operator can re-run by hand.

HySDS writes every worker environment variable into it as a comment, which leaks credentials into work dirs and
triage bundles (and, since HC-563, multi-line values spill into executable lines). We write only what the job
itself asked for: its command env, and the engine command line equivalent to what the backend ran.
"""

from __future__ import annotations

import os
import shlex

from sandbox_runner.backends.base import ContainerSpec
from sandbox_runner.backends.podman.spec import user_option, userns_and_user


def podman_argv(spec: ContainerSpec, socket_url: str | None = None) -> list[str]:
    argv = ["podman"]
    if socket_url:
        argv += ["--remote", "--url", socket_url]
    argv += ["run", "--rm", "--init"]
    # the user namespace and user the backend's create body gets (the same function decides both)
    options, uid, gid, named = user_option(spec)
    userns, user = userns_and_user(uid, gid, os.getuid(), os.getgid())
    if userns is not None:
        argv.append(f"--userns={userns['nsmode']}" + (f":{userns['value']}" if userns.get("value") else ""))
    argv += [f"--network={spec.network}", f"--name={spec.name}"]
    if named or user:
        argv += ["--user", str(named or user)]
    for key, value in spec.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in spec.env.items():
        argv += ["--env", f"{key}={value}"]
    for opt, value in options.items():
        if opt == "gpus":  # podman 4 has no --gpus: the CDI devices the backend asks for instead
            argv += [f"--device={name}" for name in _gpu_names(value)]
            continue
        argv += [f"--{opt}" if value is True else f"--{opt}={value}"]
    argv += ["-v", f"{spec.workdir}:{spec.workdir}:rw"]
    for m in spec.mounts:
        argv += ["-v", f"{m.host}:{m.container}:{m.mode}"]
    if spec.engine_socket is not None:  # given by the sharing policy
        from sandbox_runner.backends.podman.spec import engine_socket_env

        argv += ["-v", f"{spec.engine_socket}:{spec.engine_socket}"]
        for key, value in engine_socket_env(spec.engine_socket).items():
            argv += ["--env", f"{key}={value}"]
    argv += ["-w", spec.workdir, str(spec.image), *spec.argv]
    return argv


def _gpu_names(value: object) -> list[str]:
    from sandbox_runner.backends.podman.gpus import gpu_devices
    from sandbox_runner.errors import BackendError

    try:
        return gpu_devices("gpus", value)
    except BackendError:
        return [f"<gpus={value} cannot be mapped>"]


def subprocess_argv(spec: ContainerSpec) -> list[str]:
    env = [f"{k}={v}" for k, v in spec.env.items()]
    return ["env", *env, *spec.argv] if env else list(spec.argv)


def render_run_script(spec: ContainerSpec, backend: str, socket_url: str | None = None) -> str:
    argv = podman_argv(spec, socket_url) if backend == "podman" and spec.image else subprocess_argv(spec)
    lines = [
        "#!/bin/sh",
        f"# sandbox_runner: re-run job {spec.labels.get('sandbox_runner.job_id', '')} by hand "
        f"({backend} backend). The worker's own environment is deliberately not recorded here.",
        f"cd {shlex.quote(spec.workdir)} || exit 1",
        " \\\n    ".join(shlex.quote(a) for a in argv),
        "",
    ]
    return "\n".join(lines)
