"""Shared decoding for every HySDS document: JSON -> dict -> typed, frozen msgspec model, one-line errors.

msgspec reports problems as ``Expected `str`, got `int` - at `$.params[2].name```; users should instead
read ``job-spec.json.x: params[2].name: expected str, got int``. Checks that msgspec cannot express
(``__post_init__``) raise :func:`field_error`, which carries the offending sub-field so the message still
names it exactly.
"""

from __future__ import annotations

import copy
import re
from typing import Any, TypeVar

import msgspec

from sandbox_runner.errors import InputError
from sandbox_runner.units import parse_size

__all__ = [
    "RAW_NAME",
    "SOURCE_NAME",
    "SPEC_NAME",
    "Document",
    "Model",
    "check_size",
    "decode_json",
    "field_error",
    "load_as",
    "lone_surrogate",
    "without_surrogates",
]

RAW_NAME = "__raw__"
SOURCE_NAME = "__source__"
SPEC_NAME = "__job_specification__"
_HIDDEN = frozenset({RAW_NAME, SOURCE_NAME, SPEC_NAME})
_MARK = "\x00field:"


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every typed part of a document; unknown fields are ignored here and kept in ``raw``."""


class Document(Model, frozen=True, kw_only=True):
    """A whole file: typed fields plus the original mapping (``raw``) and where it came from (``source``).

    ``raw`` is a private copy the runner may enrich and write back; the typed fields are a read-only view of
    it as it was loaded. Both are stored under names no HySDS document uses, so they never collide with real
    keys.
    """

    raw: dict[str, Any] = msgspec.field(default_factory=dict, name=RAW_NAME)
    source: str | None = msgspec.field(default=None, name=SOURCE_NAME)


D = TypeVar("D", bound=Document)


def field_error(field: str, message: str) -> ValueError:
    """An error for ``__post_init__``: msgspec adds the struct's path; ``field`` is appended to it."""
    return ValueError(f"{_MARK}{field}\x00{message}")


def check_size(field: str, value: str | int | float | None) -> None:
    """Reject a ``disk_usage``-like value that :func:`parse_size` cannot read (HySDS would crash later)."""
    if value is None:
        return
    try:
        parse_size(value, what=field.rsplit(".", 1)[-1])
    except InputError as exc:
        raise field_error(field, str(exc)) from None


def _line_col(data: bytes, offset: int) -> str:
    offset = max(0, min(offset, len(data)))
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line} column {column}"


def decode_json(data: bytes | bytearray | str, source: str | None, error: type[InputError]) -> Any:
    """Parse JSON text; a syntax error becomes ``not valid JSON: <reason> (line L column C)``."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    if not raw.strip():
        raise error("not valid JSON: the document is empty", source=source)
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        text = str(exc)
        found = re.search(r"\(byte (\d+)\)$", text)
        if found:
            reason = text[: found.start()].removeprefix("JSON is malformed: ").strip()
            offset = int(found.group(1))
            if reason == "trailing characters":  # msgspec points just past the first trailing byte
                offset -= 1
            where = _line_col(raw, offset)
        else:  # "Input data was truncated": the document ends too early
            reason, where = "unexpected end of document", _line_col(raw, len(raw.rstrip()))
        raise error(f"not valid JSON: {reason} ({where})", source=source) from None


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


def load_as(cls: type[D], data: Any, source: str | None, error: type[InputError], *, prefix: str = "") -> D:
    """Validate ``data`` (dict, or JSON bytes/str) as ``cls``; attach ``raw``/``source``; raise ``error``.

    ``prefix`` is prepended to field paths, for documents nested in another (``params.job_specification``); a
    nested document is a value of its parent, never JSON text to parse (a string there is a wrong type).
    """
    if isinstance(data, bytes | bytearray | memoryview | str) and not prefix:
        data = decode_json(bytes(data) if isinstance(data, memoryview) else data, source, error)
        owned = data
    else:
        owned = copy.deepcopy(data)
    if not isinstance(data, dict):
        raise error(f"expected a JSON object, got {_type_name(data)}", field=prefix or None, source=source)
    visible = {k: v for k, v in data.items() if k not in _HIDDEN} if _HIDDEN & data.keys() else data
    try:
        model = msgspec.convert(visible, cls)
    except msgspec.ValidationError as exc:
        field, message = translate(str(exc), cls)
        path = ".".join(p for p in (prefix, field) if p).replace(".[", "[")
        raise error(message, field=path or None, source=source) from None
    return msgspec.structs.replace(model, raw=owned, source=source)


_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING_RE = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


def translate(text: str, cls: type) -> tuple[str, str]:
    """A msgspec message as ``(field path, problem)``: ``("params[2].name", "expected str, got int")``."""
    found = _AT_RE.match(text)
    message, path = (found["msg"], found["path"] or "") if found else (text, "")
    path = path.removeprefix(".")
    missing = _MISSING_RE.match(message)
    if missing:
        path, message = _join(path, missing["name"]), "missing required field"
    elif message.startswith(_MARK):
        sub, _, message = message[len(_MARK) :].partition("\x00")
        path = _join(path, sub)
    elif message.startswith("Invalid enum value"):
        choices = _literal_choices(cls, path)
        value = message.removeprefix("Invalid enum value").strip()
        message = f"invalid value {value}" + (f" (expected one of: {', '.join(choices)})" if choices else "")
    elif message.startswith("Expected `array` of length >= 1"):
        message = "must not be empty"
    else:
        message = message.replace("`", "")
        message = message[:1].lower() + message[1:]
    return path, message.replace("\r", " ").replace("\n", " ")


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


def _literal_choices(cls: type, path: str) -> list[str]:
    """Walk the model's types along ``path`` to list the allowed values of a Literal field (best effort)."""
    import msgspec.inspect as mi  # only needed when reporting an error

    node: Any = mi.type_info(cls)
    for seg in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        options = node.types if isinstance(node, mi.UnionType) else (node,)
        if seg.startswith("["):
            node = next((o.item_type for o in options if isinstance(o, mi.ListType)), None)
            node = node or next((o.value_type for o in options if isinstance(o, mi.DictType)), None)
        else:
            structs = [o for o in options if isinstance(o, mi.StructType)]
            node = next((f.type for s in structs for f in s.fields if f.encode_name == seg), None)
        if node is None:
            return []
    options = node.types if isinstance(node, mi.UnionType) else (node,)
    values = [v for o in options if isinstance(o, mi.LiteralType) for v in o.values]
    return [str(v) for v in values]


def _bad_text(value: str) -> bool:
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def lone_surrogate(doc: Any) -> str | None:
    """The path (``params.tag``, ``a[2].b``) of the first string, key or value, holding a lone UTF-16 surrogate, or
    None. JSON lets ``"\\ud800"`` through and Python decodes it, but it is no character: nothing can encode it, so
    every document carrying it -- the job's own terminal status first -- would fail to be written. Iterative: a
    job nested too deeply for recursion is still walked."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _bad_text(value):
                return path or "(the job)"
        elif isinstance(value, dict):
            items = list(value.items())
            for key, item in reversed(items):
                name = key if isinstance(key, str) else str(key)
                here = f"{path}.{name}" if path else name
                if isinstance(key, str) and _bad_text(key):
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((here, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def without_surrogates(doc: Any) -> Any:
    """A copy of ``doc`` whose strings have each lone surrogate written out as ``\\udXXX`` text: what can still be
    reported of a job that holds them."""
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8", "backslashreplace").decode("utf-8") if _bad_text(value) else value
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    try:
        return clean(doc)
    except RecursionError:  # too deep to copy: keep what identifies the job
        keep = ("job_id", "task_id") if isinstance(doc, dict) else ()
        return {k: clean(doc[k]) for k in keep if isinstance(doc.get(k), str)}
