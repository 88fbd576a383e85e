"""``krs-kdc policy ...`` and ``zone add|set --policy`` (issue 22, item 1), run in this process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.kdcrun import ZONE, Kdc, new_kdc


@pytest.fixture
def kdc(tmp_path: Path) -> Kdc:
    return new_kdc(tmp_path)


def test_policy_add_takes_the_defaults_and_human_durations(kdc: Kdc) -> None:
    data = kdc.ok("policy", "add", "std", "--dnskey-ttl", "2h", "--ksk-lifetime", "365d")
    assert data["name"] == "std" and data["dry_run"] is False
    assert (data["dnskey_ttl"], data["ksk_lifetime"], data["zsk_lifetime"]) == (
        7200, 365 * 86400, 30 * 86400)  # fmt: skip
    shown = kdc("policy", "show", "std")
    assert shown.code == 0
    for line in ("zsk-lifetime: 30d", "ksk-lifetime: 365d", "dnskey-ttl: 2h",
                 "signatures-validity: 2w", "zones: none"):  # fmt: skip
        assert line in shown.out
    (row,) = kdc.ok("policy", "list")
    assert row["name"] == "std" and row["zones"] == []
    assert "std" in kdc("policy", "list").out


def test_lifetime_unlimited_and_zero_are_the_same(kdc: Kdc) -> None:
    assert kdc.ok("policy", "add", "a", "--zsk-lifetime", "unlimited")["zsk_lifetime"] == 0
    assert kdc.ok("policy", "add", "b", "--zsk-lifetime", "0")["zsk_lifetime"] == 0
    assert "zsk-lifetime: unlimited" in kdc("policy", "show", "a").out


def test_policy_add_refuses_a_lifetime_that_cannot_fit_with_the_numbers(kdc: Kdc) -> None:
    result = kdc("policy", "add", "short", "--zsk-lifetime", "3d")
    assert result.code == 2
    assert "zsk-lifetime 3d is too short for a ZSK pre-publish rollover" in result.err
    assert "Ipub + Iret = 2h5m + 10d1h5m = 10d3h10m" in result.err
    assert kdc.ok("policy", "list") == []


def test_policy_add_refuses_a_bad_duration_and_a_bad_name(kdc: Kdc) -> None:
    result = kdc("policy", "add", "std", "--dnskey-ttl", "soon")
    assert result.code == 2 and "expected a duration such as" in result.err
    result = kdc("policy", "add", "Bad Name")
    assert result.code == 2 and "policy name 'Bad Name'" in result.err


def test_dry_run_changes_nothing(kdc: Kdc) -> None:
    data = kdc.ok("policy", "add", "std", "--dry-run")
    assert data["dry_run"] is True and kdc.ok("policy", "list") == []
    assert "would add policy std" in kdc("policy", "add", "std", "--dry-run").out
    kdc.ok("policy", "add", "std")
    out = kdc("policy", "set", "std", "--zsk-lifetime", "60d", "--dry-run").out
    assert "would change policy std" in out and "zsk-lifetime: 30d -> 60d" in out
    assert kdc.ok("policy", "show", "std")["zsk_lifetime"] == 30 * 86400
    data = kdc.ok("zone", "set", ZONE, "--policy", "std", "--dry-run")
    assert data == {"zone": ZONE, "policy": "std", "previous_policy": None, "dry_run": True}
    assert kdc.ok("policy", "show", "std")["zones"] == []
    assert kdc.ok("zone", "add", "example.org.", "--policy", "std", "--dry-run")["dry_run"]
    assert kdc.ok("zone", "list") == [ZONE]


def test_zone_add_and_set_policy(kdc: Kdc) -> None:
    kdc.ok("policy", "add", "std")
    assert kdc.ok("zone", "add", "example.org.", "--policy", "std")["policy"] == "std"
    assert kdc("zone", "add", "example.net.", "--policy", "nope").code == 2
    assert "added zone example.net. (no policy: keys by hand)" in kdc(
        "zone", "add", "example.net.").out  # fmt: skip
    assert kdc.ok("zone", "set", ZONE, "--policy", "std")["previous_policy"] is None
    assert kdc.ok("policy", "show", "std")["zones"] == [ZONE, "example.org."]
    assert kdc.ok("zone", "set", ZONE, "--no-policy")["policy"] is None
    assert kdc.ok("policy", "show", "std")["zones"] == ["example.org."]
    result = kdc("zone", "set", ZONE)
    assert result.code == 2 and "give --policy NAME or --no-policy" in result.err


def test_zone_set_refuses_a_policy_of_another_algorithm_or_layout(kdc: Kdc) -> None:
    kdc.generate("KSK")
    kdc.generate("ZSK")
    kdc.ok("policy", "add", "ed25519", "--algorithm", "15")
    kdc.ok("policy", "add", "csk", "--layout", "csk")
    result = kdc("zone", "set", ZONE, "--policy", "ed25519")
    assert result.code == 2 and "then change that policy's algorithm" in result.err
    result = kdc("zone", "set", ZONE, "--policy", "csk")
    assert result.code == 2 and "live KSK/ZSK keys and the policy's layout is csk" in result.err
    assert kdc.ok("policy", "show", "csk")["zones"] == []


def test_policy_set_in_use_allows_timing_and_algorithm_refuses_bad_values(kdc: Kdc) -> None:
    kdc.ok("policy", "add", "std")
    kdc.ok("zone", "set", ZONE, "--policy", "std")
    data = kdc.ok("policy", "set", "std", "--dnskey-ttl", "30m", "--zsk-method", "double-signature")
    assert data["changed"] == {
        "dnskey_ttl": {"from": 3600, "to": 1800},
        "zsk_method": {"from": "pre-publish", "to": "double-signature"},
    }
    assert data["zones"] == [ZONE]
    result = kdc("policy", "set", "std", "--zsk-lifetime", "1d")
    assert result.code == 2 and "zsk-lifetime 1d is too short" in result.err
    result = kdc("policy", "set", "std", "--layout", "csk")
    assert result.code == 2 and "layout ksk-zsk -> csk" in result.err
    assert kdc.ok("policy", "show", "std")["algorithm"] == 13
    result = kdc("policy", "set", "std", "--algorithm", "15")
    assert result.code == 0 and "gets an algorithm rollover to 15" in result.out
    assert kdc("policy", "set", "std").code == 2  # nothing to change


def test_policy_remove_refused_while_in_use(kdc: Kdc) -> None:
    kdc.ok("policy", "add", "std")
    kdc.ok("zone", "set", ZONE, "--policy", "std")
    result = kdc("policy", "remove", "std")
    assert result.code == 2 and f"zone(s) {ZONE} use it" in result.err
    kdc.ok("zone", "set", ZONE, "--no-policy")
    assert kdc.ok("policy", "remove", "std") == {"name": "std", "removed": True}
    assert kdc("policy", "show", "std").code == 2
