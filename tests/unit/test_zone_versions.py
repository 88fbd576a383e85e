"""The control zone's versions (kdc/zoneversions.py) and the UPDATE order (kdc/publisher.py),
on a real kdc.db: the serial grows with every change and only then, also across a restart;
IXFR differences condense; expiry is a change without a write; UPDATEs never put a manifest
before its chunks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_plugin.kdc.publisher import ordered_changes
from krs_plugin.kdc.store import Store
from krs_plugin.kdc.zoneversions import Difference, ZoneVersions, compose, zone_entries
from krs_plugin.protocol import CHUNK, CHUNK_TYPE

ORIGIN = dns.name.from_text("kdc.example.")
NODE = "ns1.edge.example."
RDTYPE = dns.rdatatype.RdataType.make(CHUNK_TYPE)


def chunk(sequence: int, total: int = 1) -> bytes:
    return CHUNK(dns.rdataclass.IN, RDTYPE, 1, b"", sequence, total, os.urandom(40)).to_digestable()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "kdc.db")
    store.set_meta("control_zone", ORIGIN.to_text())
    return store


def publish(store: Store, now: int, ttl: int = 600) -> str:
    with store.transaction():
        dist_id, serial = store.next_distribution_id(now)
        store.add_distribution(
            dist_id, serial, NODE, zone=None, content="key_operations", created_at=now,
            expires_at=now + ttl, records=[chunk(0), chunk(1)],
        )  # fmt: skip
    return dist_id


def test_serial_grows_with_each_change_and_only_then(store: Store) -> None:
    now = int(time.time())
    versions = ZoneVersions(store, ORIGIN)
    assert versions.refresh(now)  # the first version of an empty kdc.db
    first = versions.serial
    assert not versions.refresh(now + 5)
    assert versions.serial == first
    publish(store, now)
    assert versions.refresh(now + 1)
    assert versions.serial > first
    second = versions.serial
    removed, added = versions.since(first) or (None, None)
    assert removed == set() and added is not None and len(added) == 3  # 2 CHUNK + the index
    assert not versions.refresh(now + 2)
    assert versions.serial == second


def test_restart_keeps_the_serial_and_never_goes_back(store: Store) -> None:
    now = int(time.time())
    versions = ZoneVersions(store, ORIGIN)
    publish(store, now)
    versions.refresh(now)
    serial = versions.serial
    again = ZoneVersions(store, ORIGIN)  # serve restarted: same content, same serial
    assert not again.refresh(now + 100)
    assert again.serial == serial
    assert again.since(serial) == (set(), set())
    publish(store, now + 1)
    later = ZoneVersions(store, ORIGIN)  # restarted after a change it did not see
    assert later.refresh(now + 2)
    assert later.serial > serial
    assert later.since(serial) is None  # the difference is not known: the whole zone


def test_expiry_changes_the_zone_without_a_write(store: Store) -> None:
    now = int(time.time())
    publish(store, now, ttl=10)
    versions = ZoneVersions(store, ORIGIN)
    versions.refresh(now)
    assert len(versions.current.entries) == 3
    assert not versions.refresh(now + 5)
    assert versions.refresh(now + 11)
    assert versions.current.entries == frozenset()


def test_differences_condense() -> None:
    a, b, c = ("a.", 1, b"a"), ("b.", 1, b"b"), ("c.", 1, b"c")
    steps = [
        Difference(1, 2, frozenset(), frozenset({a, b})),
        Difference(2, 3, frozenset({a}), frozenset({c})),
        Difference(3, 4, frozenset({c}), frozenset({a})),
    ]
    assert compose(steps) == (set(), {a, b})  # c came and went, a went and came back
    assert compose(steps[1:]) == (set(), set())  # from serial 2: a out and in again, c both


def test_update_order_never_shows_a_manifest_before_its_chunks() -> None:
    new = {("m.", CHUNK_TYPE, chunk(0)), ("c.", CHUNK_TYPE, chunk(1))}
    old = {("old-m.", CHUNK_TYPE, chunk(0)), ("old-c.", CHUNK_TYPE, chunk(1))}
    index_old, index_new = ("i.", 16, b"\x01a"), ("i.", 16, b"\x01b")
    groups = ordered_changes(old | {index_old}, new | {index_new})
    flat = [(action, entry[0]) for group in groups for action, entry in group]
    assert flat == [
        ("add", "c."),
        ("add", "m."),
        ("delete", "i."),
        ("add", "i."),
        ("delete", "old-m."),
        ("delete", "old-c."),
    ]
    assert [(a, e[0]) for a, e in groups[2]] == [("delete", "i."), ("add", "i.")]


def test_a_secondary_ahead_of_kdc_db_lifts_the_next_serial(store: Store) -> None:
    now = int(time.time())
    versions = ZoneVersions(store, ORIGIN)
    versions.refresh(now)
    ahead = versions.serial + 5000  # a secondary took that from the kdc.db before a restore
    versions.above(ahead)
    assert versions.refresh(now + 1)  # the same records, a new version all the same
    assert versions.serial == ahead + 1
    versions.above(ahead - 10)  # behind: nothing changes
    assert not versions.refresh(now + 2)
    assert versions.serial == ahead + 1


def test_owner_names_kept_between_rebuilds_give_the_same_zone(store: Store) -> None:
    """serve keeps the owner names of one rebuild for the next: the content is the same as
    made from nothing, through publications and an expiry, and no name outlives its record."""
    now = int(time.time())
    owners: dict[tuple[str, str, int], str] = {}
    first = publish(store, now, ttl=5)
    for step, at in enumerate((now, now + 1, now + 10)):  # the last: the first has expired
        if step == 1:
            publish(store, now + 1)
        records = store.published_records(now=at)
        kept, _ = zone_entries(records, ORIGIN, owners)
        assert kept == zone_entries(records, ORIGIN)[0]
        assert set(owners) == {(r.node_id, r.distribution_id, r.sequence) for r in records}
    assert all(dist_id != first for _, dist_id, _ in owners)
