"""What a signed confirmation is bound to (docs/protocol.md section 6): its distribution, its node,
the time it was sent and the keys that distribution sent; each mismatch is refused, logged with
its reason, and records nothing (issue 20, finding 1)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from krs_plugin.confirmation import (
    Expected,
    check_binding,
    confirmation_message,
    sign_report,
    verify_report,
)
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.errors import PolicyError, SignatureError
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.server import ControlZone
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import CHUNK_TYPE, find_chunk_option, notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS, ChunkOption

CZ = "kdc.example."
ZONE = "example.com."
A, B, C = "a.edge.example.", "b.edge.example.", "c.edge.example."
SKEW = 30.0


@dataclass
class Kdc:
    store: Store
    identity: KdcIdentity
    zone: ControlZone
    signers: dict[str, JoseKey]
    tags: list[int]

    def distribute(self, *nodes: str, now: float | None = None) -> str:
        summary = distribute_zone(
            self.store, self.identity, ZONE, node_ids=nodes or None, now=now or time.time()
        )
        return summary.distribution_id

    def status(self, dist_id: str) -> dict[str, str]:
        return {r.node_id: r.status for r in self.store.distributions(dist_id=dist_id)}

    def send(self, message: dns.message.Message, source: str = "127.0.0.1") -> int:
        wire = message.to_wire(max_size=0xFFFF)
        return int(self.zone.answer(dns.message.from_wire(wire), source).rcode())


def add_key(store: Store, flags: int) -> int:
    key = generate_key(ZONE, 13, flags)
    store.add_key(
        ZONE,
        key_tag=key.key_tag,
        role="ZSK" if flags == 256 else "KSK",
        algorithm=13,
        flags=flags,
        private_pem=key.to_pkcs8_pem(),
    )
    return key.key_tag


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Kdc]:
    """A zone with a KSK and a ZSK; nodes a and b sign their confirmations, c (tdns) does not."""
    store = Store(tmp_path / "kdc.db")
    store.add_zone(ZONE)
    tags = [add_key(store, 257), add_key(store, 256)]
    signers = {A: JoseKey.generate(), B: JoseKey.generate()}
    for node, address in ((A, "127.0.0.1"), (B, "127.0.0.2"), (C, "127.0.0.3")):
        signer = signers.get(node)
        store.add_node(
            node,
            notify_address=f"{address}:5355",
            backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex,
            jose_pubkey=None,
            signing_pubkey=json.dumps(signer.public_jwk) if signer else None,
            zones=[ZONE],
        )
    yield Kdc(store, create_identity(tmp_path / "keys"), ControlZone(store, CZ), signers, tags)
    store.close()


def applied(tags: list[int]) -> dict[str, object]:
    """The report the KRS's pipeline keeps for a distribution it applied."""
    return {"successful_keys": [{"zone_name": ZONE, "key_id": str(t)} for t in tags]}


def confirmation(
    kdc: Kdc,
    dist_id: str,
    node: str = A,
    *,
    report: dict[str, object] | None = None,
    signer: JoseKey | None = None,
    now: float | None = None,
) -> dns.message.Message:
    """The NOTIFY the KRS of ``node`` sends, built by the KRS's own code."""
    body = applied(kdc.tags) if report is None else report
    key = signer if signer is not None else kdc.signers.get(node)
    return confirmation_message(dist_id, CZ, body, key, node_id=node, now=now)


def raw_notify(dist_id: str, body: dict[str, object]) -> dns.message.Message:
    """A confirmation NOTIFY for ``dist_id`` carrying ``body`` as it is (a captured report)."""
    message = dns.message.make_query(
        notify_name(dist_id, CZ), dns.rdatatype.RdataType.make(CHUNK_TYPE)
    )
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags &= ~dns.flags.RD
    option = ChunkOption(CONTENT_KEY_STATUS, json.dumps(body).encode())
    message.use_edns(0, 0, 4096, options=[option])
    return message


def refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture, message: dns.message.Message, source: str
) -> str:
    """Send ``message``; require REFUSED and no change to any distribution; the logged reason."""
    before = kdc.store.distributions()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="krs_plugin.kdc.server"):
        assert kdc.send(message, source) == dns.rcode.REFUSED
    assert kdc.store.distributions() == before
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    return record.getMessage()


def report_of(message: dns.message.Message) -> dict[str, object]:
    option = find_chunk_option(dns.message.from_wire(message.to_wire()).options)
    assert option is not None
    loaded = json.loads(option.body)
    assert isinstance(loaded, dict)
    return loaded


# --- the KRS binds ----------------------------------------------------------------------------


def test_the_krs_binds_distribution_node_and_time_under_its_signature(kdc: Kdc) -> None:
    message = confirmation(kdc, "c0ffee01", now=1_800_000_000)
    report = report_of(message)
    assert report["distribution_id"] == "c0ffee01"
    assert report["node_id"] == A and report["time"] == 1_800_000_000
    assert report["successful_keys"] == applied(kdc.tags)["successful_keys"]
    verify_report(report, kdc.signers[A])  # the three are covered by the signature
    tampered = {**report, "distribution_id": "c0ffee02"}
    with pytest.raises(SignatureError, match="different report"):
        verify_report(tampered, kdc.signers[A])


def test_a_genuine_confirmation_is_recorded(kdc: Kdc) -> None:
    dist_id = kdc.distribute(A)
    assert kdc.send(confirmation(kdc, dist_id)) == dns.rcode.NOERROR
    assert kdc.status(dist_id) == {A: "confirmed"}
    assert kdc.store.sent_keys(dist_id, A) == {(ZONE, str(t)) for t in kdc.tags}


# --- each refusal reason ----------------------------------------------------------------------


def test_a_report_for_another_distribution_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    first = kdc.distribute(A)
    captured = report_of(confirmation(kdc, first))
    assert kdc.send(raw_notify(first, captured)) == dns.rcode.NOERROR
    second = kdc.distribute(A)
    reason = refused(kdc, caplog, raw_notify(second, captured), "127.0.0.9")
    assert f"is for distribution '{first}', the NOTIFY for {second}" in reason
    assert kdc.status(second) == {A: "pending"}


def test_a_signed_report_that_does_not_name_its_distribution_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    # What a KRS before this binding sent: a valid signature over node_id and the keys only.
    dist_id = kdc.distribute(A)
    old = sign_report({**applied(kdc.tags), "node_id": A}, kdc.signers[A])
    reason = refused(kdc, caplog, raw_notify(dist_id, old), "127.0.0.1")
    assert "does not name its distribution" in reason


def test_a_report_from_a_node_the_distribution_was_not_sent_to_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute(B)  # b only
    reason = refused(kdc, caplog, confirmation(kdc, dist_id, A), "127.0.0.1")
    assert f"names node '{A}', not a target of it" in reason
    assert kdc.status(dist_id) == {B: "pending"}


def test_a_report_naming_another_node_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    # a signs a report that claims to come from b: b's key does not verify it.
    dist_id = kdc.distribute()
    forged = confirmation(kdc, dist_id, B, signer=kdc.signers[A])
    assert "signature" in refused(kdc, caplog, forged, "127.0.0.2")
    assert kdc.status(dist_id) == {A: "pending", B: "pending", C: "pending"}


def test_binding_requires_the_node_the_signature_belongs_to() -> None:
    report = {"distribution_id": "c0ffee01", "node_id": B, "time": 1000, "successful_keys": []}
    expected = Expected("c0ffee01", A, 900, None)
    with pytest.raises(PolicyError, match=f"from node '{B}', not {A}"):
        check_binding(report, expected, now=1000, clock_skew=SKEW)
    check_binding({**report, "node_id": A.upper()}, expected, now=1000, clock_skew=SKEW)


@pytest.mark.parametrize(
    ("offset", "fragment"),
    [(-(SKEW + 30), "s old (allowed clock skew 30 s)"), (SKEW + 30, "s in the future")],
)
def test_a_stale_or_future_report_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture, offset: float, fragment: str
) -> None:
    dist_id = kdc.distribute(A, now=time.time() - 120)
    message = confirmation(kdc, dist_id, now=time.time() + offset)
    assert fragment in refused(kdc, caplog, message, "127.0.0.1")
    # within the skew it is taken
    assert kdc.send(confirmation(kdc, dist_id, now=time.time() - SKEW / 2)) == dns.rcode.NOERROR


def test_a_report_older_than_its_distribution_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    # The KDC's clock stepped back after it made the distribution: "now" is fresh, yet the
    # report's time is before the distribution existed.
    dist_id = kdc.distribute(A, now=time.time() + 3600)
    reason = refused(kdc, caplog, confirmation(kdc, dist_id), "127.0.0.1")
    assert f"before distribution {dist_id} was created" in reason


def test_a_report_without_time_is_refused() -> None:
    report = {"distribution_id": "c0ffee01", "node_id": A, "successful_keys": []}
    for stamp in (None, "1000", True, 1000.5):
        body = report if stamp is None else {**report, "time": stamp}
        with pytest.raises(PolicyError, match="no time"):
            check_binding(body, Expected("c0ffee01", A, 900, None), now=1000, clock_skew=SKEW)


@pytest.mark.parametrize("listed", ["successful_keys", "failed_keys"])
def test_a_report_naming_keys_the_distribution_did_not_send_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture, listed: str
) -> None:
    dist_id = kdc.distribute(A)
    later = add_key(kdc.store, 256)  # generated after the distribution: not in it
    entry = {"zone_name": ZONE, "key_id": str(later), "error": "x"}
    report = {**applied(kdc.tags[:1]), listed: [entry]}
    reason = refused(kdc, caplog, confirmation(kdc, dist_id, report=report), "127.0.0.1")
    assert f"names key {later} of {ZONE}, which distribution {dist_id} did not send to {A}" in (
        reason
    )
    other = {"successful_keys": [{"zone_name": "other.example.", "key_id": str(kdc.tags[0])}]}
    assert "did not send" in refused(
        kdc, caplog, confirmation(kdc, dist_id, report=other), "127.0.0.1"
    )
    malformed = {"successful_keys": [{"zone_name": ZONE}]}
    assert "malformed entry" in refused(
        kdc, caplog, confirmation(kdc, dist_id, report=malformed), "127.0.0.1"
    )
    assert kdc.status(dist_id) == {A: "pending"}


def test_a_subset_of_the_sent_keys_is_taken(kdc: Kdc) -> None:
    # A compacted report for thousands of zones lists only some of the keys.
    dist_id = kdc.distribute(A)
    report = {**applied(kdc.tags[:1]), "successful_count": 2}
    assert kdc.send(confirmation(kdc, dist_id, report=report)) == dns.rcode.NOERROR
    assert kdc.status(dist_id) == {A: "confirmed"}


# --- replays of a recorded confirmation -------------------------------------------------------


def test_a_recorded_confirmation_replayed_is_refused_and_a_retry_is_idempotent(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute(A)
    message = confirmation(kdc, dist_id)
    assert kdc.send(message) == dns.rcode.NOERROR
    recorded = kdc.store.distributions(dist_id=dist_id)

    # The same signed report again: a replay.
    assert "a replay of the report already recorded" in refused(kdc, caplog, message, "127.0.0.5")

    # The KRS's retry (its NOERROR was lost): the same report, signed again later. Taken,
    # nothing changes.
    again = confirmation(kdc, dist_id, now=time.time() + 1)
    assert kdc.send(again) == dns.rcode.NOERROR
    assert kdc.store.distributions(dist_id=dist_id) == recorded

    # A different outcome for a recorded distribution is refused.
    failed = {"failed_keys": [{"zone_name": ZONE, "key_id": str(kdc.tags[1]), "error": "x"}]}
    reason = refused(kdc, caplog, confirmation(kdc, dist_id, report=failed), "127.0.0.1")
    assert "already recorded as confirmed with a different report" in reason


# --- tdns nodes (no signing key): the source address only -------------------------------------


def test_an_unsigned_confirmation_is_known_by_its_source_address_only(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute(C)
    tdns = confirmation_message(dist_id, CZ, applied(kdc.tags), None)
    claimed = confirmation(kdc, dist_id, C)  # names c, unsigned, from elsewhere
    assert f"{C} has no signing key and 127.0.0.9 is not its address" in refused(
        kdc, caplog, claimed, "127.0.0.9"
    )
    assert "no target of it has that address" in refused(kdc, caplog, tdns, "127.0.0.9")
    assert kdc.send(tdns, "127.0.0.3") == dns.rcode.NOERROR
    assert kdc.status(dist_id) == {C: "confirmed"}


def test_a_signing_node_cannot_fall_back_to_an_unsigned_report(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute(A)
    unsigned = confirmation_message(dist_id, CZ, applied(kdc.tags), None)  # from a's address
    assert "not signed" in refused(kdc, caplog, unsigned, "127.0.0.1")
