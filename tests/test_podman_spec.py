"""Pure unit tests (no podman needed): runtime_options mapping, create body, socket URL resolution, API helpers."""

from __future__ import annotations

import pytest

from sandbox_runner.backends.base import ContainerSpec, Mount
from sandbox_runner.backends.podman.api import PodmanAPI, _encode_params, socket_path
from sandbox_runner.backends.podman.options import map_runtime_options
from sandbox_runner.backends.podman.service import default_socket_url
from sandbox_runner.backends.podman.spec import build_create_body, refuse_engine_socket, userns_and_user
from sandbox_runner.errors import BackendError

GiB = 1024**3
WORKER = (1001, 1001)  # the worker's host uid/gid in these tests


def mapped(**options: object) -> dict[str, object]:
    body, notes = map_runtime_options(options)
    assert notes == []
    return body


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"memory": "4g"}, {"resource_limits": {"memory": {"limit": 4 * GiB}}}),
        ({"m": "512MB"}, {"resource_limits": {"memory": {"limit": 512 * 1024**2}}}),
        ({"memory-swap": -1}, {"resource_limits": {"memory": {"swap": -1}}}),
        ({"cpus": "1.5"}, {"resource_limits": {"cpu": {"period": 100_000, "quota": 150_000}}}),
        ({"cpu-shares": "512"}, {"resource_limits": {"cpu": {"shares": 512}}}),
        ({"pids_limit": 100}, {"resource_limits": {"pids": {"limit": 100}}}),
        ({"shm-size": "1g"}, {"shm_size": GiB}),
        ({"--SHM_SIZE": 1024}, {"shm_size": 1024}),
        ({"ulimit": "nofile=1024:2048"}, {"r_limits": [{"type": "nofile", "soft": 1024, "hard": 2048}]}),
        ({"ulimit": {"nproc": 64}}, {"r_limits": [{"type": "nproc", "soft": 64, "hard": 64}]}),
        ({"env": "FOO=a=b"}, {"env": {"FOO": "a=b"}}),
        ({"e": ["A=1", "B="]}, {"env": {"A": "1", "B": ""}}),
        ({"env": {"A": 1}}, {"env": {"A": "1"}}),
        ({"network": "host"}, {"netns": {"nsmode": "host"}}),
        ({"net": "NONE"}, {"netns": {"nsmode": "none"}}),
        ({"init": ""}, {"init": True}),
        ({"init": "false"}, {"init": False}),
        ({"cap-drop": "NET_RAW, CHOWN"}, {"cap_drop": ["NET_RAW", "CHOWN"]}),
        ({"cap_add": ["SYS_PTRACE"]}, {"cap_add": ["SYS_PTRACE"]}),
        ({"security-opt": "no-new-privileges"}, {"no_new_privileges": True}),
        ({"security_opt": ["seccomp=unconfined", "label=disable"]},
         {"seccomp_profile_path": "unconfined", "selinux_opts": ["disable"]}),
        ({"read-only": True}, {"read_only_filesystem": True}),
        ({"tmpfs": "/scratch:size=1g,mode=1777"},
         {"mounts": [{"type": "tmpfs", "source": "tmpfs", "destination": "/scratch",
                      "options": ["size=1g", "mode=1777"]}]}),
        ({"hostname": "box"}, {"hostname": "box"}),
        ({"user": "1000:1000"}, {"user": "1000:1000"}),
        ({"group_add": "video,audio"}, {"groups": ["video", "audio"]}),
        ({"stop-signal": "INT"}, {"stop_signal": 2}),
        ({"stop_signal": "SIGUSR1"}, {"stop_signal": 10}),
        ({"device": "/dev/fuse"}, {"devices": [{"path": "/dev/fuse"}]}),
        ({"memory": None}, {}),
    ],
)  # fmt: skip
def test_runtime_option_mapping(options: dict[str, object], expected: dict[str, object]) -> None:
    assert mapped(**options) == expected


def test_limits_of_one_group_merge() -> None:
    body = mapped(memory="1g", memory_reservation="512m", cpus=2, cpuset_cpus="0-1")
    assert body["resource_limits"] == {
        "memory": {"limit": GiB, "reservation": 512 * 1024**2},
        "cpu": {"period": 100_000, "quota": 200_000, "cpus": "0-1"},
    }


@pytest.mark.parametrize("option", ["rm", "detach", "d"])
def test_ignored_options_leave_a_note(option: str) -> None:
    body, notes = map_runtime_options({option: "all"})
    assert body == {}
    assert len(notes) == 1 and repr(option) in notes[0]


@pytest.mark.parametrize("option", ["privileged", "userns", "volume", "v", "mount", "pid", "workdir", "name"])
def test_refused_options_say_why(option: str) -> None:
    with pytest.raises(BackendError, match=f"runtime option '{option}' is not allowed: .+"):
        map_runtime_options({option: "x"})


def test_unknown_option_is_named() -> None:
    with pytest.raises(BackendError, match="runtime option 'frobnicate' is not supported by the podman backend"):
        map_runtime_options({"frobnicate": "1"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory": "lots"}, "invalid runtime option memory 'lots'"),
        ({"cpus": "two"}, "runtime option cpus: expected a number of CPUs"),
        ({"cpus": 0}, "must be positive"),
        ({"pids_limit": "x"}, "expected a whole number"),
        ({"init": "maybe"}, "expected true or false"),
        ({"ulimit": "nofile"}, "expected NAME=soft"),
        ({"env": "=x"}, "expected KEY=value"),
        ({"network": "pasta"}, "use 'none', 'host' or "),
        ({"security_opt": "privileged"}, "unsupported value 'privileged'"),
        ({"tmpfs": "scratch"}, "expected /path"),
        ({"stop_signal": "SIGNOPE"}, "unknown signal"),
    ],
)
def test_bad_values_are_backend_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        map_runtime_options(options)


def spec(**kw: object) -> ContainerSpec:
    base: dict[str, object] = {
        "name": "sr-job-1",
        "image": "localhost/x:1",
        "argv": ("echo", "hi"),
        "workdir": "/w/j",
    }
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def test_create_body_has_everything_in_one_request() -> None:
    body, notes = build_create_body(
        spec(
            env={"A": "1"},
            mounts=(Mount("/data/in", "/in", "ro"), Mount("/data/out", "/out", "rw")),
            labels={"sandbox_runner.job_id": "j1"},
            runtime_options={"env": {"A": "2", "B": "3"}, "memory": "1g"},
        ),
        labels={"sandbox_runner.job_id": "j1", "sandbox_runner.worker": "w"},
        host_ids=WORKER,
    )
    assert notes == []
    assert body["image"] == "localhost/x:1" and body["name"] == "sr-job-1"
    assert body["command"] == ["echo", "hi"] and body["work_dir"] == "/w/j"
    assert body["userns"] == {"nsmode": "keep-id"} and body["netns"] == {"nsmode": "none"}
    assert body["init"] is True and "user" not in body
    assert body["env"] == {"A": "2", "B": "3"}  # runtime_options env wins over the command's env
    assert body["labels"] == {"sandbox_runner.job_id": "j1", "sandbox_runner.worker": "w"}
    assert body["mounts"] == [
        {"type": "bind", "source": "/data/in", "destination": "/in", "options": ["rbind", "ro"]},
        {"type": "bind", "source": "/data/out", "destination": "/out", "options": ["rbind", "rw"]},
        {"type": "bind", "source": "/w/j", "destination": "/w/j", "options": ["rbind", "rw"]},
    ]
    assert body["resource_limits"] == {"memory": {"limit": GiB}}


@pytest.mark.parametrize(
    ("uid", "gid", "userns", "user"),
    [
        (None, None, {"nsmode": "keep-id"}, None),  # the worker's own ids inside
        (1001, 1001, {"nsmode": "keep-id"}, "1001:1001"),  # HySDS's -u <worker uid>:<gid>: the same
        (2000, 3000, {"nsmode": "keep-id", "value": "uid=2000,gid=3000"}, "2000:3000"),
        (2000, None, {"nsmode": "keep-id", "value": "uid=2000"}, "2000:1001"),
        (1001, 3000, {"nsmode": "keep-id", "value": "gid=3000"}, "1001:3000"),
        (2000, 0, {"nsmode": "keep-id", "value": "uid=2000"}, "2000:0"),  # keep-id cannot map onto gid 0
        (0, 0, None, "0:0"),  # default rootless userns: container root is the worker
        (0, None, None, "0:0"),
    ],
)
def test_userns_maps_the_worker_onto_the_requested_ids(
    uid: int | None, gid: int | None, userns: dict[str, str] | None, user: str | None
) -> None:
    assert userns_and_user(uid, gid, *WORKER) == (userns, user)


def test_rootful_needs_no_mapping() -> None:
    assert userns_and_user(None, None, 0, 0) == (None, None)
    assert userns_and_user(5, 6, 0, 0) == (None, "5:6")
    assert userns_and_user(5, None, 0, 0) == (None, "5")
    assert userns_and_user(None, 6, 0, 0) == (None, "0:6")  # a gid alone: the worker's uid, not dropped


def test_create_body_user_and_network() -> None:
    body, _ = build_create_body(spec(uid=1000, gid=100, network="host"), labels={}, host_ids=WORKER)
    assert body["user"] == "1000:100" and body["netns"] == {"nsmode": "host"}
    assert body["userns"] == {"nsmode": "keep-id", "value": "uid=1000,gid=100"}
    body, _ = build_create_body(spec(uid=0, gid=0), labels={}, host_ids=WORKER)
    assert body["user"] == "0:0" and "userns" not in body
    # a numeric ``user`` runtime option is mapped like spec.uid/gid and wins over them
    body, _ = build_create_body(spec(uid=5, runtime_options={"user": "0:0"}), labels={}, host_ids=WORKER)
    assert body["user"] == "0:0" and "userns" not in body
    body, _ = build_create_body(spec(runtime_options={"u": "nobody"}), labels={}, host_ids=WORKER)
    assert body["user"] == "nobody" and body["userns"] == {"nsmode": "keep-id"}
    body, _ = build_create_body(spec(runtime_options={"network": "host"}), labels={})
    assert body["netns"] == {"nsmode": "host"}  # the runtime option wins over spec.network


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"image": None}, "needs an image"),
        ({"workdir": "rel/dir"}, "absolute path"),
        ({"mounts": (Mount("/a", "/w/j", "ro"),)}, "two mounts at /w/j"),
        ({"mounts": (Mount("/a", "/x"), Mount("/b", "/x"))}, "two mounts at /x"),
        ({"network": "slirp4netns"}, "use 'none', 'host' or "),
    ],
)
def test_create_body_refusals(kw: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        build_create_body(spec(**kw), labels={})


@pytest.mark.parametrize(
    "host",
    ["/run/user/1000/podman/podman.sock", "/run/user/1000/podman", "/run/user/1000", "/run", "/",
     "/var/run/docker.sock", "/elsewhere/podman.sock"],
)  # fmt: skip
def test_engine_socket_is_never_mounted(host: str) -> None:
    with pytest.raises(BackendError, match="refusing to mount"):
        refuse_engine_socket(host, ["/run/user/1000/podman/podman.sock"])
    with pytest.raises(BackendError, match="refusing to mount"):
        build_create_body(spec(mounts=(Mount(host, "/x"),)), labels={}, sockets=["/run/user/1000/podman/podman.sock"])


def test_engine_socket_check_leaves_siblings_alone() -> None:
    refuse_engine_socket("/run/user/1000/other", ["/run/user/1000/podman/podman.sock"])
    refuse_engine_socket("/run/user/10000", ["/run/user/1000/podman/podman.sock"])


def test_default_socket_url() -> None:
    assert default_socket_url({}, 1001) == "unix:///run/user/1001/podman/podman.sock"
    assert default_socket_url({}, 0) == "unix:///run/podman/podman.sock"
    assert default_socket_url({"CONTAINER_HOST": "unix:///tmp/p.sock"}, 1001) == "unix:///tmp/p.sock"
    assert default_socket_url({"CONTAINER_HOST": "unix:///tmp/p.sock"}, 1001, "unix:///c.sock") == "unix:///c.sock"
    assert default_socket_url({"CONTAINER_HOST": ""}, 1001, "") == "unix:///run/user/1001/podman/podman.sock"
    # an inherited XDG_RUNTIME_DIR may belong to someone else: not used
    assert default_socket_url({"XDG_RUNTIME_DIR": "/run/user/0"}, 7) == "unix:///run/user/7/podman/podman.sock"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:///run/user/1/podman/podman.sock", "/run/user/1/podman/podman.sock"),
        ("unix:/run/user/1/podman/podman.sock", "/run/user/1/podman/podman.sock"),  # HySDS's form
        ("/tmp/p.sock", "/tmp/p.sock"),
        ("tcp://localhost:8080", None),
    ],
)
def test_socket_path(url: str, path: str | None) -> None:
    assert socket_path(url) == path


def test_unsupported_url() -> None:
    with pytest.raises(BackendError, match="unsupported podman service URL"):
        PodmanAPI("ssh://core@host/run/podman/podman.sock")


def test_unreachable_service_is_a_backend_error(tmp_path: object) -> None:
    api = PodmanAPI(f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(BackendError, match="is not answering"):
        api.call("GET", "/_ping")
    assert api.ping() is False


def test_encode_params() -> None:
    assert _encode_params({"force": True, "v": False, "t": 3, "x": None}) == "?force=true&v=false&t=3"
    assert _encode_params({"condition": ["a", "b"]}) == "?condition=a&condition=b"
    assert _encode_params({}) == ""
