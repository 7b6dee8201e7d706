"""``run-job --dry-run``: the container spec and, for podman, the very create request the backend would send.

The spec alone hid what the backend does with it (``runtime_options.gpus`` was shown and then dropped, ``network:
bridge`` shown and then refused by rootless podman). So the document also carries the backend's own request,
built by the same code the backend runs (:meth:`PodmanBackend.create_body`), and an option the backend cannot
honour fails the dry run with the same error the job would fail with. Nothing is contacted or created.
"""

from __future__ import annotations

from typing import Any

from sandbox_runner.backends.base import ContainerSpec
from sandbox_runner.settings import Settings


def dry_run_document(settings: Settings, spec: ContainerSpec) -> dict[str, Any]:
    from sandbox_runner.backends.podman.backend import PodmanBackend
    from sandbox_runner.backends.podman.gpus import cdi_spec_missing
    from sandbox_runner.job.runner import default_backend_for

    doc = spec.as_dict()
    backend = default_backend_for(settings, spec)
    doc["backend"] = backend.name
    if isinstance(backend, PodmanBackend):
        body, notes = backend.create_body(spec)  # BackendError: the job would fail the same way
        doc["podman_create"] = body
        doc["ignored_options"] = notes
        warning = cdi_spec_missing(body)
        if warning is not None:
            doc["warnings"] = [warning]
        if backend.rootful:  # the one part decided at create time: it depends on the running service
            doc["rootful_rlimits"] = "r_limits not set by the job get the rootful service's hard limits at create"
    return doc
