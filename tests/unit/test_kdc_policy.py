"""Key policies (issue 22): defaults, the timing check with its numbers, JSON, and the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from krs_plugin.kdc.policy import (
    Policy,
    PolicyInvalid,
    check_policy_name,
    human,
    intervals,
    problems,
    unsafe_changes,
    validate,
)
from krs_plugin.kdc.store import StateError, Store

DAY, HOUR = 86400, 3600


def test_defaults_follow_bind_and_knot() -> None:
    p = Policy()
    assert (p.algorithm, p.layout) == (13, "ksk-zsk")
    assert (p.zsk_lifetime, p.ksk_lifetime, p.csk_lifetime) == (30 * DAY, 0, 0)
    assert (p.zsk_method, p.ksk_method, p.csk_method) == ("pre-publish", "double-ksk",
                                                          "double-ksk")  # fmt: skip
    assert (p.dnskey_ttl, p.max_zone_ttl, p.negative_ttl) == (HOUR, DAY, HOUR)
    assert (p.signatures_validity, p.signatures_refresh) == (14 * DAY, 5 * DAY)
    assert (p.publish_safety, p.retire_safety) == (HOUR, HOUR)
    assert (p.parent_ds_ttl, p.parent_propagation_delay) == (DAY, HOUR)
    assert (p.propagation_margin, p.standby_zsks) == (300, 0)
    assert problems(p) == []
    assert p.roles == ("KSK", "ZSK")
    assert Policy(layout="csk").roles == ("CSK",)


def test_default_zsk_intervals_are_rfc7583_pre_publication() -> None:
    ipub, iret = intervals(Policy(), "ZSK")
    assert ipub.seconds == HOUR + HOUR + 300  # dnskey-ttl + publish-safety + margin
    assert iret.seconds == 9 * DAY + DAY + HOUR + 300  # Dsgn + max-zone-ttl + retire + margin
    assert ipub.text() == (
        "Ipub = dnskey-ttl 1h + publish-safety 1h + propagation-margin 5m = 2h5m"
    )


@pytest.mark.parametrize(
    ("role", "values", "ipub", "iret"),
    [
        ("ZSK", {"zsk_method": "double-signature", "dnskey_ttl": DAY}, DAY + HOUR + 300,
         9 * DAY + DAY + HOUR + 300),
        ("KSK", {}, 2 * HOUR + 300, DAY + HOUR + HOUR),
        ("KSK", {"ksk_method": "double-ds"}, DAY + HOUR + HOUR, HOUR + HOUR + 300),
        ("CSK", {"layout": "csk"}, 2 * HOUR + 300, 9 * DAY + DAY + 300 + HOUR),
        ("CSK", {"layout": "csk", "csk_method": "double-ds"}, DAY + 2 * HOUR,
         9 * DAY + DAY + HOUR + 300),
    ],
)  # fmt: skip
def test_intervals_per_method(role: str, values: dict[str, object], ipub: int, iret: int) -> None:
    got = intervals(Policy(**values), role)  # type: ignore[arg-type]
    assert (got[0].seconds, got[1].seconds) == (ipub, iret)


def test_csk_retire_waits_for_the_parent_when_the_ds_side_is_longer() -> None:
    p = Policy(layout="csk", parent_ds_ttl=20 * DAY)
    _, iret = intervals(p, "CSK")
    assert iret.seconds == 20 * DAY + HOUR + HOUR  # max(signatures, parent) + retire-safety
    assert "max(Dsgn" in iret.formula and "parent-ds-ttl 20d" in iret.formula


def test_rejects_zsk_lifetime_shorter_than_ipub_plus_iret_with_every_term() -> None:
    with pytest.raises(PolicyInvalid) as caught:
        validate(Policy(zsk_lifetime=2 * DAY), name="policy short")
    message = str(caught.value)
    assert message.startswith("policy short: zsk-lifetime 2d is too short for a ZSK pre-publish")
    for term in (
        "Ipub + Iret = 2h5m + 10d1h5m = 10d3h10m",
        "dnskey-ttl 1h",
        "publish-safety 1h",
        "propagation-margin 5m",
        "signatures-validity 2w - signatures-refresh 5d = 9d",
        "max-zone-ttl 1d",
        "retire-safety 1h",
    ):
        assert term in message


def test_lifetime_just_above_ipub_plus_iret_is_accepted() -> None:
    ipub, iret = intervals(Policy(), "ZSK")
    total = ipub.seconds + iret.seconds
    assert problems(Policy(zsk_lifetime=total + 1)) == []
    assert problems(Policy(zsk_lifetime=total)) != []


def test_rejects_ksk_lifetime_shorter_than_the_parent_side() -> None:
    (problem,) = problems(Policy(ksk_lifetime=DAY))
    assert "ksk-lifetime 1d is too short for a KSK double-ksk rollover" in problem
    assert "Iret = parent-ds-ttl 1d + parent-propagation-delay 1h + retire-safety 1h" in problem


def test_unlimited_lifetimes_are_not_checked_and_unused_roles_are_ignored() -> None:
    assert problems(Policy(zsk_lifetime=0, ksk_lifetime=0)) == []
    assert problems(Policy(layout="csk", zsk_lifetime=HOUR)) == []  # no ZSK in a CSK layout
    assert problems(Policy(layout="csk", csk_lifetime=HOUR)) != []


def test_rejects_refresh_not_below_validity() -> None:
    found = problems(Policy(signatures_refresh=14 * DAY))
    assert any("signatures-refresh 2w must be less than signatures-validity 2w" in p for p in found)


def test_rejects_refresh_not_above_max_zone_ttl() -> None:
    found = problems(Policy(signatures_refresh=DAY))
    assert any("signatures-refresh 1d must exceed max-zone-ttl 1d" in p for p in found)


def test_rejects_ttls_above_max_zone_ttl() -> None:
    found = problems(Policy(negative_ttl=2 * DAY, dnskey_ttl=2 * DAY))
    assert any(p.startswith("negative-ttl 2d exceeds max-zone-ttl 1d") for p in found)
    assert any(p.startswith("dnskey-ttl 2d exceeds max-zone-ttl 1d") for p in found)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"algorithm": 7}, "algorithm 7 is not one of 8, 13, 14, 15, 16"),
        ({"layout": "single"}, "layout 'single' is not one of ksk-zsk, csk"),
        ({"zsk_method": "double-ds"}, "zsk-method 'double-ds' is not one of"),
        ({"dnskey_ttl": 0}, "dnskey-ttl must be more than 0s"),
        ({"standby_zsks": 9}, "standby-zsks must be 0 to 4, got 9"),
        ({"retire_safety": -1}, "retire-safety must not be negative"),
    ],
)
def test_rejects_values_out_of_range(values: dict[str, object], expected: str) -> None:
    found = problems(Policy(**values))  # type: ignore[arg-type]
    assert any(expected in p for p in found), found


def test_json_round_trip_and_missing_fields_take_defaults() -> None:
    p = Policy(layout="csk", csk_lifetime=365 * DAY, dnskey_ttl=2 * HOUR, standby_zsks=1)
    assert Policy.loads(p.dumps()) == p
    assert Policy.from_json(p.to_json()) == p
    assert Policy.from_json({"algorithm": 15}) == Policy(algorithm=15)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bogus": 1}, "unknown field(s) bogus"),
        ({"dnskey_ttl": "1h"}, "dnskey_ttl must be whole seconds"),
        ({"layout": 1}, "layout must be text"),
        ({"standby_zsks": True}, "standby_zsks must be whole seconds"),
        ([], "expected a JSON object"),
    ],
)
def test_from_json_refuses_unknown_or_mistyped_fields(data: object, expected: str) -> None:
    with pytest.raises(PolicyInvalid, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Policy.from_json(data)


def test_unsafe_changes_are_the_layout_only() -> None:
    """An algorithm change is an algorithm rollover the engine runs (docs/lifecycle.md)."""
    old = Policy()
    assert unsafe_changes(old, old.changed(dnskey_ttl=2 * HOUR, zsk_lifetime=60 * DAY)) == []
    assert unsafe_changes(old, old.changed(algorithm=15)) == []
    (why,) = unsafe_changes(old, old.changed(layout="csk", algorithm=8))
    assert why.startswith("layout ksk-zsk -> csk")


def test_policy_names() -> None:
    assert check_policy_name("default-13") == "default-13"
    for bad in ("", "Upper", "-x", "none", "a" * 64, "a b"):
        with pytest.raises(PolicyInvalid):
            check_policy_name(bad)


def test_human_durations_add_up() -> None:
    assert [human(s) for s in (0, 300, 9 * DAY, 30 * DAY, 14 * DAY, 10 * DAY + 3 * HOUR + 600)] == [
        "0s", "5m", "9d", "30d", "2w", "10d3h10m"]  # fmt: skip


# --- the store ------------------------------------------------------------------------------


def test_store_adds_zones_policy_column_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "kdc.db"
    store = Store(path)
    store.add_zone("example.com.")
    store.db.execute("ALTER TABLE zones DROP COLUMN policy")
    store.db.execute("DROP TABLE policies")
    store.close()
    with sqlite3.connect(path) as db:
        assert "policy" not in {r[1] for r in db.execute("PRAGMA table_info(zones)")}
    store = Store(path)
    assert store.zone_policy("example.com.") is None
    store.add_policy("std", Policy())
    assert store.set_zone_policy("example.com.", "std") == "example.com."
    assert store.zone_policy("example.com.") == "std"
    assert store.policy_of("example.com.") == ("std", Policy())
    store.set_zone_policy("example.com.", None)
    assert store.policy_of("example.com.") is None
    store.close()


def test_store_refuses_invalid_duplicate_and_in_use_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "kdc.db")
    with pytest.raises(PolicyInvalid, match="zsk-lifetime 1d is too short"):
        store.add_policy("bad", Policy(zsk_lifetime=DAY))
    assert store.policies() == []
    store.add_policy("std", Policy())
    with pytest.raises(StateError, match="already exists"):
        store.add_policy("std", Policy())
    store.add_zone("example.com.", policy="std")
    assert store.policy_zones("std") == ["example.com."]
    with pytest.raises(StateError, match="layout ksk-zsk -> csk"):
        store.set_policy("std", Policy(layout="csk"))
    with pytest.raises(StateError, match=r"example\.com\. use it"):
        store.remove_policy("std")
    old = store.set_policy("std", Policy(dnskey_ttl=2 * HOUR))
    assert old == Policy() and store.require_policy("std").dnskey_ttl == 2 * HOUR
    store.set_zone_policy("example.com.", None)
    store.set_policy("std", Policy(algorithm=15))  # no zone uses it now
    store.remove_policy("std")
    assert store.find_policy("std") is None
    with pytest.raises(StateError, match="policy nope not found"):
        store.add_zone("example.org.", policy="nope")
    assert store.zones() == ["example.com."]
    store.close()
