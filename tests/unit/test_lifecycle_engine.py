"""The lifecycle engine's sequencing (krs_plugin/kdc/engine.py, docs/lifecycle.md) on a real
kdc.db with real sealed distributions, the nodes' confirmations written as the KDC records them.

The nodes here serve exactly the key set of the newest distribution they confirm (read from
kdc.db as the distribution left it); tests/integration/test_lifecycle_fleet.py runs the same
engine against BIND, Knot, NSD and PowerDNS behind a validating resolver."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from krs_plugin.crypto import HpkeKey
from krs_plugin.kdc.distribute import zone_rules
from krs_plugin.kdc.engine import Engine, EngineOptions
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.records import KeyRecords, State
from krs_plugin.kdc.store import StateError, Store

ZONE = "example.test."
NODES = ("a.nodes.test.", "b.nodes.test.", "c.nodes.test.")
T0 = 1_900_000_000
POLICY = Policy(
    dnskey_ttl=10,
    max_zone_ttl=20,
    negative_ttl=10,
    signatures_validity=60,
    signatures_refresh=30,
    publish_safety=1,
    retire_safety=1,
    parent_ds_ttl=10,
    parent_propagation_delay=5,
    propagation_margin=0,
    zsk_lifetime=0,
)


def served_report(store: Store, zone: str, now: int, ttl: int) -> dict[str, object]:
    """A node's ``served`` for ``zone`` once it applied the zone's current key set: the DNSKEYs,
    signers and CDS as the KDC's records say (docs/protocol.md section 6)."""
    rows = {k.id: k for k in store.keys(zone)}
    records = [r for r in EngineState(store).key_records(zone) if rows[r.key_id].state != "removed"]

    def having(record: str) -> list[KeyRecords]:
        return [r for r in records if r.visible(record)]

    return {
        "zone": zone,
        "read_at": now,
        "dnskey": [[r.key_tag, r.algorithm, r.flags] for r in having("dnskey")],
        "dnskey_ttl": ttl,
        "dnskey_signers": [r.key_tag for r in having("krrsig")],
        "soa_signers": [r.key_tag for r in having("zrrsig")],
        "cds": [[r.key_tag, r.algorithm, 2] for r in having("cds")],
        "cdnskey": [[r.key_tag, r.algorithm, r.flags] for r in having("cds")],
    }


@dataclass
class Fleet:
    store: Store
    engine: Engine
    now: int = T0
    down: set[str] = field(default_factory=set)
    served_ttl: dict[str, int] = field(default_factory=dict)

    def serves(self) -> dict[str, object]:
        """What a node serves once it applied the zone's current key set."""
        return served_report(self.store, ZONE, self.now, POLICY.dnskey_ttl)

    def confirm(self) -> None:
        """Every node that is up applies its pending distributions and confirms them."""
        for d in self.store.distributions(status="pending"):
            if d.node_id in self.down:
                continue
            served = self.serves()
            if d.node_id in self.served_ttl:
                served["dnskey_ttl"] = self.served_ttl[d.node_id]
            self.store.set_distribution_status(
                d.id, d.node_id, "confirmed", now=self.now, served=[served]
            )

    def run(self, seconds: int, *, step: int = 1) -> None:
        """Passes every ``step`` seconds, the nodes confirming between them."""
        for _ in range(0, seconds, step):
            self.store.expire_distributions(now=self.now)  # as serve's loop does
            self.engine.run_pass(self.now)
            self.confirm()
            self.now += step

    def records(self) -> dict[tuple[str, int], dict[str, State]]:
        return {(r.role, r.key_tag): r.states for r in EngineState(self.store).key_records(ZONE)}

    def phase(self) -> tuple[str, int] | None:
        current = EngineState(self.store).current(ZONE)
        return None if current is None else (current.role, current.step)

    def events(self) -> list[str]:
        return [e.event for e in EngineState(self.store).history(ZONE)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    store = Store(tmp_path / "kdc.db")
    store.add_policy("fast", POLICY, now=T0)
    store.add_zone(ZONE, now=T0, policy="fast")
    for node in NODES:
        store.add_node(
            node,
            notify_address="127.0.0.1:5399",
            backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex,
            jose_pubkey=None,
            signing_pubkey=None,
            zones=[ZONE],
            now=T0,
        )
    engine = Engine(store, create_identity(tmp_path / "keys"), EngineOptions(resend_after=30))
    yield Fleet(store, engine)
    store.close()


def signed(fleet: Fleet) -> None:
    """Run until the zone's first keys are in every cache."""
    fleet.run(60)
    assert fleet.phase() is None, fleet.events()


def test_a_zone_with_a_policy_gets_its_first_keys_and_every_node_serves_them(fleet: Fleet) -> None:
    fleet.engine.run_pass(fleet.now)
    keys = fleet.store.keys(ZONE)
    assert sorted(k.role for k in keys) == ["KSK", "ZSK"]
    assert all(k.state == "active" for k in keys)
    # Three nodes got one distribution each, with both keys at the policy's TTL.
    assert len(fleet.store.distributions(status="pending")) == 3
    signed(fleet)
    for states in fleet.records().values():
        assert {s for r, s in states.items() if r not in ("ds", "cds")} == {State.OMNIPRESENT}
        assert states.get("ds", State.HIDDEN) is State.HIDDEN  # the operator's, by ds seen
    assert fleet.events() == [
        "rollover-started", "step-begun", "step-served", "step-done", "rollover-done",
    ]  # fmt: skip
    # No older signature exists to wait out (no Dsgn): max-zone-ttl 20 + publish-safety 1 after
    # the last confirmation, which came at once.
    at = {e.event: e.at for e in EngineState(fleet.store).history(ZONE)}
    assert at["step-done"] - at["step-begun"] == 21


def test_a_zsk_rollover_moves_step_by_step_and_waits_from_the_last_confirmation(
    fleet: Fleet,
) -> None:
    signed(fleet)
    old = next(k for k in fleet.store.keys(ZONE) if k.role == "ZSK")
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[2]}
    fleet.run(120)
    # Step 1 (publish) is held by the node that does not confirm, however long.
    assert fleet.phase() == ("ZSK", 0)
    view = fleet.engine.gate(EngineState(fleet.store).current(ZONE), POLICY)  # type: ignore[arg-type]
    assert list(view.lagging) == [NODES[2]]
    new = next(k for k in fleet.store.keys(ZONE) if k.role == "ZSK" and k.id != old.id)
    assert new.state == "published" and new.activate_at is None
    fleet.down = set()
    back = fleet.now
    fleet.run(2)
    assert EngineState(fleet.store).current(ZONE).reached_at == back  # type: ignore[union-attr]
    # dnskey rumoured -> omnipresent: TTL 10 + publish-safety 1 + margin 0 after the last node.
    fleet.run(9)  # passes up to back + 10
    assert fleet.phase() == ("ZSK", 0)
    fleet.run(1)  # the pass at back + 11
    assert fleet.phase() == ("ZSK", 1)
    states = fleet.records()
    assert states[("ZSK", new.key_tag)]["zrrsig"] is State.RUMOURED
    assert states[("ZSK", old.key_tag)]["zrrsig"] is State.UNRETENTIVE
    # zrrsig: Dsgn (60 - 30) + max-zone-ttl 20 + retire-safety 1 after the last confirmation
    # (back + 11), then the removal: TTL 10 + retire-safety 1.
    fleet.run(50)  # passes up to back + 61
    assert fleet.phase() == ("ZSK", 1)
    fleet.run(1)
    assert fleet.phase() == ("ZSK", 2)
    fleet.run(10)  # up to back + 72, the removal's last confirmation at back + 62
    assert fleet.phase() == ("ZSK", 2)
    fleet.run(1)
    assert fleet.phase() is None
    states = fleet.records()
    assert states[("ZSK", old.key_tag)] == {"dnskey": State.HIDDEN, "zrrsig": State.HIDDEN}
    assert states[("ZSK", new.key_tag)] == {
        "dnskey": State.OMNIPRESENT, "zrrsig": State.OMNIPRESENT,
    }  # fmt: skip
    assert {k.key_tag: k.state for k in fleet.store.keys(ZONE) if k.role == "ZSK"} == {
        old.key_tag: "removed",
        new.key_tag: "active",
    }


def test_a_ksk_rollover_waits_for_the_operator_at_the_ds_step(fleet: Fleet) -> None:
    signed(fleet)
    old = next(k for k in fleet.store.keys(ZONE) if k.role == "KSK")
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    assert fleet.records()[("KSK", old.key_tag)]["ds"] is State.OMNIPRESENT
    fleet.engine.start(ZONE, "KSK", cause="command: test", now=fleet.now)
    fleet.run(300)
    assert fleet.phase() == ("KSK", 1)  # the DS step: nothing moves without the operator
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(60)
    assert fleet.phase() == ("KSK", 1)  # the old DS is still at the parent
    fleet.engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    fleet.run(15)
    assert fleet.phase() == ("KSK", 1)  # parent-ds-ttl 10 + parent-propagation-delay 5
    fleet.run(2)
    assert fleet.phase() == ("KSK", 2)
    fleet.run(20)
    assert fleet.phase() is None
    assert {k.key_tag: k.state for k in fleet.store.keys(ZONE) if k.role == "KSK"}[
        old.key_tag
    ] == "removed"


def test_a_node_serving_another_dnskey_ttl_holds_the_step_and_gets_it_again(fleet: Fleet) -> None:
    signed(fleet)
    fleet.served_ttl = {NODES[1]: 3600}
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.run(40)
    assert fleet.phase() == ("ZSK", 0)
    lagging = fleet.engine.gate(EngineState(fleet.store).current(ZONE), POLICY).lagging  # type: ignore[arg-type]
    assert "TTL 3600" in lagging[NODES[1]]
    assert "step-resent" in fleet.events()
    fleet.served_ttl = {}
    fleet.run(45)
    assert fleet.phase() == ("ZSK", 1)


def test_ds_words_out_of_place_are_refused_and_change_nothing(fleet: Fleet) -> None:
    signed(fleet)
    with pytest.raises(StateError, match="not at a step that waits for the old DS"):
        fleet.engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.run(2)
    before = fleet.events()
    with pytest.raises(StateError, match="does not wait for the parent"):
        fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    assert fleet.events() == before


def test_one_rollover_per_zone_and_a_restarted_engine_carries_on(fleet: Fleet) -> None:
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    with pytest.raises(StateError, match="one rollover per zone"):
        fleet.engine.start(ZONE, "KSK", cause="command: test", now=fleet.now)
    fleet.run(15)
    # A new engine on the same kdc.db (a restarted krs-kdc serve) goes on from the same step.
    fleet.engine = Engine(fleet.store, fleet.engine.identity)
    fleet.run(120)
    assert fleet.phase() is None
    assert fleet.events().count("rollover-done") == 2


def test_a_zone_without_nodes_is_held_and_named_and_its_keys_made_once(fleet: Fleet) -> None:
    fleet.store.add_zone("lonely.test.", now=fleet.now, policy="fast")
    for _ in range(3):
        fleet.engine.run_pass(fleet.now)  # no node: held, the other zone goes on
    assert len(fleet.store.keys("lonely.test.")) == 2  # made once, not at every pass
    view = fleet.engine.view("lonely.test.", fleet.now)
    assert view.waits_for == "engine" and "no node serves lonely.test." in view.problem
    assert fleet.store.distributions(status="pending")  # example.test.'s first step went out


def test_a_node_back_after_its_copy_expired_gets_the_step_again(fleet: Fleet) -> None:
    """A node unreachable for longer than a distribution lives (300 s) finds nothing published
    when it returns: the engine sends the step again, or the step would wait forever."""
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[2]}
    fleet.run(400, step=5)
    assert fleet.phase() == ("ZSK", 0)
    assert not [d for d in fleet.store.distributions(status="pending") if d.node_id == NODES[2]
                and d.created_at < fleet.now - 300]  # fmt: skip
    assert [d for d in fleet.store.distributions(status="pending") if d.node_id == NODES[2]]
    fleet.down = set()
    fleet.run(20)
    assert fleet.phase() == ("ZSK", 1)


def test_the_first_ds_is_recorded_during_a_zsk_rollover_and_settles_after_it(
    fleet: Fleet,
) -> None:
    signed(fleet)
    ksk = next(k for k in fleet.store.keys(ZONE) if k.role == "KSK")
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.run(2)
    # The operator put the first DS at the parent while the ZSK rolls: recorded, not refused.
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    assert fleet.records()[("KSK", ksk.key_tag)]["ds"] is State.RUMOURED
    fleet.run(120)
    assert fleet.phase() is None
    assert fleet.records()[("KSK", ksk.key_tag)]["ds"] is State.OMNIPRESENT
    # During a KSK rollover it is still refused: the DS step is the rollover's own.
    fleet.engine.start(ZONE, "KSK", cause="command: test", now=fleet.now)
    fleet.run(2)
    with pytest.raises(StateError, match="does not wait for the parent"):
        fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")


def test_a_pass_stops_at_its_budget_and_the_next_goes_on_where_it_stopped(fleet: Fleet) -> None:
    """serve answers nothing while a pass runs: with a budget spent after one zone, each pass
    begins one zone's first step, and every zone gets its turn."""
    for name in ("b.test.", "c.test."):
        fleet.store.add_zone(name, now=fleet.now, policy="fast")
        fleet.store.change_node_zones(NODES[0], add=(name,), remove=())
    fleet.engine.options = EngineOptions(resend_after=30, pass_budget=0)
    begun = []
    for _ in range(3):
        fleet.engine.run_pass(fleet.now)
        begun.append(sorted(r.zone for r in EngineState(fleet.store).rollovers(running=True)
                            if r.step_started_at is not None))  # fmt: skip
    assert begun == [["b.test."], ["b.test.", "c.test."], ["b.test.", "c.test.", ZONE]]


def test_an_algorithm_rollover_signs_first_publishes_then_swaps_the_ds_and_removes_the_old(
    fleet: Fleet,
) -> None:
    """Changing the policy's algorithm rolls every key (docs/lifecycle.md, "Algorithm
    rollover"): the new ZSK signs before any new DNSKEY is served, the nodes get it with an
    activate time and no publish time, and the old ZSK keeps signing after its DNSKEY left."""
    signed(fleet)
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    old = {k.role: k for k in fleet.store.keys(ZONE)}
    fleet.store.set_policy("fast", POLICY.changed(algorithm=15), now=fleet.now)
    fleet.run(2)
    assert fleet.phase() == ("algorithm", 0)
    new = {k.role: k for k in fleet.store.keys(ZONE) if k.algorithm == 15}
    served = fleet.serves()
    assert {k[0] for k in served["dnskey"]} == {old["KSK"].key_tag, old["ZSK"].key_tag}  # type: ignore[union-attr]
    assert set(served["soa_signers"]) == {old["ZSK"].key_tag, new["ZSK"].key_tag}  # type: ignore[arg-type]
    assert new["ZSK"].state == "active" and new["KSK"].state == "created"
    sent = fleet.store.distributions(status="confirmed")[-1]
    rule = zone_rules(fleet.store, [ZONE])[ZONE]
    assert rule.unpublished == {new["ZSK"].id} and sent.zone == ZONE
    fleet.run(90)  # Dsgn 30 + max-zone-ttl 20 + 1, then dnskey-ttl 10 + 1
    assert fleet.phase() == ("algorithm", 2)  # the DS swap: CDS of the new KSK on every node
    assert fleet.serves()["cds"] == [[new["KSK"].key_tag, 15, 2]]
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    fleet.run(20)
    assert fleet.phase() == ("algorithm", 3)  # old DNSKEYs withdrawn, the old ZSK still signs
    served = fleet.serves()
    assert {k[1] for k in served["dnskey"]} == {15}  # type: ignore[union-attr]
    assert old["ZSK"].key_tag in served["soa_signers"]  # type: ignore[operator]
    fleet.run(60)
    assert fleet.phase() is None, fleet.events()
    states = {k.key_tag: k.state for k in fleet.store.keys(ZONE)}
    assert states[old["KSK"].key_tag] == states[old["ZSK"].key_tag] == "removed"
    assert states[new["KSK"].key_tag] == states[new["ZSK"].key_tag] == "active"
    assert fleet.serves()["soa_signers"] == [new["ZSK"].key_tag]


def standby_fleet(fleet: Fleet) -> Fleet:
    fleet.store.set_policy("fast", POLICY.changed(standby_zsks=1), now=fleet.now)
    signed(fleet)
    fleet.run(20)  # the standby ZSK: published, in every cache
    assert fleet.phase() is None, fleet.events()
    return fleet


def test_a_standby_zsk_is_kept_published_and_an_emergency_swaps_to_it_at_once(
    fleet: Fleet,
) -> None:
    """docs/lifecycle.md, "Emergency rollovers": with a standby ZSK in every cache, the
    compromised ZSK's rollover begins at the swap; only the retire side is waited, and a new
    standby follows."""
    standby_fleet(fleet)
    zsks = {k.key_tag: k.state for k in fleet.store.keys(ZONE) if k.role == "ZSK"}
    signing = fleet.serves()["soa_signers"]
    assert sorted(zsks.values()) == ["active", "published"] and len(signing) == 1  # type: ignore[arg-type]
    compromised = signing[0]  # type: ignore[index]
    standby = next(t for t in zsks if t != compromised)
    began = fleet.now
    rollover = fleet.engine.emergency(ZONE, compromised, cause="command: test", now=fleet.now)
    assert (rollover.role, rollover.method, rollover.step) == ("ZSK", "pre-publish", 1)
    fleet.run(2)
    assert fleet.serves()["soa_signers"] == [standby]  # signing with the standby at once
    while fleet.phase() is not None and fleet.now - began < 200:
        fleet.run(1)
    took = fleet.now - began
    # the minimum: Dsgn 30 + max-zone-ttl 20 + retire-safety 1, then dnskey-ttl 10 + 1
    assert 62 <= took <= 66, took
    states = {k.key_tag: k.state for k in fleet.store.keys(ZONE)}
    assert states[compromised] == "removed"
    fleet.run(20)
    assert [k.state for k in fleet.store.keys(ZONE) if k.role == "ZSK"].count("published") == 1


def test_an_emergency_without_a_standby_publishes_a_new_zsk_first(fleet: Fleet) -> None:
    signed(fleet)
    zsk = next(k for k in fleet.store.keys(ZONE) if k.role == "ZSK")
    rollover = fleet.engine.emergency(ZONE, zsk.key_tag, cause="command: test", now=fleet.now)
    assert (rollover.method, rollover.step) == ("pre-publish", 0)
    with pytest.raises(StateError, match="no live key 4"):
        fleet.engine.emergency(ZONE, 4, cause="command: test", now=fleet.now)


def test_a_compromised_node_leaves_its_zones_and_every_key_it_held_is_rolled(
    fleet: Fleet,
) -> None:
    """Queued emergencies run one after the other, ZSK first, the node in none of the steps."""
    from krs_plugin.kdc.enginecli import evict

    signed(fleet)
    held = {k.key_tag for k in fleet.store.keys(ZONE)}
    state = EngineState(fleet.store)
    with fleet.store.transaction():
        evict(fleet.store, NODES[2], ZONE, cause="command: test", now=fleet.now)
        for key in sorted(fleet.store.keys(ZONE), key=lambda k: k.role != "ZSK"):
            state.request_rollover(ZONE, key.id, cause="command: test", now=fleet.now)
    fleet.run(3)
    assert fleet.phase() == ("ZSK", 0)
    assert NODES[2] not in (state.current(ZONE) or state.rollovers(ZONE)[-1]).nodes
    fleet.run(120)
    assert fleet.phase() == ("KSK", 1)  # the ZSK done; the KSK at its DS step
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(60)
    assert fleet.phase() is None, fleet.events()
    live = {k.key_tag for k in fleet.store.keys(ZONE) if k.state != "removed"}
    assert not live & held and len(live) == 2


def test_a_liberal_algorithm_rollover_never_signs_with_an_unpublished_key(fleet: Fleet) -> None:
    """``algorithm-method liberal`` (for BIND nodes, which sign only with keys whose DNSKEY they
    serve): every key that signs is also published, in every step."""
    signed(fleet)
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    fleet.store.set_policy(
        "fast", POLICY.changed(algorithm=15, algorithm_method="liberal"), now=fleet.now
    )
    seen_steps = set()
    for _ in range(200):
        fleet.run(1)
        phase = fleet.phase()
        if phase is None:
            break
        seen_steps.add(phase[1])
        served = fleet.serves()
        published = {k[0] for k in served["dnskey"]}  # type: ignore[union-attr]
        assert set(served["soa_signers"]) <= published  # type: ignore[arg-type]
        assert zone_rules(fleet.store, [ZONE])[ZONE].unpublished == frozenset()
        if phase == ("algorithm", 1) and "ds-seen" not in fleet.events()[-3:]:
            fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
            fleet.engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    assert fleet.phase() is None and seen_steps == {0, 1, 2}, fleet.events()
    assert {k.algorithm for k in fleet.store.keys(ZONE) if k.state != "removed"} == {15}


def test_a_standby_ksk_has_its_ds_at_the_parent_and_an_emergency_swaps_to_it(
    fleet: Fleet,
) -> None:
    """``standby-ksk 1``: a second KSK published, not signing, its DS at the parent; a
    compromised KSK is then replaced by a double-DS swap whose first step is done, and the old
    DS is the only thing the parent still has to change."""
    fleet.store.set_policy("fast", POLICY.changed(standby_ksk=1), now=fleet.now)
    signed(fleet)
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(10)
    assert fleet.phase() is None  # no standby KSK before the zone is secure
    fleet.run(20)
    assert fleet.phase() == ("KSK", 1)  # the standby's DS step
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    assert fleet.phase() is None, fleet.events()
    ksks = {r.key_tag: r for r in EngineState(fleet.store).key_records(ZONE) if r.role == "KSK"}
    signing = fleet.serves()["dnskey_signers"]
    assert len(ksks) == 2 and len(signing) == 1  # type: ignore[arg-type]
    compromised = signing[0]  # type: ignore[index]
    (standby,) = set(ksks) - {compromised}
    assert ksks[standby].state("ds") is State.OMNIPRESENT
    rollover = fleet.engine.emergency(ZONE, compromised, cause="command: test", now=fleet.now)
    assert (rollover.method, rollover.step) == ("double-ds", 1)
    fleet.run(2)
    assert fleet.serves()["dnskey_signers"] == [standby]  # signing with it at once
    fleet.run(15)
    assert fleet.phase() == ("KSK", 2)  # the parent removes the compromised KSK's DS
    fleet.engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    fleet.run(20)
    states = {k.key_tag: k.state for k in fleet.store.keys(ZONE)}
    assert states[compromised] == "removed" and states[standby] == "active"
    assert fleet.phase() is not None and fleet.phase()[0] == "KSK"  # the next standby KSK
