"""A product dir -> what datasets.json says about it (HYSDS-WORKER.md section 5, ``hysds/recognize.py``).

The first entry whose ``match_pattern`` searches the product path wins (its ``alt_match_pattern``, when set, must
match the path or a file inside it too). Templates (``ipath``, ``level``, ``type``, ``publish``/``browse``
``location`` and ``urls``, ``index``) are ``str.format`` over the named groups plus ``id``, ``version``,
``level``, ``type``, ``hostname``, ``dataset`` (the dataset.json document) and ``met`` (the metadata); attribute
access (``{met.__class__}``) is refused, since job outputs feed these values.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import string
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runner.errors import PublishError
from sandbox_runner.models import DatasetEntry, DatasetsConfig

EXTRACTOR_TIMEOUT = 600


class _ItemOnlyFormatter(string.Formatter):
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name.split("[", 1)[0] or "]." in field_name:
            raise PublishError(f"attribute access {{{field_name}}} is not allowed in datasets.json templates")
        return super().get_field(field_name, args, kwargs)


_FMT = _ItemOnlyFormatter()


def render(template: str, values: Mapping[str, Any], *, what: str, prod_id: str) -> str:
    try:
        return _FMT.vformat(template, (), values)
    except PublishError:
        raise
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise PublishError(f"{prod_id}: cannot fill datasets.json {what} {template!r}: "
                           f"{type(exc).__name__}: {exc}") from None


@dataclass
class Product:
    id: str
    path: Path
    version: str
    dataset_json: dict[str, Any]
    entry: DatasetEntry
    values: dict[str, Any]
    met: dict[str, Any] = field(default_factory=dict)
    ipath: str = ""
    level: str = ""
    type: str = ""
    index: str | None = None
    publish_location: str | None = None
    publish_urls: list[str] = field(default_factory=list)
    browse_location: str | None = None
    browse_urls: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        parts = self.ipath.split("/")
        return parts[1] if len(parts) > 1 else self.ipath


def _read_json(path: Path, prod_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PublishError(f"{prod_id}: cannot read {path.name}: {exc}") from None
    if not isinstance(doc, dict):
        raise PublishError(f"{prod_id}: {path.name} must hold a JSON object")
    return doc


def _match(entry: DatasetEntry, prod_dir: Path) -> dict[str, Any] | None:
    m = entry.match(str(prod_dir))
    if m is None:
        return None
    groups = {k: v for k, v in m.groupdict().items() if v is not None}
    if entry.alt_match_pattern:
        candidates = [str(prod_dir)] + [str(p) for p in sorted(prod_dir.rglob("*"))]
        alt = next((am for c in candidates if (am := re.search(entry.alt_match_pattern, c))), None)
        if alt is None:
            return None
        groups.update({k: v for k, v in alt.groupdict().items() if v is not None})
    return groups


def extract_metadata(extractor: str, prod_dir: Path, env: Mapping[str, str], prod_id: str) -> dict[str, Any]:
    """Run the datasets.json ``extractor`` (``script:`` prefix, ``$VARS`` from the worker env) on the product."""
    command = string.Template(extractor.removeprefix("script:").strip()).safe_substitute(env)
    argv = [*shlex.split(command), str(prod_dir)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=EXTRACTOR_TIMEOUT, check=False,
                              env=dict(env), cwd=prod_dir)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PublishError(f"{prod_id}: metadata extractor {argv[0]!r} failed: {exc}") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise PublishError(f"{prod_id}: metadata extractor {argv[0]!r} exited {proc.returncode}: {tail[0]}")
    try:
        met = json.loads(proc.stdout)
    except ValueError:
        raise PublishError(f"{prod_id}: metadata extractor {argv[0]!r} did not print a JSON object") from None
    if not isinstance(met, dict):
        raise PublishError(f"{prod_id}: metadata extractor {argv[0]!r} did not print a JSON object")
    return met


def _metadata(entry: DatasetEntry, prod_dir: Path, prod_id: str, env: Mapping[str, str]) -> dict[str, Any]:
    met_file = prod_dir / f"{prod_id}.met.json"
    if met_file.exists():
        return _read_json(met_file, prod_id)
    seed_file = prod_dir / "met.json"
    seed = _read_json(seed_file, prod_id) if seed_file.exists() else {}
    if not entry.extractor:
        return seed
    met = extract_metadata(entry.extractor, prod_dir, env, prod_id)
    met["data_product_name"] = prod_id
    met.update(seed)
    met_file.write_text(json.dumps(met, indent=2, sort_keys=True) + "\n")
    if seed_file.exists():
        os.unlink(seed_file)  # as HySDS: the seed has been folded into <id>.met.json
    return met


def recognize(cfg: DatasetsConfig, prod_dir: Path, *, hostname: str, env: Mapping[str, str]) -> Product:
    prod_id = prod_dir.name
    ds_json = _read_json(prod_dir / f"{prod_id}.dataset.json", prod_id)
    version = ds_json.get("version")
    if not isinstance(version, str | int | float) or isinstance(version, bool) or version == "":
        raise PublishError(f"{prod_id}: {prod_id}.dataset.json has no \"version\"")
    for entry in cfg.datasets:
        groups = _match(entry, prod_dir)
        if groups is not None:
            break
    else:
        raise PublishError(f"{prod_id}: no datasets.json entry matches {prod_dir}")
    values: dict[str, Any] = {"id": prod_id, **groups, "version": str(version)}
    met = _metadata(entry, prod_dir, prod_id, env)
    values.update(hostname=hostname, dataset=ds_json, met=met)
    p = Product(id=prod_id, path=prod_dir, version=str(version), dataset_json=ds_json, entry=entry, values=values,
                met=met)

    def fill(template: str, what: str) -> str:
        return render(template, values, what=what, prod_id=prod_id)

    p.level = values["level"] = fill(entry.level, "level")
    p.type = values["type"] = fill(entry.type, "type")
    p.ipath = fill(entry.ipath, "ipath")
    index = ds_json.get("index") or entry.index
    p.index = fill(index, "index") if isinstance(index, str) else None
    if entry.publish is not None:
        p.publish_location = fill(entry.publish.location, "publish.location")
        p.publish_urls = [fill(u, "publish.urls") for u in entry.publish.urls]
    if entry.browse is not None:
        p.browse_location = fill(entry.browse.location, "browse.location")
        p.browse_urls = [fill(u, "browse.urls") for u in entry.browse.urls]
    return p
