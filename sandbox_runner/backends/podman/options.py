"""HySDS ``runtime_options`` -> fields of podman's SpecGenerator (the body of ``POST /libpod/containers/create``).

HySDS passes ``runtime_options`` straight to the CLI as ``--<opt> <value>``. We map each onto a SpecGenerator
field instead; keys are matched case-insensitively with ``-`` read as ``_`` and leading dashes ignored, so
``"shm-size"``, ``"--shm_size"`` and ``"SHM_SIZE"`` are the same option. A value of None means "not given".

=========================  ===========================================================  =========================
runtime option (aliases)   value                                                        SpecGenerator field
=========================  ===========================================================  =========================
memory (m, mem_limit)      size: "4g", "512MB", 1073741824                              resource_limits.memory
memory_reservation         size                                                         resource_limits.memory
memory_swap                size, or -1 for unlimited                                    resource_limits.memory
cpus                       number of CPUs: "1.5" (CFS quota over a 100 ms period)       resource_limits.cpu
cpu_shares (c)             int                                                          resource_limits.cpu
cpuset_cpus                "0-3", "0,2"                                                 resource_limits.cpu
pids_limit                 int                                                          resource_limits.pids
shm_size                   size                                                         shm_size
ulimit (ulimits)           "nofile=1024:2048", a list of those, {"nofile": "1024:2048"}  r_limits
env (e)                    "K=V", a list of those, {"K": "V"}; wins over the command's  env
network (net)              "none", "host", "bridge" (rootful; slirp4netns is broken     netns
                           rootless here); the default is netpolicy's choice
init                       bool: true, "yes", "" (= flag given); on unless set false    init
cap_add, cap_drop          "NET_RAW,CHOWN" or a list                                    cap_add, cap_drop
security_opt               no-new-privileges, seccomp=PATH|unconfined, apparmor=P,      no_new_privileges, ...
                           label=OPT
read_only                  bool                                                         read_only_filesystem
tmpfs                      "/scratch" or "/scratch:size=1g,mode=1777", or a list        mounts (tmpfs)
hostname (h)               str                                                          hostname
user (u)                   "uid[:gid]": mapped like spec.uid/gid, which it overrides    user, userns
group_add                  "video" or a list                                            groups
stop_signal                "SIGTERM", "TERM", 15                                        stop_signal
device (devices)           "/dev/fuse" or a list                                        devices
gpus                       "all", a count, "device=0,2" (see :mod:`.podman_gpus`)       devices (CDI nvidia.com/gpu)
rm, detach (d)             ignored, logged (always detached, always removed)            -
privileged, userns,        refused with the reason (they would undo keep-id, the mount  -
volume (v), mount, pid,    policy or the job-dir contract)
ipc, uts, workdir, name
anything else              BackendError naming the option                               -
=========================  ===========================================================  =========================

On cgroups v1 (this machine), rootless podman accepts the resource limits but does not enforce them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from sandbox_runner.backends.podman.gpus import add_gpus
from sandbox_runner.errors import BackendError, SandboxRunnerError
from sandbox_runner.units import parse_size

__all__ = ["NETWORKS", "Body", "map_runtime_options", "normalize_key", "set_network"]

NETWORKS = ("none", "host", "bridge")

Body = dict[str, Any]

_REFUSED = {
    "privileged": "a privileged container is not allowed",
    "userns": "the backend needs --userns=keep-id so that job files belong to the worker's user",
    "volume": "mounts come from container_mappings, which are checked against the mount policy",
    "mount": "mounts come from container_mappings, which are checked against the mount policy",
    "pid": "sharing the host's PID namespace is not allowed",
    "ipc": "sharing the host's IPC namespace is not allowed",
    "uts": "sharing the host's UTS namespace is not allowed",
    "workdir": "the job's working directory is always its job dir",
    "name": "the container name is chosen by the worker",
}
_ALIASES = {
    "m": "memory", "mem_limit": "memory", "memswap_limit": "memory_swap", "mem_reservation": "memory_reservation",
    "c": "cpu_shares", "ulimits": "ulimit", "e": "env", "net": "network", "h": "hostname", "u": "user",
    "devices": "device", "d": "detach", "v": "volume", "w": "workdir", "userns_mode": "userns",
}  # fmt: skip


def normalize_key(name: str) -> str:
    key = name.strip().lstrip("-").lower().replace("-", "_")
    return _ALIASES.get(key, key)


def _size(opt: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return value  # -1 = unlimited (memory_swap)
    try:
        return parse_size(value, what=f"runtime option {opt}")
    except SandboxRunnerError as exc:
        raise BackendError(str(exc)) from None


def _int(opt: str, value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise BackendError(f"runtime option {opt}: expected a whole number, got {value!r}") from None


def _bool(opt: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "1", "true", "yes", "on"):  # "" = a CLI flag given without a value
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BackendError(f"runtime option {opt}: expected true or false, got {value!r}")


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value]


def _items(value: Any) -> list[str]:
    """A single string stays whole (``"nofile=1:2"``); lists are taken as given."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _limits(body: Body, group: str) -> dict[str, Any]:
    limits: dict[str, Any] = body.setdefault("resource_limits", {}).setdefault(group, {})
    return limits


def _env(opt: str, value: Any, body: Body) -> None:
    pairs = value.items() if isinstance(value, Mapping) else (item.partition("=")[::2] for item in _items(value))
    for key, val in pairs:
        if not key:
            raise BackendError(f"runtime option {opt}: expected KEY=value, got {value!r}")
        body.setdefault("env", {})[str(key)] = str(val)


def _ulimit(opt: str, value: Any, body: Body) -> None:
    entries = value.items() if isinstance(value, Mapping) else (item.partition("=")[::2] for item in _items(value))
    for name, limits in entries:
        soft, _, hard = str(limits).partition(":")
        if not name or not soft:
            raise BackendError(f"runtime option {opt}: expected NAME=soft[:hard], got {value!r}")
        rtype = name if name.startswith("RLIMIT_") else name.lower()
        body.setdefault("r_limits", []).append(
            {"type": rtype, "soft": _int(opt, soft), "hard": _int(opt, hard or soft)}
        )


def _cpus(opt: str, value: Any, body: Body) -> None:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise BackendError(f"runtime option {opt}: expected a number of CPUs, got {value!r}") from None
    if cpus <= 0:
        raise BackendError(f"runtime option {opt}: must be positive, got {value!r}")
    # what ``podman run --cpus`` does: CFS quota over the default 100 ms period
    _limits(body, "cpu").update(period=100_000, quota=round(cpus * 100_000))


def _security_opt(opt: str, value: Any, body: Body) -> None:
    for item in _items(value):
        key, sep, val = item.replace(":", "=", 1).partition("=") if "=" in item or ":" in item else (item, "", "")
        if key == "no-new-privileges" and (not sep or _bool(opt, val)):
            body["no_new_privileges"] = True
        elif key == "seccomp" and val:
            body["seccomp_profile_path"] = val
        elif key == "apparmor" and val:
            body["apparmor_profile"] = val
        elif key == "label" and val:
            body.setdefault("selinux_opts", []).append(val)
        else:
            raise BackendError(f"runtime option {opt}: unsupported value {item!r}")


def _tmpfs(opt: str, value: Any, body: Body) -> None:
    for item in _items(value):
        dest, _, options = item.partition(":")
        if not dest.startswith("/"):
            raise BackendError(f"runtime option {opt}: expected /path[:options], got {item!r}")
        body.setdefault("mounts", []).append(
            {"type": "tmpfs", "source": "tmpfs", "destination": dest, "options": _list(options)}
        )


def _stop_signal(opt: str, value: Any, body: Body) -> None:
    text = str(value).strip().upper()
    if text.isdigit():
        body["stop_signal"] = int(text)
        return
    try:
        body["stop_signal"] = int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
    except KeyError:
        raise BackendError(f"runtime option {opt}: unknown signal {value!r}") from None


def set_network(opt: str, value: Any, body: Body) -> None:
    net = str(value).strip().lower()
    if net not in NETWORKS:
        raise BackendError(f"network {value!r} is not supported: use 'none', 'host' or (rootful only) 'bridge'")
    body["netns"] = {"nsmode": net}


_Handler = Callable[[str, Any, Body], None]
_HANDLERS: dict[str, _Handler] = {
    "memory": lambda o, v, b: _limits(b, "memory").update(limit=_size(o, v)),
    "memory_reservation": lambda o, v, b: _limits(b, "memory").update(reservation=_size(o, v)),
    "memory_swap": lambda o, v, b: _limits(b, "memory").update(swap=_size(o, v)),
    "cpus": _cpus,
    "cpu_shares": lambda o, v, b: _limits(b, "cpu").update(shares=_int(o, v)),
    "cpuset_cpus": lambda o, v, b: _limits(b, "cpu").update(cpus=str(v)),
    "pids_limit": lambda o, v, b: _limits(b, "pids").update(limit=_int(o, v)),
    "shm_size": lambda o, v, b: b.update(shm_size=_size(o, v)),
    "ulimit": _ulimit,
    "env": _env,
    "network": set_network,
    "init": lambda o, v, b: b.update(init=_bool(o, v)),
    "cap_add": lambda o, v, b: b.setdefault("cap_add", []).extend(_list(v)),
    "cap_drop": lambda o, v, b: b.setdefault("cap_drop", []).extend(_list(v)),
    "security_opt": _security_opt,
    "read_only": lambda o, v, b: b.update(read_only_filesystem=_bool(o, v)),
    "tmpfs": _tmpfs,
    "hostname": lambda o, v, b: b.update(hostname=str(v)),
    "user": lambda o, v, b: b.update(user=str(v)),
    "group_add": lambda o, v, b: b.setdefault("groups", []).extend(_list(v)),
    "stop_signal": _stop_signal,
    "device": lambda o, v, b: b.setdefault("devices", []).extend({"path": d} for d in _list(v)),
    "gpus": add_gpus,
}
_IGNORED = {
    "rm": "containers are always removed after the job",
    "detach": "the backend always runs the container detached",
}


def map_runtime_options(options: Mapping[str, Any], body: Body | None = None) -> tuple[Body, list[str]]:
    """Apply ``options`` to ``body`` (a new dict by default); return it and notes about ignored options."""
    body = {} if body is None else body
    notes: list[str] = []
    for name, value in options.items():
        key = normalize_key(name)
        if value is None:
            continue
        if key in _HANDLERS:
            _HANDLERS[key](name, value, body)
        elif key in _IGNORED:
            notes.append(f"runtime option {name!r} ignored: {_IGNORED[key]}")
        elif key in _REFUSED:
            raise BackendError(f"runtime option {name!r} is not allowed: {_REFUSED[key]}")
        else:
            raise BackendError(f"runtime option {name!r} is not supported by the podman backend")
    return body, notes
