"""``key retire`` and ``key remove`` refuse what would break the zone, and ``key restore``
brings a removed key back (docs/kdc.md, "Guards and restore")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.kdcrun import NODE, ZONE, Kdc, new_kdc


@pytest.fixture
def kdc(tmp_path: Path) -> Kdc:
    """A zone with a KSK and a ZSK, distributed to one node (so both are published)."""
    kdc = new_kdc(tmp_path)
    kdc.add_node()
    kdc.generate("KSK")
    kdc.generate("ZSK")
    kdc.ok("distribute", "--zone", ZONE)
    return kdc


def tag_of(kdc: Kdc, role: str) -> int:
    (tag,) = [t for t, k in kdc.keys().items() if k["role"] == role]
    return tag


def test_remove_refuses_the_only_signing_zsk_and_changes_nothing(kdc: Kdc) -> None:
    zsk = tag_of(kdc, "ZSK")
    before = kdc.keys()
    result = kdc("key", "remove", "--zone", ZONE, "--tag", str(zsk))
    assert result.code == 2
    assert f"refused to remove ZSK {zsk} of {ZONE}" in result.err
    assert "the only ZSK/CSK" in result.err and "krs-kdc key generate" in result.err
    assert "--force" in result.err and "Nothing was changed" in result.err
    assert kdc.keys() == before


def test_retire_refuses_the_only_ksk_and_says_how_to_check_the_parent(kdc: Kdc) -> None:
    ksk = tag_of(kdc, "KSK")
    result = kdc("key", "retire", "--zone", ZONE, "--tag", str(ksk))
    assert result.code == 2
    assert "the only KSK/CSK" in result.err
    assert f"dig +short DS {ZONE} @" in result.err and f"'{ksk} 13 '" in result.err
    assert kdc.keys()[ksk]["state"] == "published"


def test_a_published_ksk_with_a_successor_is_still_guarded_for_its_ds(kdc: Kdc) -> None:
    old = tag_of(kdc, "KSK")
    new = kdc.generate("KSK")
    kdc.ok("distribute", "--zone", ZONE)
    result = kdc("key", "remove", "--zone", ZONE, "--tag", str(old))
    assert result.code == 2
    assert "its DS may be at the parent" in result.err and "the only" not in result.err
    assert f"krs-kdc zone ds {ZONE}" in result.err
    removed = kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(old), "--force")
    assert removed["state"] == "removed"
    assert kdc.keys()[new]["state"] == "published"


def test_a_ksk_never_distributed_is_removed_without_force(kdc: Kdc) -> None:
    spare = kdc.generate("KSK")
    assert kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(spare))["state"] == "removed"


def test_the_old_zsk_goes_without_force_once_the_new_one_signs(kdc: Kdc) -> None:
    old = tag_of(kdc, "ZSK")
    kdc.generate("ZSK")
    kdc.ok("distribute", "--zone", ZONE)
    retired = kdc.ok("key", "retire", "--zone", ZONE, "--tag", str(old))
    assert retired["state"] == "retired" and retired["inactive_at"] is not None
    assert kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(old))["state"] == "removed"


def test_a_zsk_not_yet_sent_or_not_yet_active_is_no_replacement(kdc: Kdc) -> None:
    old = tag_of(kdc, "ZSK")
    spare = kdc.generate("ZSK")  # created: the nodes do not have it
    result = kdc("key", "retire", "--zone", ZONE, "--tag", str(old))
    assert result.code == 2 and "the only ZSK/CSK" in result.err
    kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(spare))  # never sent: no guard
    kdc.generate("ZSK", "--activate-after", "1h")
    kdc.ok("distribute", "--zone", ZONE)
    result = kdc("key", "retire", "--zone", ZONE, "--tag", str(old))
    assert result.code == 2 and "the only ZSK/CSK" in result.err


def test_restore_brings_a_removed_key_back_and_the_next_distribution_sends_it(kdc: Kdc) -> None:
    zsk = tag_of(kdc, "ZSK")
    kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(zsk), "--force")
    sent = kdc.ok("distribute", "--zone", ZONE)
    assert (sent["key_count"], sent["delete_count"]) == (1, 1)
    restored = kdc.ok("key", "restore", "--zone", ZONE, "--tag", str(zsk))
    assert restored["state"] == "published" and restored["delete_at"] is None
    again = kdc.ok("distribute", "--zone", ZONE, "--node", NODE)
    assert (again["key_count"], again["delete_count"]) == (2, 0)


def test_a_key_retired_before_its_removal_is_restored_retired(kdc: Kdc) -> None:
    old = tag_of(kdc, "ZSK")
    kdc.generate("ZSK")
    kdc.ok("distribute", "--zone", ZONE)
    kdc.ok("key", "retire", "--zone", ZONE, "--tag", str(old))
    kdc.ok("key", "remove", "--zone", ZONE, "--tag", str(old))
    restored = kdc.ok("key", "restore", "--zone", ZONE, "--tag", str(old))
    assert restored["state"] == "retired" and restored["inactive_at"] is not None


def test_restore_refuses_a_key_that_is_not_removed(kdc: Kdc) -> None:
    zsk = tag_of(kdc, "ZSK")
    result = kdc("key", "restore", "--zone", ZONE, "--tag", str(zsk))
    assert result.code == 2 and "is published, not removed: nothing to restore" in result.err
    assert kdc.keys()[zsk]["state"] == "published"


def test_a_key_retired_before_it_ever_signed_can_still_be_distributed(kdc: Kdc) -> None:
    later = kdc.generate("ZSK", "--activate-after", "1h")
    kdc.ok("distribute", "--zone", ZONE)
    retired = kdc.ok("key", "retire", "--zone", ZONE, "--tag", str(later))
    assert retired["inactive_at"] == retired["activate_at"]  # times stay in order
    assert kdc.ok("distribute", "--zone", ZONE)["key_count"] == 3
