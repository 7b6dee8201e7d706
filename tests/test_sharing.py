"""What a job gets of the worker beyond its job dir, without an engine: the worker's celeryconfig.py and
datasets.json (read-only, as HySDS mounts them), the sharing policy (engine socket, HySDS's work-root mounts),
``runtime_options.gpus`` -> CDI devices, and ``--dry-run`` showing the create request the backend would send.
The same things for real, with podman, are in tests/test_sharing_podman.py."""

from __future__ import annotations

import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from support.jobs import make_job

from sandbox_runner.backends.base import ContainerSpec
from sandbox_runner.backends.fake import FakeBackend
from sandbox_runner.backends.podman.backend import PodmanBackend
from sandbox_runner.backends.podman.gpus import explain_cdi_failure, gpu_devices
from sandbox_runner.backends.podman.options import map_runtime_options
from sandbox_runner.backends.podman.spec import build_create_body
from sandbox_runner.errors import BackendError, ConfigError, MountPolicyError
from sandbox_runner.job.dryrun import dry_run_document
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.job.runscript import render_run_script
from sandbox_runner.policy.sharing import SharingPolicy, engine_socket_for, load_sharing_policy
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import CapturedEvents, fake_runner

SECRET = "amqp-pw-Zq8v41x"


def _files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "etc").mkdir(exist_ok=True)
    celery = tmp_path / "etc" / "celeryconfig.py"
    celery.write_text(f'broker_url = "amqp://ops:{SECRET}@mozart//"\nROOT_WORK_DIR = "/data/work"\n')
    datasets = tmp_path / "etc" / "datasets.json"
    datasets.write_text('{"datasets": []}\n')
    return {"HYSDS_CELERY_CFG": str(celery), "HYSDS_DATASETS_CFG": str(datasets)}


def _runner(tmp_path: Path, backend: FakeBackend, **env: str) -> tuple[JobRunner, CapturedEvents]:
    return fake_runner(tmp_path / "work", backend, env=env)


def _policy(tmp_path: Path, text: str, name: str = "sharing.toml") -> str:
    path = tmp_path / name  # a new name per content: policies are read once per path
    path.write_text(text)
    return str(path)


def test_worker_files_are_mounted_read_only_in_the_job_dir(tmp_path: Path) -> None:
    env = _files(tmp_path)
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env=env)
    spec = runner.plan(make_job("/bin/true"))
    got = {m.container.rsplit("/", 1)[1]: (m.host, m.mode) for m in spec.mounts}
    assert got == {"celeryconfig.py": (env["HYSDS_CELERY_CFG"], "ro"),
                   "datasets.json": (env["HYSDS_DATASETS_CFG"], "ro")}
    assert all(m.container.startswith(spec.workdir + "/") for m in spec.mounts)
    # without the settings there is nothing to mount (the runner has no celeryconfig of its own)
    bare, _ = fake_runner(tmp_path / "work", FakeBackend())
    assert bare.plan(make_job("/bin/true")).mounts == ()


def test_the_jobs_own_mapping_of_celeryconfig_wins(tmp_path: Path) -> None:
    env = _files(tmp_path)
    mine = tmp_path / "mine.py"
    mine.write_text("x = 1\n")
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env=env)
    spec = runner.plan(make_job("/bin/true", container_mappings={str(mine): "celeryconfig.py"}))
    celery = [m for m in spec.mounts if m.container.endswith("/celeryconfig.py")]
    assert [(m.host, m.mode) for m in celery] == [(str(mine), "ro")]
    assert sum(m.container.endswith("/datasets.json") for m in spec.mounts) == 1


def test_contents_reach_no_run_script_document_or_event(tmp_path: Path) -> None:
    env = _files(tmp_path)
    runner, sink = fake_runner(tmp_path / "work", FakeBackend(exit_code=3), env=env)
    job = make_job("/bin/pge")
    job["params"]["_triage_additional_globs"] = ["celeryconfig.py", "datasets.json"]  # triage takes them too
    outcome = runner.run(job)
    assert outcome.status == "job-failed" and outcome.job_dir is not None
    jd = outcome.job_dir
    assert (jd / "celeryconfig.py").read_bytes() == b""  # the mount point, made by the worker, empty
    (bundle,) = jd.glob("triaged_job-*")
    assert (bundle / "celeryconfig.py").read_bytes() == b""
    text = "\n".join(p.read_text(errors="replace") for p in jd.rglob("*") if p.is_file())
    assert env["HYSDS_CELERY_CFG"] in (jd / "_docker_params.json").read_text() and SECRET not in text
    assert SECRET not in json.dumps(sink.docs(), default=str)


def test_a_worker_file_the_mount_policy_refuses_is_one_job_failed_naming_the_setting(tmp_path: Path) -> None:
    env = _files(tmp_path)
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend, env={
        "HYSDS_CELERY_CFG": "/etc/shadow", "HYSDS_DATASETS_CFG": env["HYSDS_DATASETS_CFG"]})
    runner.run(make_job("/bin/true"))
    doc = sink.terminal()
    assert doc["status"] == "job-failed" and backend.calls == []
    assert doc["error"].startswith("HYSDS_CELERY_CFG (/etc/shadow) cannot be given to the job as celeryconfig.py"
                                   ": "), doc["error"]
    assert "refused by deny pattern /etc/shadow" in doc["error"]


def test_a_worker_file_outside_the_allow_list_is_still_mounted_the_operator_named_it(tmp_path: Path) -> None:
    """Sites keep their worker files in /etc, /opt, /var: the file the worker's settings name is allowed wherever it
    is (a job's own mappings still need an allowed prefix: tests/test_mounts.py)."""
    backend = FakeBackend()
    runner, sink = fake_runner(tmp_path / "work", backend, env={"HYSDS_CELERY_CFG": "/etc/hostname"})
    assert runner.run(make_job("/bin/true")).ok, sink.terminal()
    (mount,) = [m for m in backend.calls[0].mounts if m.container.endswith("/celeryconfig.py")]
    assert (mount.host, mount.mode) == ("/etc/hostname", "ro")


def test_shipped_policy_shares_nothing_and_bad_policies_name_the_file(tmp_path: Path) -> None:
    shipped = load_sharing_policy(None)
    assert (shipped.engine_socket, shipped.work_root, shipped.work_root_mode) == ((), (), "ro")
    for i, (text, needle) in enumerate([("[engine_socket]\nallow = 'x'\n", "engine_socket.allow must be a list"),
                                        ("[work_root]\nmode = 'rwx'\n", "work_root.mode must be"),
                                        ("[network]\n", "unknown table(s) network"),
                                        ("[engine_socket]\ndeny = []\n", "unknown field(s) deny in [engine_socket]")]):
        path = Path(_policy(tmp_path, text, f"bad{i}.toml"))
        with pytest.raises(ConfigError, match=re.escape(needle)) as err:
            load_sharing_policy(path)
        assert str(path) in str(err.value)


def test_work_root_mounts_only_for_listed_types(tmp_path: Path) -> None:
    policy = _policy(tmp_path, '[work_root]\nallow = ["lw-*"]\n')
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env={"SANDBOX_RUNNER_SHARING_POLICY": policy})
    root = tmp_path / "work"
    listed = runner.plan(make_job("/bin/true", job_type="lw-purge"))
    assert {(m.host, m.container, m.mode) for m in listed.mounts} == {
        (str(root / d), str(root / d), "ro") for d in ("jobs", "tasks", "workers", "cache")}
    assert listed.labels["sandbox_runner.work_root"].startswith("mounted: job type 'lw-purge' matches")
    other = runner.plan(make_job("/bin/true", job_type="sr_test"))
    assert other.mounts == () and other.labels["sandbox_runner.work_root"].startswith("none: ")
    rw, _ = _runner(tmp_path, FakeBackend(),
                    SANDBOX_RUNNER_SHARING_POLICY=_policy(tmp_path, '[work_root]\nallow = ["*"]\nmode = "rw"\n',
                                                          "rw.toml"))
    modes = {m.container.rsplit("/", 1)[1]: m.mode for m in rw.plan(make_job("/bin/true")).mounts}
    assert modes == {"jobs": "rw", "tasks": "rw", "workers": "rw", "cache": "ro"}  # the cache stays read-only


def test_engine_socket_is_out_by_default_and_in_for_allowed_types(tmp_path: Path) -> None:
    sock = str(tmp_path / "podman.sock")
    runner, _ = _runner(tmp_path, FakeBackend(), SANDBOX_RUNNER_PODMAN_SOCKET=f"unix://{sock}")
    spec = runner.plan(make_job("/bin/true", job_type="job-SCIFLO_L3"))
    assert spec.engine_socket is None and spec.as_dict()["engine_socket"] is None
    assert spec.labels["sandbox_runner.engine_socket"] == (
        "none: job type 'job-SCIFLO_L3' is not in engine_socket.allow of sandbox_runner/policies/sharing.toml")
    policy = _policy(tmp_path, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n')
    runner, _ = _runner(tmp_path, FakeBackend(), SANDBOX_RUNNER_PODMAN_SOCKET=f"unix://{sock}",
                        SANDBOX_RUNNER_SHARING_POLICY=policy)
    runner.settings = runner.settings.with_overrides(uid=1001)  # a rootless worker (the tests run as root)
    spec = runner.plan(make_job("/bin/true", job_type="job-SCIFLO_L3"))
    assert spec.engine_socket == sock
    body, _ = build_create_body(spec, labels={}, sockets=[sock], host_ids=(1001, 1001))
    assert {"type": "bind", "source": sock, "destination": sock, "options": ["bind", "rw"]} in body["mounts"]
    assert body["env"]["CONTAINER_HOST"] == f"unix://{sock}"
    run_sh = render_run_script(spec, "podman").replace(" \\\n    ", " ")
    assert f"-v {sock}:{sock} --env CONTAINER_HOST=unix://{sock}" in run_sh
    std = build_create_body(replace(spec, engine_socket="/run/user/1001/podman/podman.sock"), labels={},
                            host_ids=(1001, 1001))[0]
    assert std["env"] == {"CONTAINER_HOST": "unix:///run/user/1001/podman/podman.sock", "HOST_UID": "1001"}


def test_engine_socket_is_refused_for_rootful(tmp_path: Path) -> None:
    allow = SharingPolicy(engine_socket=("job-*",), source="p.toml")
    with pytest.raises(MountPolicyError, match="the worker runs as root, so its podman service is rootful"):
        engine_socket_for("job-x", allow, socket="/run/podman/podman.sock", worker_uid=0)
    # a rootless worker pointed at a root-owned (rootful) service: refused as well
    path = tmp_path / "rootful.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # made by root (the tests run as root)
        with pytest.raises(MountPolicyError, match=f"{path} belongs to root: it is a rootful podman service"):
            engine_socket_for("job-x", allow, socket=str(path), worker_uid=1001)
    # and the backend refuses it again if a rootful one ever gets such a spec
    backend = PodmanBackend("unix:///run/podman/podman.sock")
    backend.rootful = True
    spec = ContainerSpec(name="n", image="i", argv=("x",), workdir="/w", engine_socket="/run/podman/podman.sock")
    with pytest.raises(BackendError, match="only by a rootless worker"):
        backend.create_body(spec)


@pytest.mark.parametrize(("value", "devices"), [
    ("all", ["nvidia.com/gpu=all"]), ('"all"', ["nvidia.com/gpu=all"]), (2, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]),
    ("1", ["nvidia.com/gpu=0"]), ("device=0,2", ["nvidia.com/gpu=0", "nvidia.com/gpu=2"]),
    ('"device=GPU-3a2c1f"', ["nvidia.com/gpu=GPU-3a2c1f"]),
])  # fmt: skip
def test_gpus_map_to_cdi_devices(value: object, devices: list[str]) -> None:
    assert gpu_devices("gpus", value) == devices
    body, notes = map_runtime_options({"gpus": value})
    assert body["devices"] == [{"path": d} for d in devices] and notes == []


@pytest.mark.parametrize("value", ["capabilities=compute", "driver=nvidia,count=2", 0, True, "device=", "device=a b"])
def test_gpus_the_backend_cannot_honour_are_refused_by_name(value: object) -> None:
    with pytest.raises(BackendError, match="runtime option 'gpus'"):
        map_runtime_options({"gpus": value})


def test_engine_cdi_error_becomes_one_naming_the_option() -> None:
    body, _ = map_runtime_options({"gpus": "all"})
    text = explain_cdi_failure("container engine could not start the job: podman start: setting up CDI devices: "
                               "unresolvable CDI devices nvidia.com/gpu=all (HTTP 500)", body)
    assert text is not None and text.startswith("runtime option gpus cannot be honoured on this node (gpus=all ->")
    assert "HYSDS_GPU_AVAILABLE" in text and "/etc/cdi" in text
    assert explain_cdi_failure("podman start: OCI runtime error", body) is None
    assert explain_cdi_failure("setting up CDI devices: x", {}) is None  # no gpus asked: not ours to explain


def test_hysds_gpu_available_gates_gpus(tmp_path: Path) -> None:
    job = make_job("/bin/true", runtime_options={"gpus": "all"})
    off, _ = fake_runner(tmp_path / "work", FakeBackend())
    spec = off.plan(json.loads(json.dumps(job)))
    assert "gpus" not in spec.runtime_options and spec.labels["sandbox_runner.gpus"].startswith("dropped: ")
    on, _ = _runner(tmp_path, FakeBackend(), HYSDS_GPU_AVAILABLE="1")
    spec = on.plan(json.loads(json.dumps(job)))
    assert spec.runtime_options["gpus"] == "all" and "sandbox_runner.gpus" not in spec.labels
    assert "--device=nvidia.com/gpu=all" in render_run_script(spec, "podman")
    with pytest.raises(ConfigError, match="HYSDS_GPU_AVAILABLE"):
        load_settings({"HYSDS_GPU_AVAILABLE": "yes"})


def test_dry_run_document_is_the_backends_create_request(tmp_path: Path) -> None:
    settings = load_settings({"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work"), "HYSDS_GPU_AVAILABLE": "1"},
                             backend="podman", podman_socket="unix:///nonexistent/podman.sock")
    spec = ContainerSpec(name="n", image="img:1", argv=("run",), workdir="/w/j", network="host",
                         runtime_options={"gpus": "all", "memory": "1g"})
    doc = dry_run_document(settings, spec)
    assert doc["backend"] == "podman" and doc["ignored_options"] == []
    backend = PodmanBackend(settings.podman_socket, worker=settings.worker_name)
    assert doc["podman_create"] == backend.create_body(spec)[0]
    assert doc["podman_create"]["devices"] == [{"path": "nvidia.com/gpu=all"}]
    assert doc["podman_create"]["netns"] == {"nsmode": "host"}
    if not any(Path(d).exists() for d in ("/etc/cdi", "/var/run/cdi")):  # no GPUs on this kind of machine
        assert doc["warnings"][0].startswith("no CDI spec in /etc/cdi or /var/run/cdi")
    with pytest.raises(BackendError, match="runtime option 'frobnicate'"):
        dry_run_document(settings, ContainerSpec(name="n", image="i", argv=("x",), workdir="/w",
                                                 runtime_options={"frobnicate": 1}))


def test_rootful_worker_fails_an_allowed_job_once_with_the_reason(tmp_path: Path) -> None:
    backend = FakeBackend()
    runner, sink = _runner(tmp_path, backend, SANDBOX_RUNNER_SHARING_POLICY=_policy(
        tmp_path, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n', "root.toml"))
    runner.settings = runner.settings.with_overrides(uid=0)  # a worker running as root (rootful podman)
    outcome = runner.run(make_job("/bin/true", job_type="job-SCIFLO_L3"))
    doc = sink.terminal()
    assert outcome.status == doc["status"] == "job-failed" and backend.calls == []
    assert "the engine socket is only given by rootless workers: the worker runs as root" in doc["error"]
    assert "remove the job type from engine_socket.allow" in doc["error"]


def test_dependency_images_get_the_job_dir_and_worker_files_in_docker_params(tmp_path: Path) -> None:
    from sandbox_runner.job.container import docker_params

    env = _files(tmp_path)
    runner, _ = fake_runner(tmp_path / "work", FakeBackend(), env=env)
    job = make_job("/bin/true")
    job["params"]["job_specification"]["dependency_images"] = [
        {"container_image_name": "opera_pge/dswx_hls:1.0.3", "container_image_url": None, "container_mappings": {}}]
    spec = runner.plan(job)
    volumes = docker_params(spec)["opera_pge/dswx_hls:1.0.3"]["volumes"]
    # what a PGE wrapper passes whole to the sibling it starts through the engine socket (as HySDS's would)
    assert volumes == [[spec.workdir, f"{spec.workdir}:rw"],
                       [env["HYSDS_CELERY_CFG"], f"{spec.workdir}/celeryconfig.py:ro"],
                       [env["HYSDS_DATASETS_CFG"], f"{spec.workdir}/datasets.json:ro"]]


def test_doctor_checks_the_worker_files_and_the_socket_grant(tmp_path: Path) -> None:
    from sandbox_runner.cli.doctor import check_sharing

    env = _files(tmp_path)
    base = {"SANDBOX_RUNNER_WORK_ROOT": str(tmp_path / "work")}
    good = check_sharing(load_settings({**base, **env}).with_overrides(uid=1001))
    assert good.ok and f"celeryconfig.py <- {env['HYSDS_CELERY_CFG']}" in good.detail
    bad = check_sharing(load_settings({**base, **env, "HYSDS_CELERY_CFG": "/etc/shadow"}))
    assert not bad.ok and bad.required and bad.detail.startswith("HYSDS_CELERY_CFG (/etc/shadow)")
    policy = _policy(tmp_path, '[engine_socket]\nallow = ["job-SCIFLO_*"]\n', "doctor.toml")
    rootful = check_sharing(load_settings({**base, "SANDBOX_RUNNER_SHARING_POLICY": policy}).with_overrides(uid=0))
    assert not rootful.ok and "engine socket for: job-SCIFLO_*" in rootful.detail and "rootless" in rootful.fix


def test_dry_run_warns_when_no_cdi_spec_declares_the_gpus(tmp_path: Path) -> None:
    from sandbox_runner.backends.podman.gpus import cdi_spec_missing

    body, _ = map_runtime_options({"gpus": "all"})
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    warning = cdi_spec_missing(body, [str(cdi), str(tmp_path / "absent")])
    assert warning is not None and "declares nvidia.com/gpu: podman will refuse" in warning
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n")
    assert cdi_spec_missing(body, [str(cdi)]) is None
    assert cdi_spec_missing({}, [str(tmp_path / "absent")]) is None  # no gpus asked: nothing to say
