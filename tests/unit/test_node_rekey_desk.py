"""The node-key rotation UPDATE at the KDC (ours, docs/protocol.md section 10): what it must carry
to be taken, and that every refusal names why and records nothing; a repeat of the UPDATE that
was taken changes nothing; the first confirmation with the new key completes the rotation."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rcode
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from krs_plugin.confirmation import sign_report
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.enrollment import ede_text
from krs_plugin.kdc import noderekey
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.store import StateError, Store
from krs_plugin.payload import encode_payload, parse_payload, ping_entry
from krs_plugin.protocol import sig0
from krs_plugin.rekey import build_update, public_keys, request_body

CZ = dns.name.from_text("kdc.example.")
ZONE, NODE = "example.com.", "ns1.edge.example."


@dataclass
class Kdc:
    store: Store
    desk: noderekey.RekeyDesk
    identity: KdcIdentity
    sig0_key: Ed25519PrivateKey

    def send(self, wire: bytes) -> dns.message.Message:
        return dns.message.from_wire(self.desk.handle(wire, "127.0.0.1"))

    def rows(self) -> list[tuple[object, ...]]:
        db: sqlite3.Connection = self.store.db
        found = db.execute("SELECT * FROM nodes").fetchall()
        found += db.execute("SELECT * FROM node_rekey").fetchall()
        found += db.execute("SELECT id, node_id FROM distributions").fetchall()
        return [tuple(r) for r in found]


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Kdc]:
    store = Store(tmp_path / "kdc.db")
    store.add_zone(ZONE)
    key = generate_key(ZONE, 13, 257)
    store.add_key(ZONE, key_tag=key.key_tag, role="KSK", algorithm=13, flags=257,
                  private_pem=key.to_pkcs8_pem())  # fmt: skip
    current = Ed25519PrivateKey.generate()
    store.add_node(
        NODE,
        notify_address="127.0.0.1:5355",
        backend="hpke",
        hpke_pubkey=HpkeKey.generate().public_hex,
        jose_pubkey=None,
        signing_pubkey=json.dumps(JoseKey.generate().public_jwk),
        zones=[ZONE],
        sig0_pubkey=sig0.key_text(current, NODE),
    )
    identity = create_identity(tmp_path / "keys")
    desk = noderekey.RekeyDesk(store, identity, CZ, clock_skew=30.0)
    yield Kdc(store, desk, identity, current)
    store.close()


def body(*, now: float | None = None, backend: str = "hpke", owner: str = NODE,
         signer: JoseKey | None = None) -> tuple[dict[str, object], JoseKey]:  # fmt: skip
    signing = JoseKey.generate()
    key = HpkeKey.generate() if backend == "hpke" else JoseKey.generate()
    keys = public_keys(owner, backend, key, signing, Ed25519PrivateKey.generate())
    made = request_body(NODE, keys, signer or signing, now=now)
    return made, signing


def refused(kdc: Kdc, wire: bytes, why: str) -> None:
    before = kdc.rows()
    answer = kdc.send(wire)
    assert answer.rcode() == dns.rcode.REFUSED
    assert why in ede_text(answer), ede_text(answer)
    assert kdc.rows() == before


def test_a_stale_body_is_refused(kdc: Kdc) -> None:
    made, _ = body(now=time.time() - 120)
    refused(kdc, build_update(CZ, NODE, made, kdc.sig0_key), "from the KDC's clock")


def test_a_body_not_signed_by_the_new_signing_key_is_refused(kdc: Kdc) -> None:
    made, _ = body(signer=JoseKey.generate())
    refused(kdc, build_update(CZ, NODE, made, kdc.sig0_key), "signature")


def test_a_body_changed_after_signing_is_refused(kdc: Kdc) -> None:
    made, _ = body()
    made["hpke_pubkey"] = HpkeKey.generate().public_hex
    refused(kdc, build_update(CZ, NODE, made, kdc.sig0_key), "covers a different body")


def test_a_new_sig0_key_for_another_name_is_refused(kdc: Kdc) -> None:
    made, _ = body(owner="ns9.edge.example.")
    refused(kdc, build_update(CZ, NODE, made, kdc.sig0_key), "not for node")


def test_a_backend_the_kdc_does_not_seal_with_is_refused(kdc: Kdc) -> None:
    # Another backend the KDC knows is a move (krs rekey --backend; test_node_backend_move.py).
    made, signing = body()
    made = sign_report({**made, "backend": "hpke-pq2"}, signing)
    refused(kdc, build_update(CZ, NODE, made, kdc.sig0_key), "backend 'hpke-pq2' is not one of")


def test_a_node_the_kdc_does_not_know_is_refused(kdc: Kdc) -> None:
    made, signing = body()
    made = sign_report({**made, "node_id": "ns7.edge.example."}, signing)
    other = Ed25519PrivateKey.generate()
    refused(kdc, build_update(CZ, "ns7.edge.example.", made, other), "not enrolled")


def test_the_switch_then_a_repeat_then_completion(kdc: Kdc) -> None:
    made, _ = body()
    wire = build_update(CZ, NODE, made, kdc.sig0_key)
    assert kdc.send(wire).rcode() == dns.rcode.NOERROR
    node = kdc.store.require_node(NODE)
    assert node.hpke_pubkey == made["hpke_pubkey"] and node.signing_pubkey == made["signing_pubkey"]
    state = noderekey.state_of(kdc.store, node)
    assert state.state == "switched" and state.old_keys and state.rekeys == 1
    after_switch = kdc.rows()
    # The UPDATE again (its NOERROR lost): signed by the key before, naming the recorded keys.
    assert kdc.send(wire).rcode() == dns.rcode.NOERROR
    assert kdc.rows() == after_switch
    # The KDC does not ask a node whose rotation is under way.
    with pytest.raises(StateError, match="has not confirmed"):
        noderekey.request(kdc.store, kdc.identity, NODE, cause="operator", now=time.time())
    # Other new keys signed with the old SIG(0) key are not a repeat: refused.
    other, _ = body()
    refused(kdc, build_update(CZ, NODE, other, kdc.sig0_key), "SIG(0)")
    assert noderekey.confirmed(kdc.store, NODE, now=time.time())
    state = noderekey.state_of(kdc.store, kdc.store.require_node(NODE))
    assert state.state == "" and state.old_keys is None and state.completed_at
    # Completed: the old SIG(0) key signs nothing the KDC takes, not even the same UPDATE.
    refused(kdc, wire, "SIG(0)")


def test_the_rekey_field_of_a_ping_round_trips_and_is_typed() -> None:
    stamp = int(time.time())
    asked = ping_entry("n-1", distribution_id="6981284f", issued_at=stamp,
                       expires_at=stamp + 60, rekey=True)  # fmt: skip
    text = encode_payload([asked])
    assert b'"rekey":true' in text
    (parsed,) = parse_payload(text, now=stamp, expected_distribution_id="6981284f").entries
    assert parsed.rekey is True  # type: ignore[union-attr]
    plain = encode_payload([ping_entry("n-2")])
    assert b"rekey" not in plain
    with pytest.raises(Exception, match="rekey"):
        parse_payload(b'[{"operation":"ping","metadata":{"nonce":"n","rekey":"yes"}}]', now=stamp)


def test_a_request_whose_ping_expired_unanswered_is_made_again(kdc: Kdc) -> None:
    now = time.time()
    first = noderekey.request(kdc.store, kdc.identity, NODE, cause="operator", now=now)
    assert first is not None
    assert noderekey.request(kdc.store, kdc.identity, NODE, cause="operator", now=now + 60) is None
    later = now + noderekey.REQUEST_TTL + 1  # the node was down: the ping expired unanswered
    again = noderekey.request(kdc.store, kdc.identity, NODE, cause="operator", now=later)
    assert again is not None and again != first
    noderekey.set_every(kdc.store, 10)
    much_later = later + noderekey.REQUEST_TTL + 1
    assert noderekey.ask_due(kdc.store, kdc.identity, now=much_later) == [NODE]
    assert noderekey.state_of(kdc.store, kdc.store.require_node(NODE)).request_cause == "operator"
