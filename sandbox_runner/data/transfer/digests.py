"""Checksum files (``X.md5``, ``X.sha256``, any hashlib name) and digests computed while bytes stream past.

HySDS compares the checksum file's whole first line with the digest, so an ``md5sum``-style line
(``<hash>  <name>``) never matches; we take the first whitespace-separated token, so both forms work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox_runner.errors import IntegrityError

#: names a checksum file may end in; ``algorithms_guaranteed`` as HySDS, so a sidecar means the same everywhere
ALGORITHMS = frozenset(a.lower() for a in hashlib.algorithms_guaranteed)
_READ = 1 << 20


def sidecar_algo(name: str) -> str | None:
    """``"x.tif.sha256"`` -> ``"sha256"``; None when ``name`` is not a checksum file (or has nothing before it)."""
    stem, dot, ext = name.rpartition(".")
    algo = ext.lower()
    return algo if dot and stem and algo in ALGORITHMS else None


def read_sidecar(path: Path) -> str:
    """The expected hex digest: the first token of the first non-blank line, lower-cased."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).decode("ascii", errors="replace")
    except OSError as exc:
        raise IntegrityError(f"cannot read checksum file {path.name}: {exc.strerror}") from None
    for line in head.splitlines():
        if line.strip():
            token = line.split()[0].lower()
            # "\<hash>" is how md5sum escapes names with backslashes; the hash itself never has one
            return token.lstrip("\\")
    raise IntegrityError(f"checksum file {path.name} is empty")


def _hexdigest(h: Any, expected_len: int | None) -> str:
    if h.name.startswith("shake_"):
        # SHAKE has no fixed length: use the checksum file's (HySDS's 255 bytes when none is known)
        return str(h.hexdigest(expected_len // 2 if expected_len else 255))
    return str(h.hexdigest())


class Digests:
    """Several hashlib digests of one stream, updated chunk by chunk (hashlib drops the GIL on big chunks)."""

    def __init__(self, algos: Iterable[str]) -> None:
        self._h = {a: hashlib.new(a) for a in sorted(set(algos))}

    def __bool__(self) -> bool:
        return bool(self._h)

    def update(self, chunk: bytes | memoryview) -> None:
        for h in self._h.values():
            h.update(chunk)

    def hexdigests(self, expected: dict[str, str] | None = None) -> dict[str, str]:
        exp = expected or {}
        return {a: _hexdigest(h, len(exp[a]) if a in exp else None) for a, h in self._h.items()}


def file_digests(path: Path, algos: Iterable[str], expected: dict[str, str] | None = None) -> dict[str, str]:
    """Digests of a file on disk: only for files that did not stream through us (a cache entry, a dir's content)."""
    d = Digests(algos)
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            d.update(chunk)
    return d.hexdigests(expected)


def verify(name: str, expected: dict[str, str], actual: dict[str, str]) -> None:
    """Raise :class:`IntegrityError` naming ``name`` unless every expected digest matches."""
    bad = [f"{a} expected {expected[a]} got {actual.get(a)}" for a in sorted(expected)
           if actual.get(a, "").lower() != expected[a].lower()]
    if bad:
        raise IntegrityError(f"checksum mismatch for {name}: {'; '.join(bad)}")
