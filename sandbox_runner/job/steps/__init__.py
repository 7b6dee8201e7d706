"""The job pipeline's steps (see :mod:`sandbox_runner.job.steps.base` for the protocol)."""
