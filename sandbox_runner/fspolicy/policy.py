"""The filesystem policy: one TOML file (``policies/filesystem.toml`` ships as the default), read and checked once.

Every problem is reported at load with the field and what is wrong with it, so a typo in an operator's override
fails the first job loudly instead of quietly disabling scrubbing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_runner.errors import ConfigError, JobFormatError
from sandbox_runner.policy.files import read_policy
from sandbox_runner.units import parse_size

RUNGS = ("succeeded", "failed", "quarantine", "cache")
JOB_RUNGS = ("succeeded", "failed")
MIN_CRASHED_GRACE = 60.0
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhdw]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SCHEMA: dict[str, tuple[str, ...]] = {
    "free": ("space_percent", "inodes_percent", "job_inodes"),
    "retention": ("succeeded", "failed", "crashed_grace", "quarantine_ttl"),
    "cache": ("max_size",),
    "scrub": ("interval", "order"),
}


@dataclass(frozen=True)
class CacheCap:
    """The localize cache cap: an absolute size, or a percentage of the filesystem (None: no cap)."""

    size: int | None = None
    percent: float | None = None

    def bytes_for(self, capacity: int) -> int | None:
        if self.size is not None:
            return self.size
        if self.percent is not None:
            return int(capacity * self.percent / 100)
        return None


@dataclass(frozen=True)
class FsPolicy:
    space_percent: float = 10.0
    inodes_percent: float = 5.0
    job_inodes: int = 1000
    succeeded_retention: float = 0.0
    failed_retention: float = 3 * 86400.0
    crashed_grace: float = 3600.0
    quarantine_ttl: float = 86400.0
    cache_cap: CacheCap = CacheCap(percent=25.0)
    scrub_interval: float = 600.0
    order: tuple[str, ...] = RUNGS
    source: str = "<defaults>"

    def keep_free(self, capacity: int, files: int) -> tuple[int, int]:
        """Bytes and inodes that must stay free on a filesystem of this size (rounded up: thresholds)."""
        return math.ceil(capacity * self.space_percent / 100), math.ceil(files * self.inodes_percent / 100)


def parse_duration(value: object, field: str, source: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a duration", field=field, source=source)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m[1]) * _SECONDS[m[2].lower()]
    else:
        raise ConfigError(f"{value!r} is not a duration such as 90s, 10m, 1.5h or 3d", field=field, source=source)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{value!r} is not a non-negative duration", field=field, source=source)
    return seconds


def _percent(value: object, field: str, source: str, *, upper: float = 100.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < upper:
        raise ConfigError(f"{value!r} is not a percentage in [0, {upper:g})", field=field, source=source)
    return float(value)


def _cache_cap(value: object, source: str) -> CacheCap:
    field = "cache.max_size"
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise ConfigError(f"{value!r} is not a percentage such as 25%", field=field, source=source) from None
        return CacheCap(percent=_percent(pct, field, source, upper=100.000001))
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return CacheCap(size=parse_size(value, what=field))
        except JobFormatError as exc:
            raise ConfigError(f"{exc}; or a percentage such as 25%", field=field, source=source) from None
    raise ConfigError(f"{value!r} is not a size (50GB) or a percentage (25%)", field=field, source=source)


def _order(value: object, source: str) -> tuple[str, ...]:
    field = "scrub.order"
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"must be a list of rung names from {list(RUNGS)}", field=field, source=source)
    unknown = [x for x in value if x not in RUNGS]
    if unknown:
        raise ConfigError(f"unknown rung(s) {unknown}; choose from {list(RUNGS)}", field=field, source=source)
    if len(set(value)) != len(value):
        raise ConfigError(f"a rung appears twice in {value}", field=field, source=source)
    jobs = [value.index(r) for r in JOB_RUNGS if r in value]
    if jobs and ("quarantine" not in value or value.index("quarantine") < max(jobs)):
        raise ConfigError("\"quarantine\" must come after \"succeeded\" and \"failed\": moving a job dir into "
                          "quarantine frees nothing until it is purged", field=field, source=source)
    return tuple(value)


def policy_from_dict(doc: Mapping[str, Any], source: str = "<inline>") -> FsPolicy:
    """Check a parsed policy document. Missing keys take the defaults of :class:`FsPolicy`."""
    for section, value in doc.items():
        if section not in _SCHEMA:
            raise ConfigError(f"unknown section; expected one of {sorted(_SCHEMA)}", field=section, source=source)
        if not isinstance(value, dict):
            raise ConfigError("must be a table", field=section, source=source)
        unknown = sorted(set(value) - set(_SCHEMA[section]))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; expected {list(_SCHEMA[section])}", field=section,
                              source=source)
    d = FsPolicy()
    free, ret = doc.get("free", {}), doc.get("retention", {})
    cache, scrub = doc.get("cache", {}), doc.get("scrub", {})
    job_inodes = free.get("job_inodes", d.job_inodes)
    if isinstance(job_inodes, bool) or not isinstance(job_inodes, int) or job_inodes < 0:
        raise ConfigError(f"{job_inodes!r} is not a non-negative integer", field="free.job_inodes", source=source)
    grace = parse_duration(ret.get("crashed_grace", d.crashed_grace), "retention.crashed_grace", source)
    if grace < MIN_CRASHED_GRACE:
        # WorkDir.create makes the dir, then opens and locks .running: for that moment a live job looks crashed
        raise ConfigError(f"must be at least {MIN_CRASHED_GRACE:g}s: a new job dir exists for a moment before "
                          "its lock is taken", field="retention.crashed_grace", source=source)
    interval = parse_duration(scrub.get("interval", d.scrub_interval), "scrub.interval", source)
    if interval <= 0:
        raise ConfigError("must be longer than 0s", field="scrub.interval", source=source)
    return FsPolicy(
        space_percent=_percent(free.get("space_percent", d.space_percent), "free.space_percent", source),
        inodes_percent=_percent(free.get("inodes_percent", d.inodes_percent), "free.inodes_percent", source),
        job_inodes=job_inodes,
        succeeded_retention=parse_duration(ret.get("succeeded", 0), "retention.succeeded", source),
        failed_retention=parse_duration(ret.get("failed", d.failed_retention), "retention.failed", source),
        crashed_grace=grace,
        quarantine_ttl=parse_duration(ret.get("quarantine_ttl", d.quarantine_ttl), "retention.quarantine_ttl",
                                      source),
        cache_cap=_cache_cap(cache["max_size"], source) if "max_size" in cache else d.cache_cap,
        scrub_interval=interval,
        order=_order(scrub["order"], source) if "order" in scrub else d.order,
        source=source,
    )


def load_fs_policy(path: str | Path | None = None) -> FsPolicy:
    """Read a policy file; None reads the one shipped in the package (``sandbox_runner/policies/``)."""
    source, doc = read_policy(path, "filesystem.toml", "filesystem policy")
    return policy_from_dict(doc, source)
