"""Every real HySDS file in the reference corpus validates under the name it is deployed with.

The corpus (job-specs, hysds-io files, worker configs and datasets.json from public deployments) is test data
read in place from ``$SANDBOX_RUNNER_REFERENCE/hysds-corpus`` (default ``/work/shared/reference``, as
``support.corpus.HYSDS_CORPUS``), never copied into the project. Files are saved there as
``<owner>__<repo>__<deployed name>``; HySDS tells a file's kind by its deployed name, so each is validated
through a symlink carrying that name. The corpus README names three hysds_commons files that are broken on
purpose (its own schema tests expect them to fail).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.corpus import HYSDS_CORPUS
from support.machine import VENV_BIN, require

from sandbox_runner.models import validate_file

CORPUS = HYSDS_CORPUS
BROKEN_ON_PURPOSE = {
    "hysds__hysds_commons__hysds-io.json.value",
    "hysds__hysds_commons__hysds-io.json.conditional_required",
    "hysds__hysds_commons__job-spec.json.value",
}
#: deployed-name prefix -> the kind ``validate`` must name
KINDS = {"job-spec.json.": "job-spec", "hysds-io.json.": "hysds-io", "datasets.json": "datasets",
         "job_worker.json.": "worker-config", "job.json.": "job"}


def corpus_under_deployed_names(tmp_path: Path) -> dict[Path, str]:
    """Symlinks ``<tmp>/<n>/<deployed name>`` -> corpus file (one dir each: three files deploy as datasets.json)."""
    require(CORPUS.is_dir(), f"HySDS reference corpus not found at {CORPUS}")
    saved = sorted(p for p in CORPUS.iterdir() if p.is_file() and "__" in p.name)
    links: dict[Path, str] = {}
    for i, path in enumerate(saved):
        link = tmp_path / str(i) / path.name.rsplit("__", 1)[-1]
        link.parent.mkdir()
        link.symlink_to(path)
        links[link] = path.name
    for i, path in enumerate(sorted((CORPUS / "jobs").glob("job.json.*")), start=len(saved)):
        link = tmp_path / str(i) / path.name  # jobs/ holds resolved job JSONs, already under deployed names
        link.parent.mkdir()
        link.symlink_to(path)
        links[link] = f"jobs/{path.name}"
    assert len(saved) >= 151 and {p.name for p in saved} >= BROKEN_ON_PURPOSE, "corpus incomplete"
    return links


def expected_kind(link: Path) -> str:
    return next(kind for prefix, kind in KINDS.items() if link.name.startswith(prefix))


def test_every_corpus_file_validates_under_its_deployed_name(tmp_path: Path) -> None:
    links = corpus_under_deployed_names(tmp_path)
    wrong = []
    for link, saved in links.items():
        kind, error = validate_file(str(link))
        broken = saved in BROKEN_ON_PURPOSE
        if kind != expected_kind(link) or (error is None) == broken:
            wrong.append(f"{saved}: kind {kind}, error {error}")
    assert not wrong, "\n".join(wrong)


def test_validate_command_over_the_corpus_reports_exactly_the_three_broken(tmp_path: Path) -> None:
    require((VENV_BIN / "sandbox-runner").exists(), ".venv with sandbox-runner missing (run `make setup`)")
    links = corpus_under_deployed_names(tmp_path)
    proc = subprocess.run([str(VENV_BIN / "sandbox-runner"), "validate", *map(str, links)], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # some file is invalid
    lines = proc.stdout.splitlines()
    assert len(lines) == len(links) and "Traceback" not in proc.stdout + proc.stderr
    invalid = set()
    for (link, saved), line in zip(links.items(), lines, strict=True):
        assert line.startswith(f"{link}: {expected_kind(link)}: "), line
        if line.startswith(f"{link}: {expected_kind(link)}: invalid: {link}: "):
            invalid.add(saved)
        else:
            assert line.startswith(f"{link}: {expected_kind(link)}: valid"), line
    assert invalid == BROKEN_ON_PURPOSE
