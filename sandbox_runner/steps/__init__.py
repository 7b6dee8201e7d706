"""The job pipeline's steps (see :mod:`sandbox_runner.steps.base` for the protocol)."""
