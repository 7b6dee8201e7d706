"""The ``sandbox-runner`` command: ``main`` parses and dispatches; one module per group of subcommands."""

from sandbox_runner.cli.main import main

__all__ = ["main"]
