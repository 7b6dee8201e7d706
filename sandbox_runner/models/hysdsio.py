"""``hysds-io.json.<name>``: how a job type's params are filled when it is submitted (HYSDS-WORKER.md 3.2).

The worker never reads hysds-io files; we validate them so ``sandbox-runner validate`` catches the mistakes
hysds_commons' schema would (a ``from: value`` param without ``value``, an enum without ``enumerables``...).
Value types are left loose (``value``/``default`` may be any JSON), as real files use numbers and objects.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from sandbox_runner.errors import JobFormatError
from sandbox_runner.models._decode import Document, Model, field_error, load_as

__all__ = ["HysdsIO", "IOParam", "load_hysds_io"]

ParamType = Literal[
    "text",
    "number",
    "datetime",
    "date",
    "boolean",
    "enum",
    "email",
    "textarea",
    "region",
    "container_version",
    "jobspec_version",
    "hysdsio_version",
    "object",
]
_VERSION_TYPES = ("container_version", "jobspec_version", "hysdsio_version")
# ``dataset_jpath:`` with nothing after it is valid: HySDS then passes the whole hit (ten real files use it).
_FROM_RE = re.compile(r"value|submitter|passthrough|dataset_jpath:(\S.*)?", re.S)
_LAMBDA_RE = re.compile(r"\s*lambda\b[^:]*:.*\S.*", re.S)


class IOParam(Model, frozen=True, kw_only=True):
    """One param: its ``name`` (as in the job-spec) and where its value comes ``from``."""

    name: str
    from_: str = msgspec.field(name="from")
    value: Any = msgspec.UNSET  # UNSET (absent) differs from null
    type: ParamType | None = None
    default: Any = msgspec.UNSET
    optional: bool | str = False
    placeholder: str | None = None
    enumerables: list[Any] | None = None
    lambda_: str | None = msgspec.field(default=None, name="lambda")
    version_regex: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise field_error("name", "must not be empty")
        if not _FROM_RE.fullmatch(self.from_):
            expected = "value, submitter, passthrough or dataset_jpath:[<path>]"
            raise field_error("from", f"invalid value {self.from_!r} (expected {expected})")
        if self.from_ == "value" and self.value is msgspec.UNSET:
            raise field_error("value", "required when from is 'value'")
        if self.type == "enum" and not self.enumerables:
            raise field_error("enumerables", "required (a non-empty list) when type is 'enum'")
        if self.type in _VERSION_TYPES and not self.version_regex:
            raise field_error("version_regex", f"required when type is {self.type!r}")
        if self.lambda_ is not None and not _LAMBDA_RE.fullmatch(self.lambda_):
            raise field_error("lambda", f"expected 'lambda <args>: <expression>', got {self.lambda_!r}")

    @property
    def source_kind(self) -> str:
        """``value``, ``submitter``, ``passthrough`` or ``dataset_jpath``."""
        return self.from_.split(":", 1)[0]

    @property
    def jpath(self) -> str | None:
        """The path after ``dataset_jpath:`` ("" for the whole hit), or None for other sources."""
        kind, _, path = self.from_.partition(":")
        return path if kind == "dataset_jpath" else None


class HysdsIO(Document, frozen=True, kw_only=True):
    """A job type's submission interface (label, dedup, who may submit, params)."""

    params: list[IOParam]
    label: str | None = None
    component: Literal["tosca", "figaro"] = "tosca"
    submission_type: Literal["iteration", "individual"] = "iteration"
    enable_dedup: bool = True
    allowed_accounts: list[str] = []
    action_type: Literal["on-demand", "trigger", "both"] | None = msgspec.field(
        default=None, name="action-type"
    )

    def param(self, name: str) -> IOParam | None:
        """The param called ``name``, if any."""
        return next((p for p in self.params if p.name == name), None)


def load_hysds_io(data: dict[str, Any] | bytes | str, source: str | None = None) -> HysdsIO:
    """Validate a hysds-io document; raises :class:`JobFormatError` naming the file, field and problem."""
    return load_as(HysdsIO, data, source, JobFormatError)
