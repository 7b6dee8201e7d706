"""The five representative job JSONs of the reference corpus through ``run-job --dry-run``: the mounts, network and
command must be what HySDS's worker would give them.

The expected values are derived here from HySDS's own rules, not from our output:

* command: hysds_commons' ``get_command_line`` builds ``params._command`` from the job-spec's ``command`` and its
  positional params (non-strings JSON-dumped, each single-quoted); with no ``HYSDS_WORKER_CFG`` job_worker.py
  ``shlex.split``s it into ``path + arguments``, and the container runs that argv in the job's image.
* mounts: ``containers/base.py:create_container_params`` turns each ``container_mappings`` entry (the job-spec's
  ``imported_worker_files``) into a volume: host path ``os.path.expandvars``'ed, container path as given (joined to
  the job dir when relative), mode ``ro`` unless ``[path, "rw"]``; then the worker's ``celeryconfig.py``
  (``HYSDS_CELERY_CFG``) and ``datasets.json`` (``HYSDS_DATASETS_CFG``) read-only in the job dir. The working dir is
  the job dir, ``<root>/jobs/YYYY/MM/DD/HH/MI/<job_id>``. Dependency images get their own mappings the same way.
* network: HySDS passes no ``--network`` (``create_base_cmd`` adds only runtime_options, and none of the five has
  one), so the job gets the engine's default network. Rootless podman's default (slirp4netns) does not work on this
  node, so the worker gives ``host`` (README: what still differs).

Deliberate differences, asserted as such: HySDS's podman engine also mounts the engine socket and ``<root>/jobs``,
``tasks``, ``workers`` (rw) and ``cache`` (ro) into every container; here a job gets none of them unless a policy
lists its type.

The host paths the jobs map (``$HOME/.netrc-os``, ``$HOST_VERDI_HOME/.aws``, ``/home/ops/.netrc``...) are provided
the way a HySDS node has them: ``/home/ops`` of user ops. Each dry run runs in a private mount namespace with a
tmpfs on ``/home`` holding those files, as the worker user ``srunner`` with ``HOME=/home/ops``; nothing on the host
changes. Corpus files are read in place (``corpus_file``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from support.corpus import corpus_file
from support.machine import VENV_BIN, Worker, require

from sandbox_runner.settings import Settings

HOME = "/home/ops"
#: what a HySDS verdi node keeps in the ops user's home, for these five jobs' mappings: files and dirs
HOME_FILES = (".netrc", ".netrc-os", "verdi/etc/settings.yaml", "verdi/etc/settings.conf", "verdi/etc/maap-dps.env")
HOME_DIRS = (".aws",)
CELERY_CFG = f"{HOME}/verdi/ops/hysds/celeryconfig.py"
DATASETS_CFG = f"{HOME}/verdi/etc/datasets.json"
#: job type -> the corpus job-spec it was resolved from (None: the job-spec is not in the corpus; the one embedded
#: in the job JSON is the source)
JOBS = {
    "lw-tosca-wget": "hysds__lightweight-jobs__job-spec.json.lw-tosca-wget",
    "SCIFLO_L3_DSWx_HLS": "nasa__opera-sds-pcm__job-spec.json.SCIFLO_L3_DSWx_HLS",
    "slc_download": "nasa__opera-sds-pcm__job-spec.json.slc_download",
    "standard-product-s1gunw-topsapp": None,
    "sardem-sarsen": None,
}
#: our settings know HYSDS_CELERY_CFG once the worker's job files are mounted (celeryconfig.py, datasets.json)
JOB_FILES = "celery_cfg" in {f.name for f in fields(Settings)}


def in_verdi_home(user: Worker, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` with ``HOME=/home/ops`` on a private tmpfs holding the node's files (unshare -m)."""
    require(os.getuid() == 0, "the dry runs set up /home/ops in a private mount namespace, which needs root")
    script = "\n".join([
        "set -e",
        "mount -t tmpfs -o mode=755 tmpfs /home",
        f"mkdir -p {' '.join(shlex.quote(f'{HOME}/{d}') for d in HOME_DIRS)} {HOME}/verdi/etc {HOME}/verdi/ops/hysds",
        *[f"echo 'placeholder' > {shlex.quote(f'{HOME}/{f}')}" for f in HOME_FILES],
        f"echo 'BROKER_URL = \"amqp://guest@mozart//\"' > {CELERY_CFG}",
        f"echo '{{\"datasets\": []}}' > {DATASETS_CFG}",
        f"chown -R {user.name}: {HOME}",
        f'exec runuser -u {user.name} -- env -i "$@"',
    ])
    full = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            *[f"{k}={v}" for k, v in env.items()], *argv]
    return subprocess.run(full, capture_output=True, text=True, timeout=120, check=False)


def dry_run(user: Worker, job_file: Path, work_root: Path) -> dict[str, Any]:
    env = user.env(HOME=HOME, HOST_VERDI_HOME=HOME, HYSDS_CELERY_CFG=CELERY_CFG, HYSDS_DATASETS_CFG=DATASETS_CFG)
    proc = in_verdi_home(user, [str(VENV_BIN / "sandbox-runner"), "run-job", "--dry-run", "--work-root",
                                str(work_root), str(job_file)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


def hysds_argv(job: dict[str, Any]) -> list[str]:
    """get_command_line(command, positional) then shlex.split, as hysds_commons and job_worker.py do."""
    spec = job["params"]["job_specification"]
    positional = [job["params"][p["name"]] for p in spec["params"] if p["destination"] == "positional"]
    line = " ".join([spec["command"], *("'{}'".format((v if isinstance(v, str) else json.dumps(v))
                                                     .replace("'", "'\"'\"'")) for v in positional)])
    return shlex.split(line)


def hysds_volumes(mappings: dict[str, Any], job_dir: str, env: dict[str, str]) -> list[tuple[str, str, str]]:
    """create_container_params' user volumes: (host, container, mode)."""
    out = []
    for host, target in mappings.items():
        mode = "ro"
        if isinstance(target, list):
            target, mode = (target[0], target[1]) if len(target) > 1 else (target[0], "ro")
        expanded = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), host)
        out.append((expanded, target if target.startswith("/") else os.path.join(job_dir, target), mode))
    return out


def job_files(job_dir: str) -> list[tuple[str, str, str]]:
    """HySDS's default image mappings: the worker's celeryconfig.py and datasets.json, read-only in the job dir."""
    return [(CELERY_CFG, f"{job_dir}/celeryconfig.py", "ro"), (DATASETS_CFG, f"{job_dir}/datasets.json", "ro")]


def triples(mounts: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return [(m["host"], m["container"], m["mode"]) for m in mounts]


@pytest.fixture
def node(podman_ready: Worker, work_root: Path) -> tuple[Worker, Path]:
    require(os.path.exists("/usr/bin/unshare"), "unshare (util-linux) missing")
    return podman_ready, work_root


@pytest.mark.parametrize("job_type", list(JOBS))
def test_dry_run_gives_the_command_mounts_and_network_hysds_would(node: tuple[Worker, Path], job_type: str) -> None:
    user, work_root = node
    job_file = corpus_file(f"jobs/job.json.{job_type}")
    job = json.loads(job_file.read_text())
    if JOBS[job_type] is not None:  # the job's mappings and command are its corpus job-spec's
        spec = json.loads(corpus_file(JOBS[job_type]).read_text())
        assert job["container_mappings"] == spec["imported_worker_files"]
        assert job["params"]["job_specification"]["command"] == spec["command"]
    doc = dry_run(user, job_file, work_root)

    # working dir: the job dir, <root>/jobs/YYYY/MM/DD/HH/MI/<job_id>
    job_dir = doc["workdir"]
    assert re.fullmatch(rf"{re.escape(str(work_root))}/jobs/\d{{4}}(/\d\d){{4}}/{re.escape(job['job_id'])}", job_dir)
    # command: the job's image runs the argv HySDS builds from the job-spec (and _command is exactly that line)
    assert doc["image"] == job["container_image_name"] and doc["image_url"] == job["container_image_url"]
    assert doc["argv"] == hysds_argv(job) == shlex.split(job["params"]["_command"])
    # mounts: every mapping of the job, as create_container_params makes it
    expected = hysds_volumes(job["container_mappings"], job_dir, {"HOME": HOME, "HOST_VERDI_HOME": HOME})
    assert all(host.startswith(("/home/ops/", "/tmp")) for host, _, _ in expected)  # no $VAR left unexpanded
    got = triples(doc["mounts"])
    assert got[:len(expected)] == expected
    rest = got[len(expected):]
    if JOB_FILES:
        assert rest == job_files(job_dir)
    else:  # before the job-files work lands: nothing else, and say so in the report
        assert rest == []
    # deliberate differences from HySDS: no engine socket, no <root>/jobs|tasks|workers|cache, unless a policy says
    assert not any(m["host"].endswith(".sock") or m["host"] in {str(work_root / d) for d in
                                                                ("jobs", "tasks", "workers", "cache")}
                   for m in doc["mounts"])
    # network: HySDS passes none, so the engine's default; rootless podman's cannot work here, so host
    assert doc["network"] == "host" and "rootless" in doc["labels"]["sandbox_runner.network"]
    assert "network" not in doc["runtime_options"]
    # dependency images: the job-spec's, in order (HySDS loads each before the job, with its own params)
    deps = job["params"]["job_specification"].get("dependency_images") or []
    assert [(d["image"], d["image_url"]) for d in doc["dependency_images"]] == [
        (d["container_image_name"], d.get("container_image_url")) for d in deps]


def test_job_files_are_mounted_as_hysds_mounts_them(node: tuple[Worker, Path]) -> None:
    """HySDS mounts the worker's celeryconfig.py and datasets.json into every job dir (lightweight-jobs import
    ``hysds.celery``, which reads it). Checked by the test above once our settings know HYSDS_CELERY_CFG."""
    if not JOB_FILES:
        pytest.xfail("HYSDS_CELERY_CFG/datasets.json mounts are not on this branch yet (issue 9, job files)")
    user, work_root = node
    doc = dry_run(user, corpus_file("jobs/job.json.lw-tosca-wget"), work_root)
    assert triples(doc["mounts"])[-2:] == job_files(doc["workdir"])


def test_a_missing_host_file_stops_the_dry_run_naming_it(node: tuple[Worker, Path], tmp_path: Path) -> None:
    """Without the node's files (an empty HOME), the dry run refuses the mapping as the job would fail: by name."""
    user, work_root = node
    home = Path("/tmp") / f"sr-empty-home-{os.getpid()}"
    home.mkdir(exist_ok=True)
    os.chown(home, user.uid, user.gid)
    try:
        proc = user.run([str(VENV_BIN / "sandbox-runner"), "run-job", "--dry-run", "--work-root", str(work_root),
                         str(corpus_file("jobs/job.json.lw-tosca-wget"))], env=user.env(HOME=str(home)))
    finally:
        home.rmdir()
    assert proc.returncode != 0
    assert "$HOME/.netrc-os" in proc.stderr and f"{home}/.netrc-os" in proc.stderr and "does not exist" in proc.stderr


#: the dry run lists dependency images by name and URL; their mounts are read from the same plan (runner.plan)
_PLAN_DEPENDENCIES = """
import json, sys
from pathlib import Path
from sandbox_runner.job.runner import JobRunner
from sandbox_runner.settings import load_settings
from sandbox_runner.testing import capture_events
settings = load_settings(work_root=Path(sys.argv[2]))
spec = JobRunner(settings, capture_events("dry-run")[0]).plan(open(sys.argv[1], "rb").read())
print(json.dumps({"workdir": spec.workdir, "deps": [[d.image, [m.as_dict() for m in d.mounts],
                                                     dict(d.runtime_options)] for d in spec.dependencies]}))
"""


@pytest.mark.parametrize("job_type", ["SCIFLO_L3_DSWx_HLS", "sardem-sarsen"])
def test_dependency_images_get_their_own_mappings(node: tuple[Worker, Path], job_type: str) -> None:
    user, work_root = node
    job_file = corpus_file(f"jobs/job.json.{job_type}")
    job = json.loads(job_file.read_text())
    env = user.env(HOME=HOME, HOST_VERDI_HOME=HOME, HYSDS_CELERY_CFG=CELERY_CFG, HYSDS_DATASETS_CFG=DATASETS_CFG)
    proc = in_verdi_home(user, [str(VENV_BIN / "python"), "-c", _PLAN_DEPENDENCIES, str(job_file), str(work_root)],
                         env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    deps = job["params"]["job_specification"]["dependency_images"]
    assert [d[0] for d in plan["deps"]] == [d["container_image_name"] for d in deps]
    for (_, mounts, options), dep in zip(plan["deps"], deps, strict=True):
        expected = hysds_volumes(dep.get("container_mappings") or {}, plan["workdir"],
                                 {"HOME": HOME, "HOST_VERDI_HOME": HOME})
        # the job dir itself, read-write, is our narrowing of HySDS's <root>/jobs mount (the main container gets it
        # as its working dir); a dependency image may list it explicitly
        got = [m for m in triples(mounts) if m != (plan["workdir"], plan["workdir"], "rw")]
        assert got[:len(expected)] == expected
        # (after the job-files work: the same celeryconfig.py and datasets.json as the main image, HySDS's too)
        assert got[len(expected):] == (job_files(plan["workdir"]) if JOB_FILES else [])
        assert options == (dep.get("runtime_options") or {})
