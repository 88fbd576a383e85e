"""krs-kdc commands without the server: key lifecycle in what nodes receive, and zone export."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from krs_plugin.crypto import HpkeKey, load_jose_key, write_hpke_public
from krs_plugin.kdc.store import Store
from krs_plugin.payload import DeleteKey, RollKey, parse_payload
from krs_plugin.protocol import CHUNK_TYPE, manifest_name, parse_chunk_wire
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

KDC = str(Path(sys.executable).parent / "krs-kdc")
CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."


def kdc(state: Path, *args: str) -> dict | list:  # type: ignore[type-arg]
    result = subprocess.run(
        [KDC, "--state", str(state), "--json", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, HpkeKey]:
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    st = tmp_path / "state"
    kdc(st, "init", "--control-zone", CZ)
    kdc(st, "zone", "add", ZONE)
    kdc(
        st,
        "node",
        "add",
        NODE,
        "--notify",
        "127.0.0.1:9",
        "--hpke-pubkey",
        str(tmp_path / "node.pub"),
        "--zone",
        ZONE,
    )
    return st, node


def received(st: Path, node: HpkeKey, dist_id: str) -> list[object]:
    store = Store(st / "kdc.db")
    wires = [store.record(dist_id, NODE, i) for i in range(0, 64)]
    records = [parse_chunk_wire(w, CHUNK_TYPE) for w in wires if w is not None]
    store.close()
    identity = NodeIdentity(dns.name.from_text(NODE), hpke=node)
    verifier = load_jose_key(st / "keys" / "kdc.signing.pubkey")
    unpacked = unpack_distribution(
        dist_id, records[0], records[1:], identity, verifier, now=time.time()
    )
    return list(parse_payload(unpacked.plaintext, now=time.time()).entries)


def test_rollover_steps_reach_the_node_as_timing_and_deletion(state) -> None:
    st, node = state
    old = kdc(st, "key", "generate", "--zone", ZONE, "--role", "ZSK")
    new = kdc(st, "key", "generate", "--zone", ZONE, "--role", "ZSK", "--algorithm", "15")
    first = received(st, node, kdc(st, "distribute", "--zone", ZONE)["distribution_id"])
    assert {e.key_tag for e in first} == {old["key_tag"], new["key_tag"]}  # type: ignore[attr-defined]
    assert {k["state"] for k in kdc(st, "key", "list")} == {"published"}  # type: ignore[index]

    kdc(st, "key", "retire", "--zone", ZONE, "--tag", str(old["key_tag"]))
    second = received(st, node, kdc(st, "distribute", "--zone", ZONE)["distribution_id"])
    retired = next(e for e in second if e.key_tag == old["key_tag"])  # type: ignore[attr-defined]
    assert isinstance(retired, RollKey) and retired.timing is not None
    assert retired.timing.inactive is not None

    kdc(st, "key", "remove", "--zone", ZONE, "--tag", str(old["key_tag"]))
    third = received(st, node, kdc(st, "distribute", "--zone", ZONE)["distribution_id"])
    kinds = {(type(e).__name__, e.key_tag) for e in third}  # type: ignore[attr-defined]
    assert kinds == {("DeleteKey", old["key_tag"]), ("RollKey", new["key_tag"])}
    assert any(isinstance(e, DeleteKey) for e in third)


def test_export_is_a_zone_file_that_serves_the_same_records(state) -> None:
    st, _ = state
    kdc(st, "key", "generate", "--zone", ZONE, "--role", "CSK")
    dist_id = kdc(st, "distribute", "--zone", ZONE, "--chunk-size", "500")["distribution_id"]
    out = subprocess.run(
        [KDC, "--state", str(st), "export"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert f"TYPE{CHUNK_TYPE} \\# " in out
    zone = dns.zone.from_text(out, origin=CZ, relativize=False)
    owner = manifest_name(NODE, dist_id, CZ)
    served = zone.find_rdataset(owner, dns.rdatatype.RdataType.make(CHUNK_TYPE))[0]
    store = Store(st / "kdc.db")
    assert served.to_wire() == store.record(dist_id, NODE, 0)
    store.close()
    assert zone.find_rdataset(CZ, dns.rdatatype.SOA)
