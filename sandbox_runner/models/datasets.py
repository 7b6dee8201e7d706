"""``datasets.json`` (``HYSDS_DATASETS_CFG``): how products are recognized and where they are published.

The first entry whose ``match_pattern`` regex ``search()``es a product path wins (HYSDS-WORKER.md section 5).
``ipath``, ``level``, ``type`` and the ``publish``/``browse`` locations and urls are ``str.format`` templates
over the match's named groups. Regexes are compiled at load time so a typo fails the load with the field
named, instead of failing the first publish.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sandbox_runner.errors import ConfigError
from sandbox_runner.models._decode import Document, Model, field_error, load_as

__all__ = ["DatasetEntry", "DatasetsConfig", "PublishTarget", "load_datasets_config"]


class PublishTarget(Model, frozen=True, kw_only=True):
    """``publish`` / ``browse``: the object-store ``location`` and the public ``urls`` of a dataset."""

    location: str
    urls: list[str] = []
    s3_profile_name: str | None = msgspec.field(default=None, name="s3-profile-name")
    sort_order: list[Any] | None = None  # browse only

    def __post_init__(self) -> None:
        if not self.location:
            raise field_error("location", "must not be empty")


def _check_regex(field: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise field_error(field, f"invalid regular expression {pattern!r}: {exc}") from None


class DatasetEntry(Model, frozen=True, kw_only=True):
    """One dataset type."""

    ipath: str
    match_pattern: str
    level: str
    type: str
    alt_match_pattern: str | None = None
    version: str | None = None
    publish: PublishTarget | None = None
    browse: PublishTarget | None = None
    extractor: str | None = None
    index: str | None = None
    priority: Any = None

    def __post_init__(self) -> None:
        if not self.ipath:
            raise field_error("ipath", "must not be empty")
        _check_regex("match_pattern", self.match_pattern)
        _check_regex("alt_match_pattern", self.alt_match_pattern)

    @property
    def dataset(self) -> str:
        """The dataset name HySDS indexes: ``ipath`` after its first ``/`` (or ``ipath`` itself)."""
        parts = self.ipath.split("/")
        return parts[1] if len(parts) > 1 else self.ipath

    def match(self, path: str) -> re.Match[str] | None:
        """``match_pattern.search(path)`` (the pattern compiles: it was checked at load time)."""
        return re.search(self.match_pattern, path)


class DatasetsConfig(Document, frozen=True, kw_only=True):
    """The whole datasets.json file."""

    datasets: list[DatasetEntry]

    def recognize(self, path: str) -> DatasetEntry | None:
        """The first entry whose ``match_pattern`` matches ``path`` (ignoring ``alt_match_pattern``)."""
        return next((d for d in self.datasets if d.match(path)), None)


def load_datasets_config(data: dict[str, Any] | bytes | str, source: str | None = None) -> DatasetsConfig:
    """Validate a datasets.json document; raises :class:`ConfigError` naming the file, field and problem."""
    return load_as(DatasetsConfig, data, source, ConfigError)
