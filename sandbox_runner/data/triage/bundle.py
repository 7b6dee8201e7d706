"""Copy a job's files into a triage bundle without its secrets, and without filling the disk.

Three kinds of secret can sit in a failed job's files: credentials in URLs (``_context.json``, logs), the
command's environment (``_docker_params.json`` and ``_run.sh`` carry the values the job was given, which a work
config may fill from ``$AWS_SECRET_ACCESS_KEY``), and those same values printed by the job into its logs. URLs
are redacted by pattern, ``env`` maps in JSON by structure, and the known values wherever they appear.

A runaway job can write gigabytes of stdout (opera-sds-pcm#414: triage itself filling the disk), so a file over
:data:`MAX_FILE` keeps its head and tail, which is where the reason for a failure usually is.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox_runner.redact import REDACTED, redact_obj, redact_text

MAX_FILE = 64 << 20
_BLOCK = 1 << 20
_ENV_KEYS = frozenset({"env", "environment", "Env"})
#: values shorter than this are too common ("1", "true", "/tmp") to hunt for in free text
MIN_SECRET_LEN = 6


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LEN}, key=len,
                        reverse=True)
        self._values = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def text(self, text: str) -> str:
        text = redact_text(text)
        return self._values.sub(REDACTED, text) if self._values is not None else text

    def obj(self, obj: Any) -> Any:
        obj = _env_values_out(obj)
        obj = redact_obj(obj)
        return json.loads(self.text(json.dumps(obj))) if self._values is not None else obj

    def copy_file(self, src: Path, dst: Path) -> None:
        size = src.stat().st_size
        if src.suffix == ".json" and size <= MAX_FILE:
            try:
                doc = json.loads(src.read_bytes())
            except ValueError:
                pass
            else:
                dst.write_text(json.dumps(self.obj(doc), indent=2, sort_keys=True) + "\n")
                return
        with src.open("rb") as fin, dst.open("wb") as fout:
            if size <= MAX_FILE:
                self._stream(fin, fout, size)
                return
            half = MAX_FILE // 2
            self._stream(fin, fout, half)
            omitted = size - 2 * half
            fout.write(f"\n[... {omitted} bytes omitted by sandbox-runner triage ...]\n".encode())
            fin.seek(size - half)
            self._stream(fin, fout, half)

    def _stream(self, fin: Any, fout: Any, limit: int) -> None:
        carry, left = b"", limit
        while left > 0:
            block = fin.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if len(data) < 2 * _BLOCK else len(data)
            # redact whole lines: a URL split across two reads must not slip through
            head, carry = (data[:cut], data[cut:]) if cut else (b"", data)
            fout.write(self._bytes(head))
        fout.write(self._bytes(carry))

    def _bytes(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def _env_values_out(obj: Any, under_env: bool = False) -> Any:
    """JSON with every value of an ``env`` mapping (dict, [{key, value}], ["K=V"]) replaced, keys kept."""
    if isinstance(obj, dict):
        if under_env:
            if set(obj) >= {"key", "value"}:
                return {**obj, "value": REDACTED}
            return {k: REDACTED for k in obj}
        return {k: _env_values_out(v, k in _ENV_KEYS) for k, v in obj.items()}
    if isinstance(obj, list):
        if under_env:
            return [f"{x.split('=', 1)[0]}={REDACTED}" if isinstance(x, str) and "=" in x
                    else _env_values_out(x, True) for x in obj]
        return [_env_values_out(x) for x in obj]
    return obj


def copy_tree(redactor: Redactor, src: Path, dst: Path, skipped: list[str]) -> None:
    """Copy ``src`` (file or dir) to ``dst`` through the redactor; symlinks are listed in ``skipped``, not copied."""
    if src.is_symlink():
        skipped.append(str(src))
        return
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            copy_tree(redactor, child, dst / child.name, skipped)
        return
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            redactor.copy_file(src, dst)
        except OSError as exc:  # one unreadable file must not cost the whole bundle
            skipped.append(f"{src}: {exc.strerror or exc}")
            dst.unlink(missing_ok=True)


def within(root: Path, path: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except OSError:
        return False
