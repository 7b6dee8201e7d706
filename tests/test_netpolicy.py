"""The network choice (sandbox_runner.policy.network): the node's default, the policy's deny/allow, and its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_runner.errors import ConfigError
from sandbox_runner.policy.network import NetworkPolicy, choose_network, load_network_policy, node_network

ROOTLESS, ROOTFUL_TUN, ROOTFUL_NO_TUN = (True, True), (False, True), (False, False)


@pytest.mark.parametrize(("node", "network"), [(ROOTLESS, "host"), ((True, False), "host"),
                                               (ROOTFUL_NO_TUN, "host"), (ROOTFUL_TUN, "bridge")])
def test_node_default(node: tuple[bool, bool], network: str) -> None:
    assert node_network(*node)[0] == network
    assert choose_network("job-x", None, NetworkPolicy(), node)[0] == network


def test_the_reason_names_the_cause() -> None:
    assert "rootless" in node_network(*ROOTLESS)[1]
    assert "/dev/net/tun" in node_network(*ROOTFUL_NO_TUN)[1]


def test_the_job_asking_is_honoured_when_allowed() -> None:
    assert choose_network("job-x", "none", NetworkPolicy(), ROOTLESS) == ("none", "the job's runtime_options")


def test_deny_wins_over_the_job_and_allow() -> None:
    policy = NetworkPolicy(deny=("job-untrusted-*",), allow=("job-untrusted-*",), source="p.toml")
    net, why = choose_network("job-untrusted-1:v2", "host", policy, ROOTLESS)
    assert net == "none" and "'job-untrusted-*'" in why and "p.toml" in why
    assert choose_network("job-other", None, policy, ROOTLESS)[0] == "host"


def test_worker_wide_off_unless_allowed() -> None:
    policy = NetworkPolicy(enabled=False, allow=("job-lw-tosca-wget*",))
    net, why = choose_network("job-x", "host", policy, ROOTLESS)
    assert net == "none" and "worker-wide" in why
    assert choose_network("job-lw-tosca-wget:develop", None, policy, ROOTLESS)[0] == "host"


def test_shipped_policy_allows_networking() -> None:
    policy = load_network_policy(None)
    assert policy.enabled and policy.deny == () and policy.allow == ()
    assert policy.source.endswith("policies/network.toml")


@pytest.mark.parametrize(("text", "message"), [
    ("enabled = 'yes'", "enabled must be true or false"),
    ("deny = 'job-x'", "deny must be a list"),
    ("allow = [1]", "allow must be a list"),
    ("denny = []", "unknown field(s) denny"),
    ("deny = [", "invalid TOML"),
])
def test_bad_policy_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "network.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_network_policy(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read network policy"):
        load_network_policy(tmp_path / "absent.toml")
