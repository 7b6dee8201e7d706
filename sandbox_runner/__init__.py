"""sandbox_runner: a rootless, HySDS-compatible job worker."""

__version__ = "0.1.0"
