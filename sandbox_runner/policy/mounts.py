"""HySDS ``container_mappings`` / ``imported_worker_files`` -> checked :class:`Mount` list.

HySDS expands ``$VARS`` in the host path and refuses only a short prefix blacklist and ``/``. Here every
host path is ``realpath``'ed first (a symlink or ``..`` cannot point past the checks), must exist, must lie
under an allow-listed prefix, and must neither match nor *contain* a denied path (mounting ``/run/user/1000``
would expose the podman socket inside it as surely as mounting the socket itself). The policy lives in a TOML
file (``policies/mounts.toml`` ships as the default).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

from sandbox_runner.backends.base import Mount, MountMode
from sandbox_runner.errors import ConfigError, MountPolicyError
from sandbox_runner.policy.files import read_policy
from sandbox_runner.procstat import peer_pid

#: Refused whatever the policy file says: talking to the engine is a way out of any sandbox.
ENGINE_SOCKET_PATTERNS: tuple[str, ...] = (
    "/run/user/*/podman/podman.sock",
    "/run/podman/podman.sock",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/user/*/docker.sock",
    "/run/containerd/containerd.sock",
)
#: Engine sockets at non-standard places (a custom XDG_RUNTIME_DIR, a relocated service) are caught by name.
ENGINE_SOCKET_NAMES = frozenset({"podman.sock", "docker.sock", "containerd.sock"})
#: ... and, under any name, by who listens on them: these programs serve a container engine's API
ENGINE_PROGRAMS = frozenset({"podman", "dockerd", "containerd", "docker-proxy"})
#: Container targets that would shadow the kernel interfaces or the whole root.
_FORBIDDEN_TARGETS = ("/proc", "/sys", "/dev")
_MODES: tuple[MountMode, ...] = ("ro", "rw")
_VAR_RE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|(?P<bare>\w+))")
_GLOB_CHARS = re.compile(r"[*?\[]")


class UnsetVariableError(KeyError):
    """A ``$VAR`` referenced in a path is not set (and has no ``${VAR:-default}``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}``. Unset or empty is an error (os.path.expandvars
    would keep the literal ``$VAR``)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("bare")
        value = env.get(name)
        if value:
            return value
        if m.group("default") is not None:
            return m.group("default")
        # Set-but-empty counts as unset: "$HOME/.netrc" with HOME="" must not quietly become "/.netrc".
        raise UnsetVariableError(name)

    return _VAR_RE.sub(sub, text)


def _abs_norm(path: str) -> str:
    # posixpath.normpath keeps a leading "//"; collapse it so prefix comparisons see one spelling.
    return "/" + posixpath.normpath(path).lstrip("/")


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _is_under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _overlaps(path: str, pattern: str) -> bool:
    """True if ``path`` is, is under, or contains something matching ``pattern`` (compared per component)."""
    pp, qq = _parts(path), _parts(pattern)
    return all(fnmatchcase(a, b) for a, b in zip(pp, qq, strict=False))


def _real_pattern(pattern: str) -> str:
    """Realpath the glob-free leading part, so ``/var/run/docker.sock`` also denies ``/run/docker.sock``."""
    parts = _parts(pattern)
    fixed = 0
    while fixed < len(parts) and not _GLOB_CHARS.search(parts[fixed]):
        fixed += 1
    head = os.path.realpath("/" + "/".join(parts[:fixed]))
    return _abs_norm("/".join([head, *parts[fixed:]]))


@dataclass(frozen=True)
class MountPolicy:
    """Which host paths a job may bind-mount. ``allow``/``deny`` are absolute, variables already expanded."""

    allow: tuple[str, ...]
    deny: tuple[str, ...] = ()
    default_mode: MountMode = "ro"
    #: where the policy came from, for messages.
    source: str = field(default="<inline>", compare=False)

    def __post_init__(self) -> None:
        for p in (*self.allow, *self.deny):
            if not p.startswith("/"):
                raise ValueError(f"policy path {p!r} is not absolute")
        if self.default_mode not in _MODES:
            raise ValueError(f"default_mode {self.default_mode!r} is not one of {_MODES}")
        # Compare against realpaths: a host path is realpath'ed before the check, so an allow-listed symlink
        # (e.g. /var/tmp -> /data/tmp) must be compared by its target, and deny needs both spellings.
        allow = tuple(dict.fromkeys(os.path.realpath(p) for p in self.allow))
        deny_all = (*self.deny, *ENGINE_SOCKET_PATTERNS)
        deny = tuple(dict.fromkeys(q for p in deny_all for q in (_abs_norm(p), _real_pattern(p))))
        object.__setattr__(self, "allow", allow)
        object.__setattr__(self, "deny", deny)

    def check_host_path(self, path: str) -> str:
        """Return the realpath of ``path`` if a job may mount it, else raise :class:`MountPolicyError`."""
        if not path.startswith("/"):
            raise MountPolicyError(f"host path {path!r} is not absolute")
        real = os.path.realpath(path)
        via = "" if real == _abs_norm(path) else f" (resolved from {path})"
        if real == "/":
            raise MountPolicyError(f"host path / may not be mounted{via}")
        for pattern in self.deny:
            if _overlaps(real, pattern):
                raise MountPolicyError(f"host path {real}{via} is refused by deny pattern {pattern}")
        if posixpath.basename(real) in ENGINE_SOCKET_NAMES:
            raise MountPolicyError(f"host path {real}{via} looks like a container engine socket")
        served = engine_served(real)
        if served is not None:
            raise MountPolicyError(f"host path {real}{via} is a container engine socket ({served})")
        if not any(_is_under(real, prefix) for prefix in self.allow):
            allowed = ", ".join(self.allow) or "nothing"
            raise MountPolicyError(f"host path {real}{via} is not under an allowed prefix ({allowed})")
        if not os.path.exists(real):
            raise MountPolicyError(f"host path does not exist: {real}{via}")
        return real


def load_mount_policy(path: str | Path | None, *, env: Mapping[str, str], work_root: str) -> MountPolicy:
    """Read a policy file (None: the shipped default); ``$WORK_ROOT`` expands to ``work_root``."""
    source, doc = read_policy(path, "mounts.toml", "mount policy")
    unknown = sorted(set(doc) - {"allow", "deny", "default_mode"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; expected allow, deny, default_mode", source=source)
    vars_env = {**env, "WORK_ROOT": work_root}
    allow = _path_list(doc, "allow", vars_env, source, required=True)
    deny = _path_list(doc, "deny", vars_env, source, required=False)
    mode = doc.get("default_mode", "ro")
    if mode not in _MODES:
        raise ConfigError(f"must be one of {list(_MODES)}, got {mode!r}", field="default_mode", source=source)
    return MountPolicy(allow=allow, deny=deny, default_mode=cast(MountMode, mode), source=source)


def _path_list(
    doc: Mapping[str, Any], key: str, env: Mapping[str, str], source: str, *, required: bool
) -> tuple[str, ...]:
    if key not in doc and not required:
        return ()
    raw = doc.get(key)
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError("must be a list of non-empty strings", field=key, source=source)
    out: list[str] = []
    for i, item in enumerate(raw):
        try:
            value = expand_vars(item, env)
        except UnsetVariableError:
            # An unset variable drops the entry: for allow that only narrows the policy, and for deny there
            # is nothing at an unknown location to protect (the engine sockets are denied by code anyway).
            continue
        if not value.startswith("/"):
            raise ConfigError(
                f"{item!r} expands to {value!r}, not an absolute path", field=f"{key}[{i}]", source=source
            )
        out.append(value)
    return tuple(out)


def resolve_mounts(
    mappings: Mapping[str, Any] | None, *, job_dir: str, policy: MountPolicy, env: Mapping[str, str]
) -> tuple[Mount, ...]:
    """Turn ``{host: container | [container] | [container, mode]}`` into checked mounts, in mapping order."""
    if not mappings:
        return ()
    job_dir = _abs_norm(job_dir)
    mounts: list[Mount] = []
    targets: dict[str, str] = {}
    for key, value in mappings.items():
        label = f"mount {key!r} -> {value!r}"
        if not isinstance(key, str) or not key:
            raise MountPolicyError(f"{label}: host path must be a non-empty string")
        try:
            host = expand_vars(key, env)
        except UnsetVariableError as e:
            raise MountPolicyError(f"{label}: variable ${e.name} is not set") from None
        container, mode = _parse_value(label, value, policy.default_mode)
        target = _container_path(label, container, job_dir)
        try:
            real = policy.check_host_path(host)
        except MountPolicyError as e:
            raise MountPolicyError(f"{label}: {e}") from None
        if target in targets:
            raise MountPolicyError(f"{label}: container path {target} is already the target of {targets[target]!r}")
        targets[target] = key
        mounts.append(Mount(host=real, container=target, mode=mode))
    return tuple(mounts)


def _parse_value(label: str, value: Any, default_mode: MountMode) -> tuple[str, MountMode]:
    if isinstance(value, str):
        container, mode = value, default_mode
    elif isinstance(value, list | tuple) and len(value) in (1, 2):
        container = value[0]
        mode = value[1] if len(value) == 2 else default_mode
    else:
        raise MountPolicyError(f"{label}: value must be a path, [path] or [path, mode]")
    if not isinstance(container, str) or not container:
        raise MountPolicyError(f"{label}: container path must be a non-empty string")
    if mode not in _MODES:
        raise MountPolicyError(f"{label}: mode must be 'ro' or 'rw', got {mode!r}")
    return container, cast(MountMode, mode)


def _container_path(label: str, container: str, job_dir: str) -> str:
    if container.startswith("/"):
        target = _abs_norm(container)
    else:
        # HySDS: a relative container path lands in the job dir; it may not climb out of it with "..".
        target = _abs_norm(posixpath.join(job_dir, container))
        if not _is_under(target, job_dir):
            raise MountPolicyError(f"{label}: relative container path escapes the job dir {job_dir}")
    if target == "/" or target == job_dir or any(_is_under(target, p) for p in _FORBIDDEN_TARGETS):
        raise MountPolicyError(f"{label}: container path {target} may not be a mount target")
    return target


def engine_served(path: str) -> str | None:
    """Who serves the engine's API on ``path`` ("podman, pid N"), when it is such a socket or a dir directly holding
    one; None otherwise. A second service of the worker's own user, on a socket named anything (the probe's
    ``engine.sock``), would give the job that user's whole podman; the name and pattern checks cannot see it.
    Only a dir's own entries are looked at: a deep walk of every mounted tree would cost more than it protects."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return _engine_listener(path)
        if not os.path.isdir(path):
            return None
        with os.scandir(path) as entries:
            for entry in entries:
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found = _engine_listener(entry.path)
                    if found is not None:
                        return f"{entry.path}: {found}"
    except OSError:
        return None
    return None


def _engine_listener(sock: str) -> str | None:
    pid = peer_pid(sock)
    try:
        program = Path(f"/proc/{pid}/comm").read_text().strip() if pid else None
    except OSError:
        return None  # nobody listens, or not ours to look at: nothing that serves this user
    return f"served by {program}, pid {pid}" if program in ENGINE_PROGRAMS else None
