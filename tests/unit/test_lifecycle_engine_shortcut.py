"""The engine pass's shortcut (``Engine.nothing_due``, from one snapshot of kdc.db per pass) never
skips a zone that ``run_zone`` would change: every zone it skips is run the full way as well, and
kdc.db must come out the same. Driven through the engine's scenarios of
tests/unit/test_lifecycle_engine.py (first keys, ZSK and KSK rollovers, a node down, a node serving
another TTL, a copy that expired, a rollover due by lifetime, keys adopted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krs_plugin.crypto import HpkeKey
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.engine import Engine, EngineOptions, policy_zones
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.store import Store
from tests.unit.test_lifecycle_engine import NODES, POLICY, T0, ZONE, Fleet, served_report

AGED = "aged.test."  # its ZSK rolls by lifetime
MANUAL = "manual.test."  # keys made by hand, then a policy: adopted
LIFETIME = Policy(**{**POLICY.__dict__, "zsk_lifetime": 200})


def dump(store: Store) -> list[str]:
    return list(store.db.iterdump())


class CheckedEngine(Engine):
    """An engine whose pass also runs, the full way, every zone the shortcut skips, and fails
    when that changed kdc.db."""

    skipped = 0
    ran = 0

    def run_pass(self, now: float) -> None:
        snapshot = self.state.snapshot()
        for zone, name in policy_zones(self.store):
            policy = self.store.require_policy(name)
            if self.nothing_due(snapshot, zone, policy, int(now)):
                before = dump(self.store)
                self.run_zone(zone, policy, int(now))
                after = dump(self.store)
                assert after == before, (zone, now, set(after) ^ set(before))
                self.skipped += 1
            else:
                self.ran += 1
        super().run_pass(now)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    store = Store(tmp_path / "kdc.db")
    store.add_policy("fast", POLICY, now=T0)
    store.add_policy("aging", LIFETIME, now=T0)
    store.add_zone(ZONE, now=T0, policy="fast")
    store.add_zone(AGED, now=T0, policy="aging")
    store.add_zone(MANUAL, now=T0)
    for role, flags in (("KSK", 257), ("ZSK", 256)):
        key = generate_key(MANUAL, 13, flags, ttl=POLICY.dnskey_ttl)
        store.add_key(MANUAL, key_tag=key.key_tag, role=role, algorithm=13, flags=flags,
                      private_pem=key.to_pkcs8_pem(), state="active", publish_at=T0,
                      activate_at=T0, now=T0)  # fmt: skip
    for node in NODES:
        store.add_node(node, notify_address="127.0.0.1:5399", backend="hpke",
                       hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None,
                       signing_pubkey=None, zones=[ZONE, AGED, MANUAL], now=T0)  # fmt: skip
    identity = create_identity(tmp_path / "keys")
    yield Fleet(store, CheckedEngine(store, identity, EngineOptions(resend_after=30)))
    store.close()


def serves_all(fleet: Fleet) -> None:
    """Fleet.confirm for every zone of this kdc.db (Fleet's own knows one zone): each node up
    confirms its pending distributions, serving the zone's keys as they are now."""

    def confirm() -> None:
        for d in fleet.store.distributions(status="pending"):
            if d.node_id in fleet.down or d.zone is None:
                continue
            ttl = fleet.served_ttl.get(d.node_id, POLICY.dnskey_ttl)
            served = served_report(fleet.store, d.zone, fleet.now, ttl)
            fleet.store.set_distribution_status(
                d.id, d.node_id, "confirmed", now=fleet.now, served=[served]
            )

    fleet.confirm = confirm  # type: ignore[method-assign]


def test_the_shortcut_skips_only_zones_the_full_pass_leaves_unchanged(fleet: Fleet) -> None:
    serves_all(fleet)
    engine = fleet.engine
    assert isinstance(engine, CheckedEngine)
    fleet.run(60)  # first keys of two zones, the third adopted
    fleet.store.set_zone_policy(MANUAL, "fast")
    fleet.run(5)
    assert "adopted" in [e.event for e in engine.state.history(MANUAL)]

    # A ZSK rollover with a node down (the step waits on the gate), then back.
    engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[2]}
    fleet.run(100, step=3)
    fleet.down = set()
    fleet.run(120)
    # A node serving another TTL: confirmed but wrong, sent the step again.
    fleet.served_ttl = {NODES[1]: 3600}
    engine.start(MANUAL, "ZSK", cause="command: test", now=fleet.now)
    fleet.run(70)
    assert "step-resent" in [e.event for e in engine.state.history(MANUAL)]
    fleet.served_ttl = {}
    # A KSK rollover: the first DS loose, then the DS step waiting for the operator.
    fleet.run(120)
    engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    engine.start(ZONE, "KSK", cause="command: test", now=fleet.now)
    fleet.run(40)
    engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(5)
    engine.ds_reported(ZONE, seen=False, now=fleet.now, cause="command: test")
    fleet.run(60)
    # A node down longer than a distribution lives: its copy expires, the step is sent again.
    engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[0]}
    fleet.run(400, step=5)
    fleet.down = set()
    fleet.run(150)
    # Every node down that long: no node confirmed the step, yet it is due to be sent again.
    engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = set(NODES)
    fleet.run(400, step=5)
    fleet.down = set()
    fleet.run(150)

    events = [e.event for e in engine.state.history(AGED)]
    assert events.count("rollover-done") >= 2  # first keys, and a ZSK by lifetime
    assert [e.event for e in engine.state.history(ZONE)].count("rollover-done") == 5
    assert engine.skipped > 1000 and engine.ran > 100, (engine.skipped, engine.ran)
