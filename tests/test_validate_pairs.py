"""``sandbox-runner validate`` pairs ``job-spec.json.X`` with ``hysds-io.json.X`` side by side: their params must match.

hysds_commons' ``resolve_hysds_job`` fills each job-spec param from the hysds-io: one the hysds-io lacks makes
every submission through it fail ("params must specify '<name>' parameter"); one the job-spec lacks is dropped.
Real pairs from the reference corpus (read in place through symlinks under their deployed names) pass; a pair
damaged the way a rename in one file but not the other damages it is reported, naming both files and the param.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.corpus import HYSDS_CORPUS, corpus_file
from support.machine import VENV_BIN, require

#: repos whose job-specs and hysds-io files deploy side by side (hysds_commons' are independent schema examples)
REAL_REPOS = ("nasa__opera-sds-pcm__", "hysds__lightweight-jobs__", "pymonger__hello_world__")


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    return subprocess.run([str(VENV_BIN / "sandbox-runner"), "validate", *map(str, paths)], capture_output=True,
                          text=True, check=False, timeout=120)


def deploy(repo: str, directory: Path) -> list[Path]:
    """The repo's job-specs and hysds-io files as ``<directory>/<deployed name>`` symlinks to the corpus."""
    require(HYSDS_CORPUS.is_dir(), f"HySDS reference corpus not found at {HYSDS_CORPUS}")
    directory.mkdir()
    links = []
    for saved in sorted(HYSDS_CORPUS.glob(f"{repo}*")):
        name = saved.name.rsplit("__", 1)[-1]
        if name.startswith(("job-spec.json.", "hysds-io.json.")):
            links.append(directory / name)
            links[-1].symlink_to(saved)
    return links


def test_real_pairs_side_by_side_pass(tmp_path: Path) -> None:
    dirs = [tmp_path / repo.strip("_") for repo in REAL_REPOS]
    counts = [len(deploy(repo, d)) for repo, d in zip(REAL_REPOS, dirs, strict=True)]
    assert counts[0] > 90 and counts[1] > 20 and counts[2] == 2, counts
    proc = validate(*dirs)  # directories: every HySDS file directly in them, pairs checked
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == sum(counts)
    assert all(": valid" in line and "job-spec/hysds-io pair" not in line for line in lines), proc.stdout


def test_explicit_pair_passes(tmp_path: Path) -> None:
    spec = tmp_path / "job-spec.json.lw-tosca-wget"
    io = tmp_path / "hysds-io.json.lw-tosca-wget"
    spec.symlink_to(corpus_file("hysds__lightweight-jobs__job-spec.json.lw-tosca-wget"))
    io.symlink_to(corpus_file("hysds__lightweight-jobs__hysds-io.json.lw-tosca-wget"))
    proc = validate(spec, io)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [f"{spec}: job-spec: valid", f"{io}: hysds-io: valid"]


def test_a_damaged_pair_is_reported_naming_both_files_and_the_param(tmp_path: Path) -> None:
    spec_doc = json.loads(corpus_file("nasa__opera-sds-pcm__job-spec.json.slc_download").read_text())
    io_doc = json.loads(corpus_file("nasa__opera-sds-pcm__hysds-io.json.slc_download").read_text())
    renamed = io_doc["params"][0]["name"]
    assert renamed in [p["name"] for p in spec_doc["params"]]  # the real pair agrees
    io_doc["params"][0]["name"] = renamed + "_v2"  # renamed in the hysds-io only
    docker = tmp_path / "docker"
    docker.mkdir()
    spec = docker / "job-spec.json.slc_download"
    io = docker / "hysds-io.json.slc_download"
    spec.write_text(json.dumps(spec_doc))
    io.write_text(json.dumps(io_doc))
    proc = validate(docker)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"{io}: hysds-io: valid", f"{spec}: job-spec: valid"]  # each file alone is fine
    where = f"{spec} + {io}: job-spec/hysds-io pair 'slc_download': invalid: "
    assert lines[2] == (f"{where}param {renamed!r} is in {spec} but not in {io} (the hysds-io never fills it: a "
                        f"submission through it fails with \"params must specify '{renamed}' parameter\"; add it "
                        "to the hysds-io or drop it)")
    assert lines[3].startswith(f"{where}param '{renamed}_v2' is in {io} but not in {spec} ")
    assert len(lines) == 4 and "Traceback" not in proc.stderr


def test_only_side_by_side_files_pair(tmp_path: Path) -> None:
    """The same type in two directories is two deployments, not a pair; an invalid file is not paired either."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec = tmp_path / "a" / "job-spec.json.x"
    spec.write_text(json.dumps({"command": "/bin/true", "params": [{"name": "p", "destination": "positional"}]}))
    io = tmp_path / "b" / "hysds-io.json.x"
    io.write_text(json.dumps({"params": [{"name": "q", "from": "submitter"}]}))
    assert validate(spec, io).returncode == 0
    broken = tmp_path / "a" / "hysds-io.json.x"
    broken.write_text(json.dumps({"params": [{"name": "q", "from": "nowhere"}]}))
    proc = validate(tmp_path / "a")
    assert proc.returncode == 2
    assert [line.split(": ")[1:3] for line in proc.stdout.splitlines()] == [["hysds-io", "invalid"],
                                                                            ["job-spec", "valid"]]


def test_a_directory_without_hysds_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here\n")
    proc = validate(tmp_path)
    assert proc.returncode == 2 and "no HySDS files" in proc.stdout
