"""A job-spec and its hysds-io side by side must name the same params (``sandbox-runner validate``).

HySDS pairs ``job-spec.json.<type>`` with ``hysds-io.json.<type>`` (hysds_commons' ``get_hysds_io_params`` derives
the hysds-io id from the job-spec's). At submission ``resolve_hysds_job`` walks the job-spec's params and takes
each value from what the hysds-io filled in: a job-spec param the hysds-io lacks is never filled, so every
submission of that type fails with "params must specify '<name>' parameter"; a hysds-io param the job-spec lacks
is shown to the submitter and then silently dropped. Each file can be valid on its own and the pair still broken,
so ``validate`` checks pairs: files of the same type in the same directory (as HySDS repos deploy them, in
``docker/``). Files in different directories are not paired.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sandbox_runner.errors import InputError
from sandbox_runner.models.detect import kind_from_name
from sandbox_runner.models.hysdsio import load_hysds_io
from sandbox_runner.models.jobspec import load_job_spec

__all__ = ["expand_paths", "pair_mismatches"]

_PREFIX = {"job-spec": "job-spec.json.", "hysds-io": "hysds-io.json."}


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Each directory replaced by the files directly in it whose names announce a HySDS kind, sorted; files
    (and paths that do not exist, for validate to report) kept as given."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if kind_from_name(n) and os.path.isfile(os.path.join(path, n)))
            out.extend(os.path.join(path, n) for n in names)
        else:
            out.append(path)
    return out


def _job_type(path: str) -> tuple[str, str] | None:
    """``(kind, type)`` for ``job-spec.json.<type>`` / ``hysds-io.json.<type>``, else None."""
    kind = kind_from_name(path)
    prefix = _PREFIX.get(kind or "")
    name = os.path.basename(path)
    if prefix is None or not name.lower().startswith(prefix) or len(name) == len(prefix):
        return None
    return kind or "", name[len(prefix):]


def _param_names(kind: str, path: str) -> list[str]:
    with open(path, "rb") as fh:
        data = fh.read()
    doc = load_job_spec(data, path) if kind == "job-spec" else load_hysds_io(data, path)
    return [p.name for p in doc.params]


def pair_mismatches(valid_paths: Iterable[str]) -> list[str]:
    """One line per param a side-by-side job-spec/hysds-io pair does not share (call with files that validated)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for path in valid_paths:
        typed = _job_type(path)
        if typed is not None:
            found.setdefault((os.path.dirname(path), typed[1]), {})[typed[0]] = path
    lines: list[str] = []
    for (_, job_type), files in found.items():
        if len(files) != 2:
            continue
        spec, io = files["job-spec"], files["hysds-io"]
        try:
            in_spec, in_io = _param_names("job-spec", spec), _param_names("hysds-io", io)
        except (OSError, InputError):
            continue  # validate reported the file already
        where = f"{spec} + {io}: job-spec/hysds-io pair {job_type!r}: invalid:"
        lines += [f"{where} param {n!r} is in {spec} but not in {io} (the hysds-io never fills it: a submission "
                  f"through it fails with \"params must specify '{n}' parameter\"; add it to the hysds-io or drop it)"
                  for n in in_spec if n not in in_io]
        lines += [f"{where} param {n!r} is in {io} but not in {spec} (the submitter's value is dropped; add it "
                  "to the job-spec or drop it)" for n in in_io if n not in in_spec]
    return lines
