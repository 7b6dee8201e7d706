"""The podman backend: rootless (or rootful) Podman through its REST API over the unix socket.

``backend`` runs a job (create, start, follow, wait, remove); ``spec`` and ``options`` turn a
:class:`~sandbox_runner.backends.base.ContainerSpec` into podman's create body; ``api`` is the HTTP client,
``service`` starts the API service when none listens, ``follow`` streams logs and events, ``images`` loads the
job's image (local, tarball under a lock, or pull).
"""

from sandbox_runner.backends.podman.backend import PodmanBackend

__all__ = ["PodmanBackend"]
