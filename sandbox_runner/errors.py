"""The one exception tree of sandbox_runner.

Every error the project raises on purpose derives from :class:`SandboxRunnerError`. Foreign errors (podman-py,
redis, httpx, OSError from the kernel) are translated into these at the adapter that meets them, so the runner
only ever has to reason about this tree. ``str(err)`` is always a readable, one-line message meant for a user.
"""

from __future__ import annotations


class SandboxRunnerError(Exception):
    """Root of every error sandbox_runner raises on purpose."""

    #: short machine-friendly category, used in events (``short_error`` is derived from the message).
    kind: str = "error"


# --- input: job JSON, job-spec, hysds-io, worker config, settings, policies -------------------------------------
class InputError(SandboxRunnerError):
    """Something a user handed us is malformed. The message names the field and the problem."""

    kind = "bad-input"

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None) -> None:
        self.field = field
        self.source = source
        prefix = f"{source}: " if source else ""
        where = f"{field}: " if field else ""
        super().__init__(f"{prefix}{where}{message}")


class JobFormatError(InputError):
    """A job JSON, job-spec or hysds-io document does not have the expected shape."""


class ConfigError(InputError):
    """Settings, worker config (HYSDS_WORKER_CFG), datasets config or a policy file is invalid."""


class UnknownStepError(InputError):
    """A pre/post step named in a job-spec is not known to this worker."""


# --- resources: disk, mounts, images ------------------------------------------------------------------------------
class DiskSpaceError(SandboxRunnerError):
    """Not enough free space (or inodes) for the job, even after scrubbing."""

    kind = "disk-space"


class MountPolicyError(SandboxRunnerError):
    """A requested volume mount is outside the allow-list (or names the engine socket)."""

    kind = "mount-policy"


class ImageError(SandboxRunnerError):
    """The job's container image is not present and could not be loaded or pulled."""

    kind = "image"


# --- execution ----------------------------------------------------------------------------------------------------
class BackendError(SandboxRunnerError):
    """The execution backend (podman service, bubblewrap, exec) failed before or around the job's command."""

    kind = "backend"


class StepError(SandboxRunnerError):
    """A pre- or post-processing step failed."""

    kind = "step"


class CommandFailed(SandboxRunnerError):
    """The job's command ran and exited non-zero."""

    kind = "exit-code"

    def __init__(self, exit_code: int, message: str | None = None) -> None:
        self.exit_code = exit_code
        super().__init__(message or f"Got non-zero exit code: {exit_code}")


class JobInterrupted(SandboxRunnerError):
    """The job was stopped from outside: a caught signal, a time limit or a revoke."""

    kind = "interrupted"

    def __init__(self, status: str, message: str, *, signum: int | None = None) -> None:
        self.status = status  # e.g. "job-terminated", "job-revoked", "job-failed"
        self.signum = signum
        super().__init__(message)


class WorkerExecutionError(SandboxRunnerError):
    """A job ended failed and its terminal status is already written. Raised to Celery (as HySDS raises its
    exception of this name) so the task ends ``FAILURE`` with a task-failed event; never caught by the runner."""

    kind = "job-failed"

    def __init__(self, message: str, job_status: dict[str, object] | None = None) -> None:
        self.job_status = job_status  # not in args: Celery rebuilds the exception client-side from args alone
        super().__init__(message)


class EventSinkError(SandboxRunnerError):
    """An event could not be delivered to its sink (Redis down, spool not writable)."""

    kind = "events"


# --- data in and out: localize, publish ---------------------------------------------------------------------------
class TransferError(SandboxRunnerError):
    """A download or upload failed for good (after its retries). The message names the URL, credentials redacted."""

    kind = "transfer"


class IntegrityError(TransferError):
    """A localized file does not match its checksum file. The message names the file."""

    kind = "checksum"


class PublishError(SandboxRunnerError):
    """A dataset could not be recognized or published; nothing of it is left at its location."""

    kind = "publish"


class NoClobberError(PublishError):
    """A dataset already exists at its location and the job neither forces nor retries it."""

    kind = "no-clobber"


class SchedulerError(SandboxRunnerError):
    """A batch scheduler (Slurm's sbatch, squeue) refused or failed; the message carries its own words."""

    kind = "scheduler"
