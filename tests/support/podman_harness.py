"""Test-side driver: run PodmanBackend (or ensure_image) as the unprivileged worker user, answer in JSON.

pytest runs as root, but the worker -- and so the backend -- runs as ``srunner`` against srunner's own rootless
service. tests/test_podman_backend.py starts this script with ``runuser -u srunner -- .venv/bin/python``, writes
one JSON request on stdin and reads one JSON answer from stdout:

``{"op": "run", "socket": URL, "spec": {ContainerSpec fields}, "stdout": PATH, "stderr": PATH,
"cancel_after": SECONDS|null, "probe_label": "k=v"|null, "image_cache": PATH|null}``
-> ``{"ok": true, "result": {RunResult}, "started": [pid, cid], "running": [containers with probe_label while the
job ran], "after": [the same, all states, after run()], "logs": [structlog events], "seconds": float}``

``{"op": "ensure_image", "socket": URL, "name": ..., "url": ..., "cache_dir": ..., "pull": bool}``
-> ``{"ok": true, "image_id": ..., "logs": [...]}``

Errors: ``{"ok": false, "type": "ImageError", "kind": "image", "message": "..."}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.backends.base import ContainerSpec, JobIO, Mount
from sandbox_runner.backends.podman.api import PodmanAPI
from sandbox_runner.backends.podman.backend import PodmanBackend
from sandbox_runner.backends.podman.images import ensure_image
from sandbox_runner.errors import SandboxRunnerError


def _listing(api: PodmanAPI, label: str) -> list[dict[str, Any]]:
    docs = api.call("GET", "/containers/json", params={"all": True, "filters": json.dumps({"label": [label]})})
    return [{"id": d["Id"], "names": d.get("Names"), "labels": d.get("Labels"), "state": d.get("State")} for d in docs]


def _run(req: dict[str, Any]) -> dict[str, Any]:
    fields = dict(req["spec"])
    fields["argv"] = tuple(fields["argv"])
    fields["mounts"] = tuple(Mount(**m) for m in fields.get("mounts", ()))
    spec = ContainerSpec(**fields)
    cache = Path(req["image_cache"]) if req.get("image_cache") else None
    backend = PodmanBackend(req["socket"], worker="harness", image_cache=cache)
    answer: dict[str, Any] = {"running": [], "started": None}
    probe = req.get("probe_label")

    def on_start(pid: int, cid: str | None) -> None:
        answer["started"] = [pid, cid]
        if probe:
            answer["running"] = _listing(backend.api, probe)
        if req.get("cancel_after") is not None:
            threading.Timer(float(req["cancel_after"]), io.cancel.set).start()

    io = JobIO(stdout=Path(req["stdout"]), stderr=Path(req["stderr"]), on_start=on_start)
    t0 = time.perf_counter()
    result = backend.run(spec, io)
    answer["seconds"] = time.perf_counter() - t0
    answer["result"] = dataclasses.asdict(result)
    answer["service_pid"] = backend.service_pid
    if probe:
        # podman removes the container (remove: true) once conmon's exit command runs: ~0.1-0.2 s after exit
        deadline = time.monotonic() + 10
        while (after := _listing(backend.api, probe)) and time.monotonic() < deadline:
            time.sleep(0.05)
        answer["after"] = after
    return answer


def _ensure_image(req: dict[str, Any]) -> dict[str, Any]:
    api = PodmanAPI(req["socket"])
    image_id = ensure_image(api, req["name"], req.get("url"), Path(req["cache_dir"]), pull=req.get("pull", True))
    return {"image_id": image_id}


def main() -> int:
    req = json.load(sys.stdin)
    with structlog.testing.capture_logs() as logs:
        try:
            answer = {"ok": True, **(_run(req) if req["op"] == "run" else _ensure_image(req))}
        except SandboxRunnerError as exc:
            answer = {"ok": False, "type": type(exc).__name__, "kind": exc.kind, "message": str(exc)}
    answer["logs"] = logs
    json.dump(answer, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
