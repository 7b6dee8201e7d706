"""parse_size / format_size: HySDS disk_usage strings, parsed robustly, rejected with a one-line message."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_runner.errors import JobFormatError
from sandbox_runner.units import format_size, parse_size

KI = 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100KB", 100 * KI),
        ("1.5GB", 3 * KI**3 // 2),
        ("2 TB", 2 * KI**4),
        ("10mb", 10 * KI**2),
        ("512", 512),
        ("1GiB", KI**3),
        ("100K", 100 * KI),
        ("7B", 7),
        ("  3 gb\t", 3 * KI**3),
        ("1PB", KI**5),
        (".5KB", 512),
        ("2.KB", 2 * KI),
        ("0.1KB", 103),  # 102.4 bytes, rounded up: a size is a requirement
        ("0", 0),
        (512, 512),
        (1.5, 2),
    ],
)
def test_parse_size_examples(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1.5XB",
        "-1GB",
        "",
        "GB",
        "   ",
        "1e3",
        "1,000KB",
        "1 2GB",
        "1..5GB",
        "1.5.5GB",
        "\uff11GB",
        "1 G B",
        "5 bytes",
    ],
)
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(JobFormatError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "\n" not in message


@pytest.mark.parametrize("value", [None, True, -1, -0.5, math.nan, math.inf, [1], {"a": 1}])
def test_parse_size_rejects_bad_types(value: object) -> None:
    with pytest.raises(JobFormatError):
        parse_size(value)  # type: ignore[arg-type]


def test_parse_size_message_names_the_value() -> None:
    with pytest.raises(JobFormatError) as info:
        parse_size("1.5XB")
    assert str(info.value) == (
        "invalid disk_usage '1.5XB': expected a number and a unit such as 100KB, 1.5GB or 2 TB"
    )
    with pytest.raises(JobFormatError, match=r"^invalid min_free 'x'"):
        parse_size("x", what="min_free")


_UNITS = [("", 0), ("b", 0), ("k", 1), ("kb", 1), ("kib", 1), ("m", 2), ("mb", 2), ("mib", 2)]
_UNITS += [("g", 3), ("gb", 3), ("gib", 3), ("t", 4), ("tb", 4), ("tib", 4), ("p", 5), ("pb", 5), ("pib", 5)]


def _recase(text: str, flags: list[bool]) -> str:
    return "".join(c.upper() if up else c for c, up in zip(text, flags + [False] * len(text), strict=False))


@given(
    n=st.integers(min_value=0, max_value=10**12),
    unit=st.sampled_from(_UNITS),
    sep=st.sampled_from(["", " ", "  ", "\t"]),
    flags=st.lists(st.booleans(), max_size=3),
)
def test_parse_integer_with_unit(n: int, unit: tuple[str, int], sep: str, flags: list[bool]) -> None:
    suffix, power = unit
    text = f"{n}{sep}{_recase(suffix, flags)}" if suffix else str(n)
    assert parse_size(text) == n * KI**power


@given(
    whole=st.integers(min_value=0, max_value=10**6),
    frac=st.text(alphabet="0123456789", min_size=1, max_size=6),
    unit=st.sampled_from(_UNITS),
)
def test_parse_fraction_rounds_up(whole: int, frac: str, unit: tuple[str, int]) -> None:
    suffix, power = unit
    scaled = int(f"{whole}{frac}") * KI**power
    assert parse_size(f"{whole}.{frac}{suffix}") == -(-scaled // 10 ** len(frac))


@given(k=st.integers(min_value=0, max_value=1023), power=st.integers(min_value=0, max_value=5))
def test_format_parse_round_trip_exact(k: int, power: int) -> None:
    n = k * KI**power
    assert parse_size(format_size(n)) == n


@given(n=st.integers(min_value=0, max_value=KI**6))
def test_format_parse_round_trip_close(n: int) -> None:
    back = parse_size(format_size(n))
    if n < KI:
        assert back == n
    else:  # two decimals of a unit >= 1: within 0.5 % (+1 for the rounding up of fractions)
        assert abs(back - n) <= n * 0.005 + 1


@given(st.text(max_size=20))
def test_parse_never_fails_otherwise(text: str) -> None:
    try:
        result = parse_size(text)
    except JobFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, int) and result >= 0


@given(st.text(alphabet=st.characters(exclude_categories=["Nd"]), max_size=20))
def test_text_without_digits_is_rejected(text: str) -> None:
    with pytest.raises(JobFormatError):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (3 * KI**3 // 2, "1.5 GiB"),
        (KI**2 - 1, "1 MiB"),
        (5 * KI**4, "5 TiB"),
        (-2048, "-2 KiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
