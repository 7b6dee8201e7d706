"""Reading a policy file (``policies/*.toml``): the operator's path, or the one shipped in the package."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any

from sandbox_runner.errors import ConfigError


def read_policy(path: str | Path | None, shipped: str, what: str) -> tuple[str, dict[str, Any]]:
    """``(source, document)`` of ``path``, or of ``policies/<shipped>`` in the package when ``path`` is None.

    Unreadable files and invalid TOML raise ConfigError naming the file; field checks are the caller's.
    """
    if path is None:
        from importlib import resources  # only for the shipped default

        source = f"sandbox_runner/policies/{shipped}"
        text = resources.files("sandbox_runner").joinpath(f"policies/{shipped}").read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {what}: {exc.strerror}", source=source) from None
    try:
        return source, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None


def job_type_patterns(value: Any, name: str, source: str) -> tuple[str, ...]:
    """A policy field that lists job types as shell globs; ConfigError naming the field when it is not one."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of job-type patterns (strings)", source=source)
    return tuple(value)


def matching_pattern(job_type: str, patterns: tuple[str, ...]) -> str | None:
    """The first of ``patterns`` that ``job_type`` matches (case-sensitive, as job types are), or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(job_type, p)), None)
