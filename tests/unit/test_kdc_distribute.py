"""``distribute_node``: one distribution with a node's keys of every zone it serves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dns.name
import pytest

from krs_plugin.crypto import HpkeKey, write_hpke_public
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.cli import main
from krs_plugin.kdc.distribute import distribute_node
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.store import StateError, Store
from krs_plugin.payload import RollKey, parse_payload
from krs_plugin.protocol import CHUNK_TYPE, parse_chunk_wire
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

NODE = "ns1.edge.example."
ZONES = ("a.example.", "b.example.", "c.example.")


@pytest.fixture
def kdc(tmp_path: Path) -> tuple[Store, object, HpkeKey]:
    identity = create_identity(tmp_path / "keys")
    store = Store(tmp_path / "kdc.db")
    node_key = HpkeKey.generate()
    for zone in (*ZONES, "other.example."):
        store.add_zone(zone)
    store.add_node(
        NODE,
        notify_address="127.0.0.1:5355",
        backend="hpke",
        hpke_pubkey=node_key.public_hex,
        jose_pubkey=None,
        signing_pubkey=None,
        zones=ZONES,
    )
    return store, identity, node_key


def add_key(store: Store, zone: str, flags: int = 256) -> int:
    key = generate_key(zone, 15, flags)
    store.add_key(
        zone,
        key_tag=key.key_tag,
        role="ZSK" if flags == 256 else "KSK",
        algorithm=15,
        flags=flags,
        private_pem=key.to_pkcs8_pem(),
    )
    return key.key_tag


def test_one_distribution_carries_every_zone_the_node_serves(kdc) -> None:  # type: ignore[no-untyped-def]
    store, identity, node_key = kdc
    tags = {(zone, add_key(store, zone, flags)) for zone in ZONES for flags in (256, 257)}
    add_key(store, "other.example.")  # not served by the node: not sent
    summary = distribute_node(store, identity, NODE, now=time.time())
    assert summary.zones == ZONES and summary.key_count == 6 and summary.nodes == (NODE,)
    (row,) = store.distributions(dist_id=summary.distribution_id)
    assert row.zone is None  # several zones
    wires = store.db.execute(
        "SELECT rdata FROM records WHERE distribution_id = ? ORDER BY sequence",
        (summary.distribution_id,),
    ).fetchall()
    records = [parse_chunk_wire(bytes(w[0]), CHUNK_TYPE) for w in wires]
    unpacked = unpack_distribution(
        summary.distribution_id,
        records[0],
        records[1:],
        NodeIdentity(dns.name.from_text(NODE), hpke=node_key),
        identity.signer.public_only(),
        now=time.time(),
    )
    payload = parse_payload(unpacked.plaintext, now=time.time())
    sent = {(e.zone.to_text(), e.key_tag) for e in payload.entries if isinstance(e, RollKey)}
    assert sent == tags
    states = {(k.zone, k.state) for k in store.keys(zone=None)}
    assert states == {*((z, "published") for z in ZONES), ("other.example.", "created")}


def test_refuses_zones_without_keys_and_stores_nothing(kdc) -> None:  # type: ignore[no-untyped-def]
    store, identity, _ = kdc
    add_key(store, "a.example.")
    with pytest.raises(StateError, match=r"without keys: b\.example\., c\.example\."):
        distribute_node(store, identity, NODE, now=time.time())
    assert store.distributions() == []
    assert all(k.state == "created" for k in store.keys(zone=None))


def test_refuses_a_zone_the_node_does_not_serve(kdc) -> None:  # type: ignore[no-untyped-def]
    store, identity, _ = kdc
    add_key(store, "other.example.")
    with pytest.raises(StateError, match=r"does not serve zone\(s\) other\.example\."):
        distribute_node(store, identity, NODE, zones=["other.example."], now=time.time())


def test_a_subset_of_the_zones_goes_alone(kdc) -> None:  # type: ignore[no-untyped-def]
    store, identity, _ = kdc
    add_key(store, "b.example.")
    summary = distribute_node(store, identity, NODE, zones=["b.example."], now=time.time())
    assert summary.zones == ("b.example.",) and summary.zone == "b.example."
    assert store.distributions()[0].zone == "b.example."


def test_the_cli_sends_all_zones_of_one_node_in_one_distribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")

    def kdc(*args: str) -> int:
        return main(["--state", state, "--json", *args])

    write_hpke_public(tmp_path / "node.pub", HpkeKey.generate())
    assert kdc("init", "--control-zone", "kdc.example.") == 0
    for zone in ZONES:
        kdc("zone", "add", zone)
        kdc("key", "generate", "--zone", zone, "--role", "CSK", "--algorithm", "15")
    zones = [a for z in ZONES for a in ("--zone", z)]
    node_pub = str(tmp_path / "node.pub")
    kdc("node", "add", NODE, "--notify", "127.0.0.1:9", "--hpke-pubkey", node_pub, *zones)
    capsys.readouterr()
    assert kdc("distribute", "--all-zones", "--node", NODE) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["zones"] == list(ZONES) and summary["key_count"] == 3
    assert kdc("distribute", "--all-zones") == 2  # which node?
    assert kdc("distribute", "--all-zones", "--node", NODE, "--zone", ZONES[0]) == 2
    assert kdc("distribute") == 2
    assert "--zone is required" in capsys.readouterr().err
