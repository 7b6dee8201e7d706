"""Byte sizes as HySDS writes them (``disk_usage: "100GB"``), parsed robustly.

HySDS itself only understands ``<int>GB|MB|KB`` and crashes on ``"1.5GB"``, ``"1TB"`` or ``"10mb"`` (leaving
the job ``job-queued``). We accept the superset people actually write, keep HySDS's meaning of the units
(KB/MB/GB are powers of 1024, like KiB/MiB/GiB), and reject anything else with a one-line
:class:`JobFormatError`.
"""

from __future__ import annotations

import math
import re
import threading

from sandbox_runner.errors import JobFormatError

__all__ = ["format_size", "parse_size"]

_POWERS = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

# number (``12``, ``1.5``, ``.5``, ``2.``), optional blanks, optional unit: B, K, KB, KiB, ... (any case).
_SIZE_RE = re.compile(
    r"(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?[ \t]*(?P<unit>(?:[kmgtpe](?:i?b)?)|b)?",
    re.ASCII | re.IGNORECASE,
)

_HINT = "expected a number and a unit such as 100KB, 1.5GB or 2 TB"


def parse_size(text: str | int | float, *, what: str = "disk_usage") -> int:
    """Return the number of bytes ``text`` stands for (fractions rounded up: sizes are requirements).

    ``what`` names the value in the error message, e.g. ``invalid disk_usage '1.5XB': ...``.
    """
    if isinstance(text, bool):  # bool is an int subclass; ``True`` is not a size
        raise JobFormatError(f"invalid {what} {text!r}: {_HINT}")
    if isinstance(text, int):
        if text < 0:
            raise JobFormatError(f"invalid {what} {text!r}: a size cannot be negative")
        return text
    if isinstance(text, float):
        if not math.isfinite(text) or text < 0:
            raise JobFormatError(f"invalid {what} {text!r}: {_HINT}")
        return math.ceil(text)
    if not isinstance(text, str):
        raise JobFormatError(f"invalid {what} {text!r}: expected a string such as 100KB, 1.5GB or 2 TB")
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or not (match["int"] or match["frac"]):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise JobFormatError(f"invalid {what} {shown!r}: {_HINT}")
    unit = (match["unit"] or "").lower()
    power = _POWERS[unit[:1]]
    frac = match["frac"] or ""
    # exact integer arithmetic: int(digits) * 1024**power / 10**len(frac), rounded up
    scaled = int((match["int"] or "0") + frac) * 1024**power
    return -(-scaled // 10 ** len(frac))


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(n: int) -> str:
    """Human-readable size with binary units, at most two decimals: ``1.5 GiB``, ``512 B``.

    ``parse_size(format_size(n)) == n`` whenever ``n`` is a whole number of some unit below 1024 of it.
    """
    if n < 0:
        return "-" + format_size(-n)
    power = 0
    while power < len(_UNITS) - 1 and n >= 1024 ** (power + 1):
        power += 1
    value = n / 1024**power
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    if text == "1024" and power < len(_UNITS) - 1:  # 1023.999 KiB rounds up: say 1 MiB instead
        power, text = power + 1, "1"
    return f"{text} {_UNITS[power]}"


def limit_seconds(value: object) -> float | None:
    """A time limit as seconds a timer can wait, or None for no limit: 0, negatives, NaN, inf, past
    ``threading.TIMEOUT_MAX`` (a timer thread dies of OverflowError there), booleans and non-numbers. Numeric
    strings count: HySDS's job_info carries both forms."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds <= threading.TIMEOUT_MAX else None
