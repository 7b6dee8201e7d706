"""Which network a job's container gets: the network policy (``policies/network.toml``) and the node's default.

HySDS containers get the engine's network, and download jobs (OPERA's ``slc_download``, lightweight-jobs'
``lw-tosca-wget``) fetch inside the container with no network settings in their job-spec. So a job gets the
node's network by default: the engine's default (``bridge``) where it works, else ``host``. Rootless podman's
default (slirp4netns) needs a usable ``/dev/net/tun``, which rootless workers here lack, so a rootless worker gets
``host``: the worker's own user's network, no more (it also reaches services bound to loopback). The decision is
made once per process from two cheap facts (rootless? tun usable?), never by probing the engine per job.

The policy then denies or allows networking per job type and worker-wide; a denied job gets ``none`` even when its
``runtime_options`` ask for a network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sandbox_runner.errors import ConfigError
from sandbox_runner.policy.files import job_type_patterns, matching_pattern, read_policy

TUN = "/dev/net/tun"


@dataclass(frozen=True)
class NetworkPolicy:
    #: worker-wide: True gives jobs a network unless their type is denied; False gives none unless allowed.
    enabled: bool = True
    #: job types (shell globs) that never get a network; wins over ``allow``.
    deny: tuple[str, ...] = ()
    #: job types (shell globs) that get a network even when ``enabled`` is false.
    allow: tuple[str, ...] = ()
    source: str = "built-in"


@lru_cache(maxsize=8)
def load_network_policy(path: Path | None) -> NetworkPolicy:
    """The policy at ``path``, or the shipped ``policies/network.toml``; ConfigError names the file and field."""
    source, doc = read_policy(path, "network.toml", "network policy")
    unknown = sorted(set(doc) - {"enabled", "deny", "allow"})
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}: expected enabled, deny, allow", source=source)
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"enabled must be true or false, got {enabled!r}", source=source)
    return NetworkPolicy(enabled, job_type_patterns(doc.get("deny", []), "deny", source),
                         job_type_patterns(doc.get("allow", []), "allow", source), source)


def node_network(rootless: bool, tun_usable: bool) -> tuple[str, str]:
    """``(network, why)`` a job gets on this node when nothing else decides."""
    if rootless:
        return "host", "rootless: the engine's default (slirp4netns) does not work here, so the worker user's network"
    if not tun_usable:
        return "host", f"{TUN} is not usable, so the engine's default network cannot work"
    return "bridge", "the engine's default network"


@lru_cache(maxsize=1)
def this_node() -> tuple[bool, bool]:
    """(rootless, tun usable) for this process: rootless unless the worker runs as root."""
    return os.geteuid() != 0, os.access(TUN, os.R_OK | os.W_OK)


def choose_network(job_type: str, asked: str | None, policy: NetworkPolicy,
                   node: tuple[bool, bool] | None = None) -> tuple[str, str]:
    """``(network, why)`` for a job of ``job_type`` whose ``runtime_options`` ask for ``asked`` (None: nothing)."""
    denied = matching_pattern(job_type, policy.deny)
    if denied is not None:
        return "none", f"job type {job_type!r} matches deny {denied!r} in {policy.source}"
    allowed = matching_pattern(job_type, policy.allow)
    if not policy.enabled and allowed is None:
        return "none", f"networking is off worker-wide (enabled = false in {policy.source})"
    if asked is not None:
        return asked, "the job's runtime_options"
    return node_network(*(node if node is not None else this_node()))
