"""Facts about this node for ``job_info.facts`` (HySDS gathers them with ``facter``; we read them locally).

Read once per process and never from the network: HySDS asks an external resolver for the public address,
which a worker on a closed network must not wait on. ``hysds_public_ip`` is the address of the interface the
default route leaves by (a UDP socket "connect" sends no packet), else empty, as HySDS falls back to.
"""

from __future__ import annotations

import functools
import os
import platform
import socket


def _primary_address() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))  # routing lookup only: UDP connect sends nothing
            return str(sock.getsockname()[0])
    except OSError:
        return ""


@functools.cache
def host_facts() -> dict[str, object]:
    """A small dict in facter's names (the ones HySDS tracks that need no facter), plus HySDS's two derived
    facts ``hysds_execute_node`` and ``hysds_public_ip``. Callers copy it; it is shared."""
    fqdn = socket.getfqdn()
    hostname = socket.gethostname().split(".")[0]
    address = _primary_address()
    facts: dict[str, object] = {
        "architecture": platform.machine(),
        "hardwaremodel": platform.machine(),
        "fqdn": fqdn,
        "hostname": hostname,
        "domain": fqdn.partition(".")[2],
        "operatingsystem": platform.system(),
        "operatingsystemrelease": platform.release(),
        "processorcount": os.cpu_count() or 0,
        "hysds_execute_node": fqdn,
        "hysds_public_ip": address,
    }
    if address:
        facts["ipaddress"] = address
    return facts
