"""The reference corpus of real HySDS files (public deployments), read in place, never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

from support.machine import require

#: Real HySDS files from public repositories are test data read in place from here, never copied into the
#: project: ``<owner>__<repo>__<deployed name>`` files plus ``jobs/job.json.<type>`` (see its README.md).
REFERENCE = Path(os.environ.get("SANDBOX_RUNNER_REFERENCE", "/work/shared/reference"))
HYSDS_CORPUS = REFERENCE / "hysds-corpus"
#: One real file of each kind and shape the model and CLI tests look into (a large OPERA PGE job, lightweight
#: system jobs, hysds_commons' schema examples, a resolved job JSON, a worker config).
HYSDS_SAMPLES = (
    "nasa__opera-sds-pcm__job-spec.json.SCIFLO_L3_DSWx_HLS",
    "nasa__opera-sds-pcm__hysds-io.json.SCIFLO_L3_DSWx_HLS",
    "hysds__lightweight-jobs__job-spec.json.lightweight-echo",
    "hysds__lightweight-jobs__hysds-io.json.lightweight-echo",
    "hysds__lightweight-jobs__job-spec.json.lw-mozart-retry",
    "hysds__lightweight-jobs__hysds-io.json.lw-mozart-retry",
    "hysds__hysds_commons__job-spec.json.valid",
    "hysds__hysds_commons__job-spec.json.gpus",
    "hysds__hysds__job_worker.json.retry_job",
    "jobs/job.json.lw-tosca-wget",
)


def corpus_file(saved_as: str) -> Path:
    """The reference-corpus file saved as ``saved_as``; skips locally (fails under CI=true) when it is absent."""
    path = HYSDS_CORPUS / saved_as
    require(path.is_file(), f"HySDS reference file {path} not found (set SANDBOX_RUNNER_REFERENCE to the "
                            "directory holding hysds-corpus/)")
    return path


def deployed_name(saved_as: str) -> str:
    """The name HySDS deploys a corpus file under (it tells a file's kind by that name)."""
    return saved_as.rsplit("/", 1)[-1].rsplit("__", 1)[-1]


def corpus_file_as_deployed(saved_as: str, directory: Path) -> Path:
    """A symlink ``<directory>/<deployed name>`` to the corpus file: read in place, named as HySDS names it."""
    link = directory / deployed_name(saved_as)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(corpus_file(saved_as))
    return link
