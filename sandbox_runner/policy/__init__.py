"""Operator policies read from ``policies/*.toml``: which host paths a job may mount and which network it gets.

The filesystem policy (disk threshold, scrub ladder) is :mod:`sandbox_runner.fspolicy`, with the code it drives.
"""
