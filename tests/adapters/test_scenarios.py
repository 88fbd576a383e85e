"""The adapter scenario table, run against every real nameserver in the harness (servers.py).

Each scenario drives the adapter as the KRS pipeline does (plan, apply; a failure rolled back by
``apply_atomically``, as in the pipeline) and then asks the running server over DNS, validating
every RRSIG with dnspython: the server's answers are the outcome.
"""

from __future__ import annotations

import time

import dns.name
import dns.rrset
import pytest

from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from tests.adapters.servers import LABS, UNSERVED, ZONES, Served, ServerLab

pytestmark = pytest.mark.integration

ZONE = ZONES[0]
NAME = dns.name.from_text(ZONE)


def key(role: str, zone: str = ZONE, algorithm: int = 13) -> DnssecKey:
    return generate_key(zone, algorithm, 256 if role == "ZSK" else 257)


def now_timing(**changes: int) -> KeyTiming:
    now = int(time.time()) - 1
    return KeyTiming(**{"created": now, "publish": now, "activate": now, **changes})


def install(*keys: tuple[DnssecKey, str], zone: str = ZONE, **plan: tuple[int, ...]) -> KeyPlan:
    return KeyPlan(
        dns.name.from_text(zone),
        tuple(PlannedKey(k, role, now_timing()) for k, role in keys),
        **plan,
    )


def served(lab: ServerLab, zone: str = ZONE) -> Served:
    return Served(lab.host, lab.port, zone)


def keys_sharing_a_tag(role: str, algorithm: int = 13) -> tuple[DnssecKey, DnssecKey]:
    """Two different keys with one tag and algorithm: about 320 keys made, the birthday bound
    of 65,536 tags."""
    seen: dict[int, DnssecKey] = {}
    while True:
        made = key(role, algorithm=algorithm)
        first = seen.setdefault(made.key_tag, made)
        if first is not made:
            return first, made


def test_add_zsk_is_served_and_signs(lab: ServerLab) -> None:
    adapter = lab.adapter()
    # Knot takes a ZSK only next to an active KSK of its algorithm (and a KSK only next to a
    # ZSK): there the ZSK joins a KSK and ZSK already in place.
    ksk, first = (key("KSK"), key("ZSK")) if lab.zsk_needs_ksk else (None, None)
    if ksk is not None and first is not None:
        adapter.apply(NAME, install((ksk, "KSK"), (first, "ZSK")))
    base = {k.key_tag for k in (ksk, first) if k is not None}
    zsk = key("ZSK")
    result = adapter.apply(NAME, install((zsk, "ZSK")))
    assert result.changed and result.installed == (zsk.key_tag,)
    now = served(lab)
    assert now.tags == {zsk.key_tag} | base
    assert now.soa_signers == {zsk.key_tag} | ({first.key_tag} if first else set())
    assert now.dnskey_signers == ({ksk.key_tag} if ksk else {zsk.key_tag})


@pytest.mark.parametrize("algorithm", [13, 15, 16])
def test_add_ksk_and_zsk_split_the_signing(lab: ServerLab, algorithm: int) -> None:
    ksk, zsk = key("KSK", algorithm=algorithm), key("ZSK", algorithm=algorithm)
    lab.adapter().apply(NAME, install((ksk, "KSK"), (zsk, "ZSK")))
    now = served(lab)
    assert now.tags == {ksk.key_tag, zsk.key_tag}
    assert now.dnskey_signers == {ksk.key_tag}
    assert now.soa_signers == {zsk.key_tag}


@pytest.mark.parametrize("algorithm", [13, 15, 16])
def test_csk_signs_everything(lab: ServerLab, algorithm: int) -> None:
    csk = key("CSK", algorithm=algorithm)
    lab.adapter().apply(NAME, install((csk, "CSK")))
    now = served(lab)
    assert now.tags == {csk.key_tag}
    assert now.soa_signers == {csk.key_tag} == now.dnskey_signers


def test_zsk_rollover_publish_then_activate_then_retire_then_remove(lab: ServerLab) -> None:
    adapter = lab.adapter()
    ksk, old, new = key("KSK"), key("ZSK"), key("ZSK")
    adapter.apply(NAME, install((ksk, "KSK"), (old, "ZSK")))

    # 1. the new ZSK is published ahead of use (activation in an hour)
    later = int(time.time()) + 3600
    pre = PlannedKey(new, "ZSK", now_timing(activate=later))
    adapter.apply(NAME, KeyPlan(NAME, (pre,)))
    now = served(lab)
    assert now.tags == {ksk.key_tag, old.key_tag, new.key_tag}
    assert now.soa_signers == {old.key_tag}

    # 2. it becomes active and the old one is retired: still published, no longer signing
    adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(new, "ZSK", now_timing()),), (old.key_tag,)))
    now = served(lab)
    assert old.key_tag in now.tags
    assert now.soa_signers == {new.key_tag}

    # 3. the old one is removed: gone from the DNSKEY set and from the key directory
    result = adapter.apply(NAME, KeyPlan(NAME, remove=(old.key_tag,)))
    assert result.removed == (old.key_tag,)
    now = served(lab)
    assert now.tags == {ksk.key_tag, new.key_tag}
    assert now.soa_signers == {new.key_tag} and now.dnskey_signers == {ksk.key_tag}
    assert old.key_tag not in lab.stored_tags()


def test_retired_key_stops_signing_at_once_after_double_signing(lab: ServerLab) -> None:
    # A double-signature rollover as the KDC sends it: both ZSKs active, then the old one with
    # its inactive time reached. BIND's loadkeys alone kept the old RRSIGs until due for refresh.
    adapter = lab.adapter()
    ksk, old, new = key("KSK"), key("ZSK"), key("ZSK")
    adapter.apply(NAME, install((ksk, "KSK"), (old, "ZSK"), (new, "ZSK")))
    assert served(lab).soa_signers == {old.key_tag, new.key_tag}
    retired = PlannedKey(old, "ZSK", now_timing(inactive=int(time.time())))
    adapter.apply(NAME, KeyPlan(NAME, (retired, PlannedKey(new, "ZSK", now_timing()))))
    now = served(lab)
    assert now.tags == {ksk.key_tag, old.key_tag, new.key_tag}
    assert now.soa_signers == {new.key_tag} and now.dnskey_signers == {ksk.key_tag}


def test_delete_removes_the_key_from_the_served_set(lab: ServerLab) -> None:
    adapter = lab.adapter()
    ksk, zsk, spare = key("KSK"), key("ZSK"), key("ZSK")
    adapter.apply(NAME, install((ksk, "KSK"), (zsk, "ZSK"), (spare, "ZSK")))
    result = adapter.apply(NAME, KeyPlan(NAME, remove=(zsk.key_tag,)))
    assert result.removed == (zsk.key_tag,)
    now = served(lab)
    assert now.tags == {ksk.key_tag, spare.key_tag}
    assert now.soa_signers == {spare.key_tag} and now.dnskey_signers == {ksk.key_tag}
    assert zsk.key_tag not in lab.stored_tags()


def test_two_zones_at_once(lab: ServerLab) -> None:
    adapter = lab.adapter()
    keys = {zone: key("CSK", zone) for zone in ZONES}
    for zone, csk in keys.items():
        adapter.apply(dns.name.from_text(zone), install((csk, "CSK"), zone=zone))
    for zone, csk in keys.items():
        now = served(lab, zone)
        assert now.tags == {csk.key_tag} and now.soa_signers == {csk.key_tag}


def test_reapplying_the_same_plan_changes_nothing(lab: ServerLab) -> None:
    adapter = lab.adapter()
    csk = key("CSK")
    plan = install((csk, "CSK"))
    adapter.apply(NAME, plan)
    before = lab.stored()
    again = adapter.apply(NAME, plan)
    assert not again.changed
    assert lab.stored() == before
    assert served(lab).tags == {csk.key_tag}


def test_server_down_during_apply_is_a_clean_error_and_nothing_changes(lab: ServerLab) -> None:
    adapter = lab.adapter()
    csk = key("CSK")
    adapter.apply(NAME, install((csk, "CSK")))
    before = lab.stored()
    lab.stop()
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [install((key("CSK"), "CSK"))])
    assert str(NAME) in str(failure.value)
    assert lab.stored() == before
    lab.start()
    assert served(lab).tags == {csk.key_tag}  # back up, with the old keys


def test_reload_that_does_not_take_effect_is_rolled_back(lab: ServerLab) -> None:
    lab.break_reload()
    adapter = lab.adapter()
    before = lab.stored()
    with pytest.raises(AdapterError) as failure:
        apply_atomically(
            adapter, [install(*((key(role), role) for role in lab.reload_break_roles))]
        )
    message = str(failure.value)
    assert lab.reload_failure in message
    if lab.reload_break_seen_first:
        assert "nothing was changed" in message
    else:
        assert "step '" in message and "rolled back" in message
    assert lab.stored() == before
    assert served(lab).tags == set()


@pytest.mark.parametrize(
    "lab", [name for name in sorted(LABS) if name.startswith(("bind9", "nsd"))], indirect=True
)
def test_a_key_that_would_take_another_keys_file_names_is_refused(lab: ServerLab) -> None:
    """Key files are named by zone, algorithm and tag: a new key sharing its tag with one the
    zone holds (made on the node: the KDC never makes one) would overwrite it. Refused before
    anything is written, and the zone is still served and signed by the key it held."""
    held, new = keys_sharing_a_tag("CSK")
    adapter = lab.adapter()
    adapter.apply(NAME, install((held, "CSK")))
    before = lab.stored()
    with pytest.raises(AdapterError, match="would overwrite another key of the zone") as refused:
        apply_atomically(adapter, [install((new, "CSK"))])
    assert "nothing was changed" in str(refused.value)
    assert lab.stored() == before
    now = served(lab)
    assert now.dnskey == dns.rrset.from_rdata(NAME, now.dnskey.ttl, held.dnskey)
    assert now.soa_signers == {held.key_tag}


def test_refused_key_set_leaves_the_old_keys_served_and_signing(lab: ServerLab) -> None:
    # A distribution the server will not take (a second algorithm with only a ZSK: Knot's
    # validation refuses it; BIND signs with it, so there it is simply applied).
    adapter = lab.adapter()
    csk = key("CSK")
    adapter.apply(NAME, install((csk, "CSK")))
    before = lab.stored()
    stray = key("ZSK", algorithm=15)
    if not lab.zsk_needs_ksk:
        adapter.apply(NAME, install((stray, "ZSK")))
        assert served(lab).soa_signers == {csk.key_tag, stray.key_tag}
        return
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [install((stray, "ZSK"))])
    assert lab.lone_zsk_refusal in str(failure.value)
    assert lab.stored() == before
    now = served(lab)
    assert now.tags == {csk.key_tag} and now.soa_signers == {csk.key_tag}


def test_zone_the_server_does_not_serve_is_refused_before_touching_files(
    lab: ServerLab,
) -> None:
    adapter = lab.adapter()
    before = lab.stored()
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [install((key("ZSK", UNSERVED), "ZSK"), zone=UNSERVED)])
    assert UNSERVED in str(failure.value) and "does not serve" in str(failure.value)
    assert lab.stored() == before


def test_retired_key_stays_published_until_the_delete_time_of_the_payload(
    lab: ServerLab,
) -> None:
    adapter = lab.adapter()
    ksk, old, new = key("KSK"), key("ZSK"), key("ZSK")
    adapter.apply(NAME, install((ksk, "KSK"), (old, "ZSK")))
    delete_at = int(time.time()) + 3600
    plan = KeyPlan(
        NAME, (PlannedKey(new, "ZSK", now_timing()),), (old.key_tag,), retire_delete_at=delete_at
    )
    result = adapter.apply(NAME, plan)
    assert result.retired == (old.key_tag,)
    (timing,) = [k.timing for k in adapter.current_keys(NAME) if k.key_tag == old.key_tag]
    assert timing.delete == delete_at and timing.inactive is not None
    assert timing.inactive <= int(time.time())
    now = served(lab)
    assert now.tags == {ksk.key_tag, old.key_tag, new.key_tag}
    assert now.soa_signers == {new.key_tag}


def test_restore_undoes_a_completed_apply_removed_keys_included(lab: ServerLab) -> None:
    # What the pipeline does when a later zone of the same distribution fails, and at start-up
    # after a crash: the snapshot taken before the apply brings back even a key it deleted.
    adapter = lab.adapter()
    ksk, zsk, spare = key("KSK"), key("ZSK"), key("ZSK")
    adapter.apply(NAME, install((ksk, "KSK"), (zsk, "ZSK"), (spare, "ZSK")))
    stored, snapshot = lab.stored(), adapter.snapshot(NAME)
    newer = key("ZSK")
    adapter.apply(
        NAME, KeyPlan(NAME, (PlannedKey(newer, "ZSK", now_timing()),), remove=(zsk.key_tag,))
    )
    assert zsk.key_tag not in lab.stored_tags()
    adapter.restore(NAME, snapshot)
    assert lab.stored() == stored
    now = served(lab)
    assert now.tags == {ksk.key_tag, zsk.key_tag, spare.key_tag}
    assert now.soa_signers == {zsk.key_tag, spare.key_tag}


def test_restore_of_a_zone_first_apply_leaves_no_key_of_it_served(lab: ServerLab) -> None:
    # The zone's first distribution undone (a later zone failed, or a crash mid-apply): the
    # snapshot has no keys, and the server must not go on serving (or signing with) the ones
    # the apply brought.
    adapter = lab.adapter()
    before, snapshot = lab.stored(), adapter.snapshot(NAME)
    csk = key("CSK")
    adapter.apply(NAME, install((csk, "CSK")))
    assert served(lab).tags == {csk.key_tag}
    adapter.restore(NAME, snapshot)
    assert lab.stored() == before
    now = served(lab)
    if lab.serves_last_keys_when_emptied:  # Knot: documented, and logged as a warning
        assert now.tags == {csk.key_tag}
        return
    assert csk.key_tag not in now.tags and csk.key_tag not in now.soa_signers
