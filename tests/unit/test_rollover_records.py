"""The engine's record model (krs_plugin/kdc/records.py; docs/lifecycle.md, "The waits"): when
each record settles, what the nodes must serve, and what each distribution tells them."""

from __future__ import annotations

import pytest

from krs_plugin.kdc.engine import key_state
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.records import KeyRecords, State, expected, settles_at
from krs_plugin.kdc.store import KeyRow

H, D = 3600, 86400
POLICY = Policy()  # dnskey-ttl 1h, max-zone-ttl 1d, safety 1h each, margin 5m, Dsgn 9d


def test_waits_follow_rfc_7583_from_the_last_confirmation() -> None:
    t = 1_000_000
    margin = POLICY.propagation_margin
    assert settles_at("dnskey", State.RUMOURED, since=t, policy=POLICY, dnskey_ttl=H) == (
        t + H + H + margin  # Ipub = TTLkey + publish-safety (+ margin)
    )
    assert settles_at("zrrsig", State.UNRETENTIVE, since=t, policy=POLICY, dnskey_ttl=H) == (
        t + 9 * D + D + H + margin  # Iret = Dsgn + max-zone-ttl + retire-safety (+ margin)
    )
    assert settles_at("ds", State.RUMOURED, since=t, policy=POLICY, dnskey_ttl=H) == t + D + H


def test_the_largest_dnskey_ttl_served_counts_never_less_than_the_policys() -> None:
    t = 0
    served_3600 = settles_at("dnskey", State.UNRETENTIVE, since=t, policy=POLICY.changed(
        dnskey_ttl=60), dnskey_ttl=3600)  # fmt: skip
    served_10 = settles_at("dnskey", State.UNRETENTIVE, since=t, policy=POLICY.changed(
        dnskey_ttl=60), dnskey_ttl=10)  # fmt: skip
    assert served_3600 - served_10 == 3600 - 60


@pytest.mark.parametrize("state", [State.HIDDEN, State.OMNIPRESENT])
def test_settled_states_do_not_move_by_time(state: State) -> None:
    with pytest.raises(ValueError, match="does not move by time"):
        settles_at("dnskey", state, since=0, policy=POLICY, dnskey_ttl=H)


def zsk(tag: int, dnskey: State, zrrsig: State) -> KeyRecords:
    return KeyRecords(tag, 13, 256, "ZSK", {"dnskey": dnskey, "zrrsig": zrrsig})


KSK = KeyRecords(
    7892, 13, 257, "KSK", {"dnskey": State.OMNIPRESENT, "krrsig": State.OMNIPRESENT,
                           "ds": State.OMNIPRESENT},
)  # fmt: skip


def test_pre_publication_steps_expect_what_each_server_must_serve() -> None:
    old_signing = zsk(6103, State.OMNIPRESENT, State.OMNIPRESENT)
    # step 1: the new ZSK published, not signing
    step1 = [KSK, old_signing, zsk(12, State.RUMOURED, State.HIDDEN)]
    e = expected("example.com.", step1, 60)
    assert {k[0] for k in e.dnskeys} == {7892, 6103, 12}
    assert e.soa_signers == {6103} and e.dnskey_signers == {7892}
    # step 2: the new one signs, the old one stops
    step2 = [KSK, zsk(6103, State.OMNIPRESENT, State.UNRETENTIVE),
             zsk(12, State.OMNIPRESENT, State.RUMOURED)]  # fmt: skip
    e = expected("example.com.", step2, 60)
    assert {k[0] for k in e.dnskeys} == {7892, 6103, 12} and e.soa_signers == {12}
    # step 3: the old one withdrawn
    step3 = [KSK, zsk(6103, State.UNRETENTIVE, State.HIDDEN),
             zsk(12, State.OMNIPRESENT, State.OMNIPRESENT)]  # fmt: skip
    e = expected("example.com.", step3, 60)
    assert {k[0] for k in e.dnskeys} == {7892, 12} and e.soa_signers == {12}


def row(publish: int | None, activate: int | None, inactive: int | None = None) -> KeyRow:
    return KeyRow(1, "example.com.", 12, "ZSK", 13, 256, "active", 0, publish, activate,
                  inactive, None, b"")  # fmt: skip


def test_key_states_and_times_carry_the_current_step_only() -> None:
    """What a distribution says of each key follows its records, with no future times: a key
    published and not signing yet has no activate time (docs/lifecycle.md)."""
    now = 1000
    assert key_state(row(None, None), zsk(12, State.RUMOURED, State.HIDDEN), now) == (
        "published", {"publish_at": now})  # fmt: skip
    assert key_state(row(500, None), zsk(12, State.OMNIPRESENT, State.RUMOURED), now) == (
        "active", {"activate_at": now})  # fmt: skip
    assert key_state(row(5, 6), zsk(6103, State.OMNIPRESENT, State.UNRETENTIVE), now) == (
        "retired", {"inactive_at": now})  # fmt: skip
    assert key_state(row(5, 6, 7), zsk(6103, State.UNRETENTIVE, State.HIDDEN), now) == (
        "removed", {"delete_at": now})  # fmt: skip
    assert key_state(row(None, None), zsk(6103, State.HIDDEN, State.HIDDEN), now) == ("created", {})


def test_cds_policy_adds_the_cds_changes_to_the_ksk_steps() -> None:
    """The new KSK's CDS appears at the DS step, after its DNSKEY is omnipresent; with
    ``rollover`` it goes with the old KSK, with ``always`` it replaces the old KSK's."""
    from krs_plugin.kdc.methods import Change, initial_step, steps_for
    from krs_plugin.kdc.records import State

    none = steps_for("KSK", "double-ksk", "none")
    assert none is not None and all(c.record != "cds" for s in none for c in s.changes)
    rollover = steps_for("KSK", "double-ksk", "rollover")
    assert rollover is not None
    assert [[c for c in s.changes if c.record == "cds"] for s in rollover] == [
        [],
        [Change("new", "cds", State.RUMOURED)],
        [Change("new", "cds", State.UNRETENTIVE)],
    ]
    assert rollover[1].visible and rollover[1].waits_for_parent  # a distribution, then the parent
    always = steps_for("CSK", "double-ksk", "always")
    assert always is not None
    assert [c for c in always[1].changes if c.record == "cds"] == [
        Change("new", "cds", State.RUMOURED),
        Change("old", "cds", State.UNRETENTIVE),
    ]
    assert steps_for("ZSK", "pre-publish", "always") == steps_for("ZSK", "pre-publish")
    assert not any(c.record == "cds" for c in initial_step(("KSK", "ZSK"), "rollover").changes)
    first = initial_step(("KSK", "ZSK"), "always").changes
    assert Change("new:KSK", "cds", State.RUMOURED) in first
