"""The resync request (ours, docs/protocol.md section 9) at the KDC: a node asks for its keys
again with a NOTIFY signed by its enrolled signing key, and gets one new distribution of its keys
for all its zones; a forged, unsigned, stale or too frequent request, or one in the name of a
node without a signing key, is refused with a logged reason and makes no distribution."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from krs_plugin.confirmation import canonical_report
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.resync import REFUSALS_LOGGED, ResyncDesk
from krs_plugin.kdc.server import ControlZone
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import CHUNK_TYPE, notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS, CONTENT_RESYNC, ChunkOption
from krs_plugin.resync import resync_message, resync_name

CZ = "kdc.example."
ZONES = ("example.com.", "example.net.")
SIGNED, TDNS = "a.edge.example.", "t.edge.example."


@dataclass
class Kdc:
    store: Store
    zone: ControlZone
    signer: JoseKey
    identity: KdcIdentity

    def send(self, message: dns.message.Message) -> int:
        wire = message.to_wire(max_size=0xFFFF)
        return int(self.zone.answer(dns.message.from_wire(wire), "127.0.0.1").rcode())

    def distributions(self, node: str = SIGNED) -> list[str]:
        return [r.id for r in self.store.distributions() if r.node_id == node]


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Kdc]:
    store = Store(tmp_path / "kdc.db")
    for zone in ZONES:
        store.add_zone(zone)
        for flags in (257, 256):
            key = generate_key(zone, 13, flags)
            store.add_key(
                zone,
                key_tag=key.key_tag,
                role="KSK" if flags == 257 else "ZSK",
                algorithm=13,
                flags=flags,
                private_pem=key.to_pkcs8_pem(),
            )
    signer = JoseKey.generate()
    for node, key in ((SIGNED, signer), (TDNS, None)):
        store.add_node(
            node,
            notify_address="127.0.0.1:5355",
            backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex,
            jose_pubkey=None,
            signing_pubkey=json.dumps(key.public_jwk) if key else None,
            zones=list(ZONES),
        )
    identity = create_identity(tmp_path / "keys")
    desk = ResyncDesk(store, identity, clock_skew=30.0)
    yield Kdc(store, ControlZone(store, CZ, resync=desk), signer, identity)
    store.close()


def request(
    signer: JoseKey, node: str = SIGNED, *, now: float | None = None
) -> dns.message.Message:
    return resync_message(node, CZ, ["example.com."], "key folder emptied", signer, now=now)


def raw_request(body: dict[str, object]) -> dns.message.Message:
    message = dns.message.make_query(resync_name(CZ), dns.rdatatype.RdataType.make(CHUNK_TYPE))
    message.set_opcode(dns.opcode.NOTIFY)
    option = ChunkOption(CONTENT_RESYNC, json.dumps(body).encode())
    message.use_edns(0, 0, 4096, options=[option])
    return message


def test_signed_request_makes_one_distribution_of_every_zone_of_the_node(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert kdc.send(request(kdc.signer)) == dns.rcode.NOERROR
    made = kdc.distributions()
    assert len(made) == 1
    sent = kdc.store.sent_keys(made[0], SIGNED)
    assert sent is not None
    assert {zone for zone, _ in sent} == set(ZONES)
    assert kdc.store.distributions(dist_id=made[0])[0].status == "pending"  # NOTIFY loop sends it
    assert f"resync request from node {SIGNED}" in caplog.text
    assert "key folder emptied" in caplog.text
    assert made[0] in caplog.text


def test_request_signed_by_another_key_is_refused_and_makes_nothing(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    assert kdc.send(request(JoseKey.generate())) == dns.rcode.REFUSED
    assert kdc.distributions() == []
    assert "refused" in caplog.text


def test_unsigned_request_is_refused(kdc: Kdc, caplog: pytest.LogCaptureFixture) -> None:
    body = {"node_id": SIGNED, "time": int(time.time()), "reason": "x", "zones": []}
    assert kdc.send(raw_request(body)) == dns.rcode.REFUSED
    assert kdc.distributions() == []
    assert "not signed" in caplog.text


def test_request_with_a_signature_that_is_not_ascii_is_refused(kdc: Kdc) -> None:
    body = {"node_id": SIGNED, "time": int(time.time()), "reason": "x", "zones": []}
    assert kdc.send(raw_request({**body, "signature": "é.b.c"})) == dns.rcode.REFUSED
    assert kdc.distributions() == []


def test_confirmation_with_a_signature_that_is_not_ascii_is_refused(kdc: Kdc) -> None:
    """The same check in jws_verify: before, UnicodeEncodeError escaped the KDC's handler."""
    dist_id = distribute_zone(kdc.store, kdc.identity, ZONES[0], node_ids=[SIGNED],
                              now=time.time()).distribution_id  # fmt: skip
    report = {"distribution_id": dist_id, "node_id": SIGNED, "time": int(time.time()),
              "successful_keys": [], "signature": "é.b.c"}  # fmt: skip
    message = dns.message.make_query(
        notify_name(dist_id, CZ), dns.rdatatype.RdataType.make(CHUNK_TYPE)
    )
    message.set_opcode(dns.opcode.NOTIFY)
    message.use_edns(
        0, 0, 4096, options=[ChunkOption(CONTENT_KEY_STATUS, json.dumps(report).encode())]
    )
    assert kdc.send(message) == dns.rcode.REFUSED
    assert kdc.store.distributions(dist_id=dist_id)[0].status == "pending"


def test_altered_request_is_refused(kdc: Kdc) -> None:
    message = request(kdc.signer)
    option = message.options[0]
    assert isinstance(option, ChunkOption)
    body = json.loads(option.body)
    body["node_id"] = TDNS  # another node named under this node's signature
    assert kdc.send(raw_request(body)) == dns.rcode.REFUSED
    body["node_id"] = SIGNED
    body["reason"] = "changed on the way"
    assert canonical_report(body) != canonical_report(json.loads(option.body))
    assert kdc.send(raw_request(body)) == dns.rcode.REFUSED
    assert kdc.distributions() == [] and kdc.distributions(TDNS) == []


def test_stale_or_future_request_is_refused(kdc: Kdc, caplog: pytest.LogCaptureFixture) -> None:
    assert kdc.send(request(kdc.signer, now=time.time() - 120)) == dns.rcode.REFUSED
    assert kdc.send(request(kdc.signer, now=time.time() + 120)) == dns.rcode.REFUSED
    assert kdc.distributions() == []
    assert "clock skew" in caplog.text


def test_second_request_within_a_minute_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    assert kdc.send(request(kdc.signer)) == dns.rcode.NOERROR
    assert kdc.send(request(kdc.signer)) == dns.rcode.REFUSED
    assert len(kdc.distributions()) == 1
    assert "rate limited" in caplog.text


def test_node_without_signing_key_cannot_ask(kdc: Kdc, caplog: pytest.LogCaptureFixture) -> None:
    assert kdc.send(request(JoseKey.generate(), TDNS)) == dns.rcode.REFUSED
    assert kdc.distributions(TDNS) == []
    assert "no signing key" in caplog.text


def test_unknown_node_and_malformed_body_are_refused(kdc: Kdc) -> None:
    assert kdc.send(request(kdc.signer, "stranger.example.")) == dns.rcode.REFUSED
    message = raw_request({})
    message.use_edns(0, 0, 4096, options=[ChunkOption(CONTENT_RESYNC, b"not json")])
    assert kdc.send(message) == dns.rcode.REFUSED
    assert kdc.store.distributions() == []


def test_a_flood_of_forged_requests_is_counted_not_logged_one_by_one(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    forger = JoseKey.generate()
    for _ in range(50):
        assert kdc.send(request(forger)) == dns.rcode.REFUSED
    assert caplog.text.count("refused: resync request signature") == REFUSALS_LOGGED
    desk = kdc.zone.resync
    assert desk is not None
    desk._window -= 61  # a minute later
    assert kdc.send(request(forger)) == dns.rcode.REFUSED
    assert f"{50 - REFUSALS_LOGGED} more resync request(s) refused in a minute" in caplog.text
    assert kdc.distributions() == []
