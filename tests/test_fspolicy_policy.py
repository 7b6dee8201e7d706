"""The filesystem policy file: the shipped default, overrides by path, and errors that name field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_runner.errors import ConfigError
from sandbox_runner.fspolicy.policy import CacheCap, FsPolicy, load_fs_policy, parse_duration, policy_from_dict


def test_shipped_default_loads_with_the_documented_values() -> None:
    policy = load_fs_policy(None)
    assert policy.space_percent == 10.0
    assert policy.failed_retention > policy.succeeded_retention  # failed jobs are kept longer, for triage
    assert policy.order == ("succeeded", "failed", "quarantine", "cache")
    assert policy.cache_cap == CacheCap(percent=25.0)
    assert policy.scrub_interval == 600
    assert policy.source.endswith("filesystem.toml")


def test_an_override_file_replaces_only_what_it_sets(tmp_path: Path) -> None:
    path = tmp_path / "fs.toml"
    path.write_text('[free]\nspace_percent = 20\n[retention]\nfailed = "12h"\n[cache]\nmax_size = "1.5GB"\n'
                    '[scrub]\norder = ["succeeded", "quarantine"]\n')
    policy = load_fs_policy(path)
    assert policy.space_percent == 20 and policy.failed_retention == 12 * 3600
    assert policy.cache_cap.bytes_for(10**12) == 3 * 2**29
    assert policy.order == ("succeeded", "quarantine")
    assert policy.crashed_grace == FsPolicy().crashed_grace
    assert policy.source == str(path)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("3d", 259200), ("1w", 604800), ("2 H", 7200), (0, 0),
])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, "f", "src") == seconds


BAD = {
    "unknown section": ('[disk]\nx = 1\n', "disk: unknown section"),
    "unknown key": ('[free]\nspace = 10\n', "free: unknown key(s) ['space']"),
    "percent too big": ('[free]\nspace_percent = 100\n', "free.space_percent: 100 is not a percentage"),
    "percent a string": ('[free]\ninodes_percent = "5"\n', "free.inodes_percent: '5' is not a percentage"),
    "negative inodes": ('[free]\njob_inodes = -1\n', "free.job_inodes: -1 is not a non-negative integer"),
    "bad duration": ('[retention]\nfailed = "3 days"\n', "retention.failed: '3 days' is not a duration"),
    "negative duration": ('[retention]\nquarantine_ttl = -5\n', "retention.quarantine_ttl: -5 is not a non-neg"),
    "short grace": ('[retention]\ncrashed_grace = "10s"\n', "retention.crashed_grace: must be at least 60s"),
    "zero interval": ('[scrub]\ninterval = "0s"\n', "scrub.interval: must be longer than 0s"),
    "bad size": ('[cache]\nmax_size = "lots"\n', "cache.max_size: invalid cache.max_size 'lots'"),
    "bad percent": ('[cache]\nmax_size = "x%"\n', "cache.max_size: 'x%' is not a percentage"),
    "unknown rung": ('[scrub]\norder = ["succeeded", "logs"]\n', "scrub.order: unknown rung(s) ['logs']"),
    "twice": ('[scrub]\norder = ["cache", "cache"]\n', "scrub.order: a rung appears twice"),
    "purge first": ('[scrub]\norder = ["quarantine", "failed"]\n', 'scrub.order: "quarantine" must come after'),
    "no purge": ('[scrub]\norder = ["succeeded"]\n', 'scrub.order: "quarantine" must come after'),
    "not a table": ('free = 3\n', "free: must be a table"),
    "not toml": ('[free\n', "invalid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_policy_names_the_field_and_the_problem(case: str, tmp_path: Path) -> None:
    text, needle = BAD[case]
    path = tmp_path / "fs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_fs_policy(path)
    assert str(info.value).startswith(f"{path}: ")
    assert needle in str(info.value), str(info.value)


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read filesystem policy"):
        load_fs_policy(tmp_path / "nope.toml")


def test_cache_can_be_left_out_of_the_ladder() -> None:
    policy = policy_from_dict({"scrub": {"order": ["succeeded", "failed", "quarantine"]}})
    assert "cache" not in policy.order
