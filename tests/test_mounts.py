"""Mount policy: container_mappings -> checked Mounts (allow-list, deny, realpath, modes, variables)."""

from __future__ import annotations

import os
import posixpath
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_runner.backends.base import Mount
from sandbox_runner.errors import ConfigError, MountPolicyError
from sandbox_runner.policy.mounts import MountPolicy, load_mount_policy, resolve_mounts

JOB = "/work/jobs/2026/01/01/00/00/job-1"


def make_tree(root: Path) -> dict[str, Path]:
    """allowed/{data.txt, dir/, secrets/key, x.pem, podman.sock, link_in -> data.txt, link_up -> ..,
    link_out -> ../outside/secret.txt, link_sock -> /run/podman/podman.sock}, outside/secret.txt"""
    allowed, outside = root / "allowed", root / "outside"
    for d in (allowed / "dir", allowed / "secrets", outside):
        d.mkdir(parents=True, exist_ok=True)
    for f in (allowed / "data.txt", allowed / "secrets" / "key", allowed / "x.pem", outside / "secret.txt"):
        f.write_text("x")
    (allowed / "podman.sock").write_text("")  # stands in for a socket at a non-standard place
    for name, target in {
        "link_in": "data.txt",
        "link_out": "../outside/secret.txt",
        "link_up": "..",
        "link_sock": "/run/podman/podman.sock",
    }.items():
        if not (allowed / name).is_symlink():
            (allowed / name).symlink_to(target)
    return {"root": root, "allowed": allowed, "outside": outside}


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    return make_tree(tmp_path)


@pytest.fixture
def policy(tree: dict[str, Path]) -> MountPolicy:
    return MountPolicy(allow=(str(tree["allowed"]),), deny=(f"{tree['allowed']}/secrets", f"{tree['allowed']}/*.pem"))


def resolve(mappings: dict[str, Any], policy: MountPolicy, env: dict[str, str] | None = None) -> tuple[Mount, ...]:
    return resolve_mounts(mappings, job_dir=JOB, policy=policy, env=env or {})


def refused(mappings: dict[str, Any], policy: MountPolicy, match: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(MountPolicyError, match=match) as info:
        resolve(mappings, policy, env)
    message = str(info.value)
    assert "\n" not in message and repr(next(iter(mappings))) in message  # one line, names the mapping
    return message


# --- allow-list and normalization -----------------------------------------------------------------------------
def test_allowed_file_resolves_to_realpath(tree: dict[str, Path], policy: MountPolicy) -> None:
    data = os.path.realpath(tree["allowed"] / "data.txt")
    assert resolve({f"{tree['allowed']}/data.txt": "/data/in.txt"}, policy) == (Mount(data, "/data/in.txt", "ro"),)
    assert resolve({f"{tree['allowed']}/link_in": "/x"}, policy)[0].host == data
    assert resolve({f"{tree['allowed']}/dir/../data.txt": "/x"}, policy)[0].host == data


def test_outside_allow_list_refused(tree: dict[str, Path], policy: MountPolicy) -> None:
    refused({f"{tree['outside']}/secret.txt": "/x"}, policy, "not under an allowed prefix")
    refused({f"{tree['allowed']}/../outside/secret.txt": "/x"}, policy, "not under an allowed prefix")
    refused({"/etc/hostname": "/x"}, policy, "not under an allowed prefix")


def test_symlink_pointing_outside_refused(tree: dict[str, Path], policy: MountPolicy) -> None:
    msg = refused({f"{tree['allowed']}/link_out": "/x"}, policy, "not under an allowed prefix")
    assert "resolved from" in msg
    refused({f"{tree['allowed']}/link_up/outside": "/x"}, policy, "not under an allowed prefix")


def test_root_refused_even_if_allowed(tree: dict[str, Path]) -> None:
    everything = MountPolicy(allow=("/",))
    refused({"/": "/host"}, everything, "may not be mounted")
    refused({f"{tree['allowed']}/../../../../../../..": "/host"}, everything, "may not be mounted")


def test_missing_host_path(tree: dict[str, Path], policy: MountPolicy) -> None:
    refused({f"{tree['allowed']}/nope.txt": "/x"}, policy, "host path does not exist")


def test_relative_host_path_refused(policy: MountPolicy) -> None:
    refused({"data.txt": "/x"}, policy, "not absolute")


# --- deny -------------------------------------------------------------------------------------------------------
def test_deny_wins_under_allowed_prefix(tree: dict[str, Path], policy: MountPolicy) -> None:
    refused({f"{tree['allowed']}/secrets/key": "/x"}, policy, "deny pattern")
    refused({f"{tree['allowed']}/secrets": "/x"}, policy, "deny pattern")
    refused({f"{tree['allowed']}/x.pem": "/x"}, policy, "deny pattern")  # glob
    # a parent of a denied path would expose it too
    refused({str(tree["allowed"]): "/x"}, policy, "deny pattern")


def test_engine_sockets_refused_even_if_allowed(tree: dict[str, Path]) -> None:
    lax = MountPolicy(allow=("/run", "/var/run", str(tree["allowed"])), deny=())  # the file forgot them
    for sock in ("/run/podman/podman.sock", "/var/run/docker.sock", "/run/user/1000/podman/podman.sock"):
        refused({sock: "/var/run/docker.sock"}, lax, "deny pattern")
    refused({"/run/user/1000": "/x"}, lax, "deny pattern")  # holds podman/podman.sock
    refused({"/run": "/x"}, lax, "deny pattern")
    refused({f"{tree['allowed']}/link_sock": "/x"}, lax, "deny pattern")  # a symlink to the socket
    refused({f"{tree['allowed']}/podman.sock": "/x"}, lax, "engine socket")  # by name, anywhere


def test_default_deny_list(tree: dict[str, Path], tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".netrc").write_text("machine x")
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    (tmp_path / "xdg").mkdir()
    pol = load_mount_policy(None, env=env, work_root=str(tree["allowed"]))
    assert resolve({"$HOME/.netrc": ".netrc"}, pol, env)[0] == Mount(str(home / ".netrc"), f"{JOB}/.netrc", "ro")
    refused({"$HOME/.ssh": "/root/.ssh"}, pol, "deny pattern", env)
    refused({"$XDG_RUNTIME_DIR": "/xdg"}, pol, "deny pattern", env)
    for path in ("/proc/self", "/sys", "/dev/null", "/etc/shadow"):
        refused({path: "/x"}, MountPolicy(allow=("/",), deny=pol.deny), "deny pattern")


# --- container side and modes -----------------------------------------------------------------------------------
def test_container_paths(tree: dict[str, Path], policy: MountPolicy) -> None:
    host = f"{tree['allowed']}/data.txt"
    assert resolve({host: "inputs/a.txt"}, policy)[0].container == f"{JOB}/inputs/a.txt"
    assert resolve({host: "./a/../b.txt"}, policy)[0].container == f"{JOB}/b.txt"
    assert resolve({host: "//data//x/../y"}, policy)[0].container == "/data/y"
    refused({host: "../escape"}, policy, "escapes the job dir")
    for bad in ("/", "/proc/x", "/dev", ".", JOB):
        refused({host: bad}, policy, "may not be a mount target")


def test_modes(tree: dict[str, Path], policy: MountPolicy) -> None:
    host = f"{tree['allowed']}/data.txt"
    assert [resolve({host: v}, policy)[0].mode for v in ("/x", ["/x"], ["/x", "ro"], ["/x", "rw"])] == [
        "ro",
        "ro",
        "ro",
        "rw",
    ]
    rw_default = MountPolicy(allow=policy.allow, default_mode="rw")
    assert resolve({host: "/x"}, rw_default)[0].mode == "rw"
    refused({host: ["/x", "rx"]}, policy, "mode must be 'ro' or 'rw'")
    refused({host: ["/x", "Z"]}, policy, "mode must be")
    for bad_value in (["/x", "rw", "extra"], [], 42, {"path": "/x"}):
        refused({host: bad_value}, policy, "value must be")
    refused({host: [""]}, policy, "container path must be")


def test_duplicate_target_refused(tree: dict[str, Path], policy: MountPolicy) -> None:
    a, b = f"{tree['allowed']}/data.txt", f"{tree['allowed']}/dir"
    refused({a: "/x", b: "/x/"}, policy, "already the target")


def test_vars_expanded_unset_refused(tree: dict[str, Path], policy: MountPolicy) -> None:
    env = {"DATA": str(tree["allowed"]), "EMPTY": ""}
    want = os.path.realpath(tree["allowed"] / "data.txt")
    assert resolve({"$DATA/data.txt": "/a", "${DATA}/dir/../data.txt": "/b"}, policy, env)[1].host == want
    refused({"$NOPE/data.txt": "/x"}, policy, r"variable \$NOPE is not set", env)
    refused({"$EMPTY/data.txt": "/x"}, policy, r"variable \$EMPTY is not set", env)


def test_empty_mappings() -> None:
    pol = MountPolicy(allow=("/tmp",))
    assert resolve_mounts(None, job_dir=JOB, policy=pol, env={}) == ()
    assert resolve_mounts({}, job_dir=JOB, policy=pol, env={}) == ()


def test_check_host_path_for_other_callers(tree: dict[str, Path], policy: MountPolicy) -> None:
    assert policy.check_host_path(f"{tree['allowed']}/link_in") == os.path.realpath(tree["allowed"] / "data.txt")
    with pytest.raises(MountPolicyError, match="not under an allowed prefix"):
        policy.check_host_path(f"{tree['allowed']}/link_out")


# --- policy files -----------------------------------------------------------------------------------------------
def test_shipped_default_policy(tmp_path: Path) -> None:
    pol = load_mount_policy(None, env={"HOME": str(tmp_path)}, work_root="/data/work")
    assert pol.default_mode == "ro"
    assert str(tmp_path) in pol.allow and "/data/work" in pol.allow
    assert os.path.realpath("/tmp") in pol.allow  # ${TMPDIR:-/tmp} with TMPDIR unset
    assert {"/proc", "/sys", "/dev", "/run/podman/podman.sock", "/etc/shadow"} <= set(pol.deny)
    assert not any("$" in p for p in (*pol.allow, *pol.deny))  # unset variables drop entries, never stay literal


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('allow = "/data"', "allow"),
        ("allow = []\ndefault_mode = 'rx'", "default_mode"),
        ('allow = ["relative/dir"]', "allow[0]"),
        ('allow = ["/ok", ""]', "allow"),
        ('allow = ["/ok"]\ndeny = [1]', "deny"),
        ('deny = ["/proc"]', "allow"),
    ],
)
def test_invalid_policy_names_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "mounts.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_mount_policy(path, env={}, work_root="/w")
    assert info.value.field == field and str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(
    ("body", "match"),
    [("allow = [", "invalid TOML"), ('alow = ["/x"]\nallow = []', "unknown key")],
)
def test_unparseable_policy(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=match) as info:
        load_mount_policy(path, env={}, work_root="/w")
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_mount_policy(tmp_path / "absent.toml", env={}, work_root="/w")


def test_policy_file_variables(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('allow = ["$WORK_ROOT", "${DATA:-/srv/data}", "$UNSET/x"]\ndeny = ["$HOME/.ssh"]')
    pol = load_mount_policy(path, env={"HOME": "/home/ops"}, work_root="/w")
    assert pol.allow == ("/w", "/srv/data") and "/home/ops/.ssh" in pol.deny


# --- property: whatever resolves is allowed and not denied ------------------------------------------------------
SEGMENTS = ["allowed", "outside", "dir", "dir", "secrets", "key", "x.pem", "data.txt", "data.txt", "link_in",
            "link_in", "link_out", "link_up", "link_sock", "podman.sock", "..", ".", "", "run"]  # fmt: skip


@pytest.fixture(scope="module")
def prop_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tree(tmp_path_factory.mktemp("prop"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # weighted towards the allowed dir, so that plenty of examples resolve rather than being refused
    base=st.sampled_from(["allowed"] * 6 + ["root", "outside", "/", "/run", "/tmp"]),
    segments=st.lists(st.sampled_from(SEGMENTS), max_size=5),
    container=st.lists(st.sampled_from(["a", "..", ".", "b"]), min_size=1, max_size=4),
)
def test_property_resolved_paths_obey_policy(
    prop_tree: dict[str, Path], base: str, segments: list[str], container: list[str]
) -> None:
    allowed = prop_tree["allowed"]
    pol = MountPolicy(allow=(str(allowed), "/tmp/sr-never-there"), deny=(f"{allowed}/secrets", f"{allowed}/*.pem"))
    start = str(prop_tree[base]) if base in prop_tree else base
    host = "/".join([start, *segments])
    try:
        (mount,) = resolve({host: "/".join(container)}, pol)
    except MountPolicyError:
        return
    assert mount.host == os.path.realpath(host) and os.path.exists(mount.host)
    assert any(mount.host == a or mount.host.startswith(a + "/") for a in pol.allow)
    ancestors = [mount.host]
    while ancestors[-1] != "/":
        ancestors.append(posixpath.dirname(ancestors[-1]))
    assert not any(fnmatchcase(p, pat) for p in ancestors for pat in pol.deny)
    assert mount.container == JOB or mount.container.startswith(JOB + "/")


def test_a_podman_service_socket_under_any_name_is_refused(tmp_path: Path) -> None:
    """A second engine service of the worker's own user on a socket named anything (``engine.sock``): neither the
    deny patterns nor the names see it; who listens on it does. An ordinary socket stays mountable."""
    import shutil
    import socket
    import subprocess
    import time

    from support.machine import require

    require(shutil.which("podman") is not None, "podman missing")
    other = tmp_path / "other"
    other.mkdir()
    sock = other / "engine.sock"
    plain = tmp_path / "plain.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(plain))
    listener.listen(4)
    service = subprocess.Popen(["podman", "--runtime", "runc", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), "the podman service did not come up"
        lax = MountPolicy(allow=(str(tmp_path),), deny=())
        message = refused({str(sock): "/var/run/docker.sock"}, lax, "is a container engine socket")
        assert "served by podman" in message, message
        refused({str(other): "/x"}, lax, "is a container engine socket")  # the dir holding it
        assert resolve({str(plain): "/plain.sock"}, lax)[0].host == str(plain)  # a socket nobody's engine serves
    finally:
        service.terminate()
        service.wait(timeout=20)
        listener.close()
