"""The KDC pushes a zone's DS and sees it at every parent address itself (kdc/parentwatch.py,
docs/lifecycle.md "The parent"): against the lab parent (Knot taking TSIG UPDATEs, an NSD
secondary held back until released), with the nodes' confirmations written as the KDC records
them (tests/unit/test_lifecycle_engine.py's ``served_report``). The first DS and a KSK rollover
need no command; a parent address that lags holds the DS step, named, until it catches up.
tests/integration/test_lifecycle_fleet.py runs the same against four real servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krs_lab.parent import CHILD, LabParent
from krs_lab.process import server_binary
from krs_plugin.crypto import HpkeKey
from krs_plugin.kdc.engine import Engine, EngineOptions
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.parentwatch import ParentDesk, ParentSettings, need_of, set_parent, watch_of
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.records import State
from krs_plugin.kdc.store import Store
from tests.unit.test_lifecycle_engine import served_report

pytestmark = pytest.mark.skipif(
    any(server_binary(b) is None for b in ("knotd", "nsd")),
    reason="needs knotd and nsd (./run setup)",
)

NODES = ("a.nodes.test.", "b.nodes.test.")
POLICY = Policy(
    dnskey_ttl=10, max_zone_ttl=20, negative_ttl=10, signatures_validity=60,
    signatures_refresh=30, publish_safety=1, retire_safety=1, parent_ds_ttl=10,
    parent_propagation_delay=5, propagation_margin=0, zsk_lifetime=0,
)  # fmt: skip


@dataclass
class World:
    store: Store
    engine: Engine
    desk: ParentDesk
    parent: LabParent
    now: int

    def confirm(self) -> None:
        for d in self.store.distributions(status="pending"):
            served = served_report(self.store, CHILD, self.now, POLICY.dnskey_ttl)
            self.store.set_distribution_status(
                d.id, d.node_id, "confirmed", now=self.now, served=[served]
            )

    def run(self, seconds: int) -> None:
        """Engine passes a second apart (fake time); the parent asked whenever due (real)."""
        for _ in range(seconds):
            self.store.expire_distributions(now=self.now)
            self.engine.run_pass(self.now)
            self.confirm()
            for task in self.desk.due(self.now):
                self.desk.record(task, task.run(), self.now)
            self.now += 1

    def phase(self) -> tuple[str, int] | None:
        current = EngineState(self.store).current(CHILD)
        return None if current is None else (current.role, current.step)

    def ksk_ds(self) -> dict[int, State]:
        return {
            r.key_tag: r.state("ds")
            for r in EngineState(self.store).key_records(CHILD)
            if r.role == "KSK"
        }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    parent = LabParent(tmp_path / "parent", ttl=10)
    parent.start()
    store = Store(tmp_path / "kdc.db")
    now = int(time.time())
    store.add_policy("fast", POLICY, now=now)
    store.add_zone(CHILD, now=now, policy="fast")
    for node in NODES:
        store.add_node(
            node, notify_address="127.0.0.1:5399", backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None, signing_pubkey=None,
            zones=[CHILD], now=now,
        )  # fmt: skip
    engine = Engine(store, create_identity(tmp_path / "keys"), EngineOptions(resend_after=30))
    anchor = tmp_path / "anchor"
    anchor.write_text(parent.trust_anchor + "\n")
    set_parent(
        store, CHILD,
        ParentSettings(agents=parent.addresses, trust_anchor=parent.trust_anchor,
                       push_update=parent.primary, tsig_file=str(parent.tsig_file)),
        now=now,
    )  # fmt: skip
    try:
        yield World(store, engine, ParentDesk(store, engine, interval=1, interval_max=2), parent,
                    now)  # fmt: skip
    finally:
        store.close()
        parent.close()


def test_the_first_ds_and_a_ksk_rollover_need_no_command_and_wait_for_every_parent_address(
    world: World,
) -> None:
    world.run(40)  # the first keys, in every cache; then their DS pushed
    first = next(iter(world.ksk_ds()))
    assert world.parent.ds_at(world.parent.primary)  # pushed by UPDATE, signed by Knot
    assert not world.parent.ds_at(world.parent.secondary)  # held back
    assert world.ksk_ds()[first] is State.HIDDEN  # not seen everywhere: nothing recorded
    watch = watch_of(world.store, CHILD)
    assert watch is not None and watch.push_ok and watch.purpose == f"first DS {first}"
    assert f"not yet at {world.parent.secondary}" in (watch.why or "")
    world.parent.release()
    world.run(20)
    assert world.ksk_ds()[first] is State.OMNIPRESENT

    world.engine.start(CHILD, "KSK", cause="command: test", now=world.now)
    world.run(30)
    assert world.phase() == ("KSK", 1)  # the DS step: pushed, the secondary lags
    new = next(t for t in world.ksk_ds() if t != first)
    assert world.parent.ds_at(world.parent.primary) == {
        line.split(" DS ")[1]
        for line in need_of(world.engine, CHILD).push  # type: ignore[union-attr]
    }
    watch = watch_of(world.store, CHILD)
    assert watch is not None and world.parent.secondary in (watch.why or "")
    world.run(30)
    assert world.phase() == ("KSK", 1)  # no timeout turns the lag into success
    world.parent.release()
    world.run(40)
    assert world.phase() is None, [e.event for e in EngineState(world.store).history(CHILD)]
    assert world.ksk_ds() == {new: State.OMNIPRESENT, first: State.HIDDEN}
    events = [(e.event, e.cause) for e in EngineState(world.store).history(CHILD)]
    assert ("ds-pushed", "engine") in events
    assert [c for e, c in events if e in ("ds-seen", "ds-gone")] and all(
        c.startswith("parent: ") for e, c in events if e in ("ds-seen", "ds-gone")
    )
