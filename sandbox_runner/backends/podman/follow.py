"""Following a running container: its attach stream into the job's files, then its exit code.

Split from :mod:`.podman` (the run's choreography); see there for why inspect, not ``wait``, gives the exit code
and why a removed container's code comes from its ``died`` event.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import IO, Any

import structlog

from sandbox_runner.backends.podman.api import APIError, PodmanAPI
from sandbox_runner.errors import BackendError

log = structlog.get_logger("sandbox_runner.podman")


def died_exit_code(api: PodmanAPI, cid: str) -> int | None:
    """The exit code podman recorded in the container's ``died`` event: still there after auto-removal."""
    filters = json.dumps({"container": [cid], "event": ["died"]})
    resp = api.open("GET", "/events", params={"stream": False, "filters": filters}, what="events")
    try:
        for line in resp.read().splitlines():
            attrs = (json.loads(line).get("Actor") or {}).get("Attributes") or {}
            if "containerExitCode" in attrs:
                return int(attrs["containerExitCode"])
    finally:
        resp.close()
    return None


class Follower(threading.Thread):
    """Copies the attach stream into the output files, then asks for the exit code (or the error)."""

    def __init__(self, api: PodmanAPI, cid: str, stream: Any, out: IO[bytes], err: IO[bytes]) -> None:
        super().__init__(name=f"podman-follow-{cid[:12]}", daemon=True)
        self.api, self.cid, self.stream = api, cid, stream
        self.files = {1: out, 2: err, 3: err}  # 3 = podman's own error stream
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def _copy(self) -> bool:
        read = self.stream.read
        try:
            while len(header := read(8)) == 8:
                kind, size = struct.unpack(">BxxxL", header)
                target = self.files.get(kind, self.files[2])
                target.write(read(size))
                target.flush()  # visible in the job dir while the job runs
            return True
        except (OSError, ValueError) as exc:  # connection broke, or a file closed under us
            log.warning("podman-stream-broken", container=self.cid, error=str(exc))
            return False
        finally:
            self.stream.close()

    def _exited_code(self) -> int | None:
        """The exit code by inspect, once conmon has recorded it (the stream may end a few ms earlier).

        Why not ``wait`` right away: podman 4.3's wait answers only after conmon's exit-command cleanup has run,
        ~60-190 ms after the job ended (measured, even with ``condition=stopped``), while inspect reports the
        ``stopped`` state with its exit code ~10 ms after the stream ends. Bounded: ~75 ms, then ``wait``.
        """
        for delay in (0.0, 0.005, 0.01, 0.02, 0.04):
            time.sleep(delay)
            try:
                state = self.api.call("GET", f"/containers/{self.cid}/json", what="inspect").get("State") or {}
            except APIError as exc:
                if exc.gone:  # auto-removed already: its died event still knows the exit code
                    return self._died_event_code()
                raise
            if state.get("Status") in ("stopped", "exited"):
                return int(state["ExitCode"])
        return None

    def _died_event_code(self) -> int:
        code = died_exit_code(self.api, self.cid)
        if code is None:
            raise BackendError(f"container {self.cid[:12]} was removed before its exit code could be read")
        return code

    def run(self) -> None:
        try:
            clean = self._copy()
            # after a clean end the process is gone; a broken stream may mean it still runs: let podman wait
            code = self._exited_code() if clean else None
            if code is None:  # still running after its stream broke (or not yet marked stopped): wait for it
                params = {"interval": "10ms" if clean else "250ms"}
                code = int(self.api.call("POST", f"/containers/{self.cid}/wait", params=params, timeout=None))
            self.exit_code = code
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            self.done.set()
