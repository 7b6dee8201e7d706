"""The jobs tree over HTTP, read-only, as HySDS publishes it: ``job_url`` = ``http://<host>:<port>/jobs/...``.

HySDS's workers serve their root work dir over WebDAV (``WEBDAV_PORT``, 8085) and put
``http://<public_ip>:<port>/jobs/YYYY/MM/DD/HH/MI/<job_id>`` in ``job_info.job_url``; mozart's purge and figaro's
links use that URL. A sandbox_runner worker started with ``job_url_port`` set serves ``<work root>/jobs`` the same
way from a thread of its own (stdlib ``ThreadingHTTPServer``), started at boot and stopped at shutdown. Stand-alone
runs serve nothing, so their ``job_url`` stays ``file://``.

Read-only: GET and HEAD only (every other method is 405), directory listings allowed, and nothing outside the
jobs tree: a path with a ``..`` segment is refused, and a path that resolves (through a symlink a job left in its
dir) outside ``<work root>/jobs`` is 404 -- a job must not be able to publish the worker user's ``~/.netrc``.

Several workers on one node usually share a work root (one worker per queue, as HySDS runs them) and so one port:
the socket is bound with ``SO_REUSEPORT``, every worker serves the same tree, and the URL keeps working while any
of them runs. Workers with different work roots need different ports.
"""

from __future__ import annotations

import errno
import os
import threading
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog

from sandbox_runner.errors import ConfigError
from sandbox_runner.job.hostfacts import host_facts
from sandbox_runner.settings import Settings
from sandbox_runner.workroot import WorkRoot

log = structlog.get_logger("sandbox_runner.worker")

#: methods a WebDAV or HTTP client might try that would change the tree
_REFUSED = ("PUT", "POST", "DELETE", "PATCH", "MKCOL", "COPY", "MOVE", "PROPPATCH", "LOCK", "UNLOCK")


class _ReadOnlyJobs(SimpleHTTPRequestHandler):
    """GET/HEAD of files and listings under ``<root>/jobs``; ``root`` and ``jobs_real`` are set per server."""

    root: str = ""
    jobs_real: str = ""
    server_version = "sandbox-runner-jobs"
    _target: str = ""

    def _resolve(self) -> str | None:
        """The real path the request names, or None when it is not a path inside the jobs tree."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path, errors="strict")
        segments = [s for s in path.split("/") if s not in ("", ".")]
        if not segments or segments[0] != "jobs" or ".." in segments or any("\x00" in s for s in segments):
            return None
        real = os.path.realpath(os.path.join(self.root, *segments))
        if real != self.jobs_real and not real.startswith(self.jobs_real + os.sep):
            return None  # a symlink in a job dir that points out of the tree
        return real

    def send_head(self) -> Any:
        try:
            target = self._resolve()
        except UnicodeDecodeError:
            target = None
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not a path in this worker's jobs tree")
            return None
        self._target = target
        return super().send_head()

    def translate_path(self, path: str) -> str:
        return self._target  # send_head resolved and checked it

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED, "the jobs tree is read-only")
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # refusals only: a browsing session must not fill the worker's log (a plain `celery -A` worker does not
        # configure structlog, so even debug lines print there)
        if isinstance(code, HTTPStatus):
            code = code.value
        if isinstance(code, int) and code >= 400:
            log.debug("job-http-refused", client=self.client_address[0], request=self.requestline, status=code)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the stdlib writes these to stderr; every refusal it describes also goes through log_request


for _method in _REFUSED:
    setattr(_ReadOnlyJobs, f"do_{_method}", _ReadOnlyJobs._refuse)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    allow_reuse_port = True  # workers sharing a work root share the port (see the module docstring)


class JobHTTPServer:
    """The running server: ``base_url`` is what job URLs start with; :meth:`stop` closes it."""

    def __init__(self, root: Path, bind: str, port: int, host: str | None) -> None:
        jobs = WorkRoot(root).jobs
        try:
            jobs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {jobs} to serve it: {exc.strerror}", field="job_url_port") from None
        handler = type("JobsHandler", (_ReadOnlyJobs,), {"root": str(root),
                                                         "jobs_real": os.path.realpath(jobs)})
        try:
            self._server = _Server((bind, port), handler)
        except OSError as exc:
            hint = " (another program holds it: choose another SANDBOX_RUNNER_JOB_URL_PORT)" \
                if exc.errno == errno.EADDRINUSE else ""
            raise ConfigError(f"cannot serve the jobs tree on {bind}:{port}: {exc.strerror}{hint}",
                              field="job_url_port") from None
        self.port = int(self._server.server_address[1])
        self.root = root
        advertised = host or str(host_facts().get("hysds_public_ip") or "") or str(host_facts()["fqdn"])
        if ":" in advertised and not advertised.startswith("["):
            advertised = f"[{advertised}]"  # an IPv6 literal
        self.base_url = f"http://{advertised}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="job-http", daemon=True)
        self._thread.start()
        log.info("job-http-serving", root=str(jobs), bind=bind, port=self.port, base_url=self.base_url)

    def stop(self) -> None:
        """Stop serving and close the socket; a second call does nothing."""
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_job_server(settings: Settings) -> JobHTTPServer | None:
    """Serve ``<work root>/jobs`` when ``job_url_port`` is set (None otherwise: job URLs stay ``file://``)."""
    if settings.job_url_port is None:
        return None
    return JobHTTPServer(settings.node_root, settings.job_url_bind, settings.job_url_port, settings.job_url_host)
