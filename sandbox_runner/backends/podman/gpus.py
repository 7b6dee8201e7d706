"""HySDS's ``runtime_options.gpus`` (docker's ``--gpus``) -> podman CDI devices.

Podman 4 has no ``--gpus``; it exposes GPUs as CDI devices named in the create body's ``devices`` (what podman 5's
``--gpus X`` also does: ``nvidia.com/gpu=X``). Docker's values map as follows; anything else (``capabilities=``,
``driver=``, ``count=`` forms) is refused with the option named, never dropped:

===========================  =============================================
``gpus``                     ``devices``
===========================  =============================================
``"all"``                    ``nvidia.com/gpu=all``
``2`` / ``"2"`` (a count)    ``nvidia.com/gpu=0``, ``nvidia.com/gpu=1`` (docker takes the first N)
``"device=0,2"``             ``nvidia.com/gpu=0``, ``nvidia.com/gpu=2``
``"device=GPU-3a2c..."``     ``nvidia.com/gpu=GPU-3a2c...`` (the NVIDIA CDI spec names GPUs by UUID too)
===========================  =============================================

Whether those devices exist is only known when podman starts the container ("unresolvable CDI devices"):
:func:`explain_cdi_failure` turns that engine error into one naming the option and the fix. The
``HYSDS_GPU_AVAILABLE`` gate (no GPUs on this node: the option is dropped, as HySDS drops it) is applied earlier,
in :mod:`sandbox_runner.job.container`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox_runner.errors import BackendError

CDI_KIND = "nvidia.com/gpu"
#: where podman looks for CDI specs (containers.conf ``cdi_spec_dirs`` default)
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def gpu_devices(opt: str, value: Any) -> list[str]:
    """The CDI device names for a ``gpus`` value; BackendError naming ``opt`` for what cannot be mapped."""
    if isinstance(value, bool):
        raise BackendError(f"runtime option {opt!r}: expected \"all\", a count or \"device=...\", got {value!r}")
    text = str(value).strip().strip("'\"").strip()
    if text.lower() == "all":
        return [f"{CDI_KIND}=all"]
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise BackendError(f"runtime option {opt!r}: a GPU count must be at least 1, got {value!r}")
        return [f"{CDI_KIND}={i}" for i in range(count)]
    if text.startswith("device="):
        names = [n.strip() for n in text.removeprefix("device=").split(",") if n.strip()]
        if names and all(_NAME.match(n) for n in names):
            return [f"{CDI_KIND}={n}" for n in names]
    raise BackendError(
        f"runtime option {opt!r}: {value!r} cannot be honoured by the podman backend, which maps only \"all\", a "
        "count and \"device=<index or UUID>,...\" onto CDI devices (capabilities/driver selections have no "
        "podman equivalent)")


def add_gpus(opt: str, value: Any, body: dict[str, Any]) -> None:
    """The ``gpus`` handler of :mod:`.podman_options`: CDI names in ``devices``, remembered for error messages."""
    names = gpu_devices(opt, value)
    body.setdefault("devices", []).extend({"path": n} for n in names)
    body.setdefault("annotations", {})["sandbox_runner.gpus"] = f"{opt}={value} -> {', '.join(names)}"


def explain_cdi_failure(message: str, body: Mapping[str, Any]) -> str | None:
    """The job's error when podman could not set up the GPUs its ``gpus`` option asked for, else None."""
    asked = (body.get("annotations") or {}).get("sandbox_runner.gpus")
    if asked is None or "CDI" not in message:
        return None
    return (f"runtime option gpus cannot be honoured on this node ({asked}): {message}. HYSDS_GPU_AVAILABLE says "
            f"the node has GPUs, but podman finds no CDI spec for them in {' or '.join(CDI_SPEC_DIRS)}: generate "
            "one (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml), or set HYSDS_GPU_AVAILABLE=0 to run "
            "such jobs without GPUs as HySDS does")


def cdi_spec_missing(body: Mapping[str, Any], spec_dirs: Iterable[str] = CDI_SPEC_DIRS) -> str | None:
    """For ``--dry-run``: a warning when the body asks for GPUs and no CDI spec on this node declares
    ``nvidia.com/gpu`` (podman would then refuse to start the job), else None. A local look, not podman's word."""
    if (body.get("annotations") or {}).get("sandbox_runner.gpus") is None:
        return None
    dirs = list(spec_dirs)
    for directory in dirs:
        try:
            files = sorted(p for p in Path(directory).iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        except OSError:
            continue
        for path in files:
            try:
                if CDI_KIND in path.read_text(errors="replace"):
                    return None
            except OSError:
                continue
    return (f"no CDI spec in {' or '.join(dirs)} declares {CDI_KIND}: podman will refuse to start this job "
            "(runtime option gpus)")
