"""Failure reports (issue 21, item 2): a KRS that rejects a distribution or fails to apply it says
so to the KDC, signed and bound like a confirmation (docs/protocol.md section 6); the KDC records
``failed`` with the stage and the node's reason, lets a newer report replace a failure, and keeps
``confirmed`` final."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.name
import dns.rcode
import pytest

from krs_plugin.confirmation import (
    MAX_ERROR_CHARS,
    MAX_REPORT_BYTES,
    Expected,
    Failure,
    canonical_report,
    check_binding,
    clip,
    compact_report,
    confirmation_message,
    failure_of,
    failure_report,
)
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.errors import PolicyError
from krs_plugin.kdc.distribute import distribute_node, distribute_zone
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.server import ControlZone
from krs_plugin.kdc.store import Store, node_state
from krs_plugin.receiver.pipeline import Pipeline
from krs_plugin.receiver.store import ReceiverStore

CZ = "kdc.example."
ZONE, OTHER = "example.com.", "example.net."
NODE = "ns1.edge.example."
SKEW = 30.0


# --- building the report (the KRS) ------------------------------------------------------------


def test_a_failure_report_names_every_key_with_the_outcome_stage_and_error() -> None:
    report = failure_report(NODE, "rejected", "policy", "zone not served", [(ZONE, 12345)])
    assert report == {
        "node_id": NODE,
        "successful_keys": [],
        "failed_keys": [{"zone_name": ZONE, "key_id": "12345", "error": "zone not served"}],
        "outcome": "rejected",
        "stage": "policy",
        "error": "zone not served",
    }
    assert failure_report(NODE, "failed", "apply", "x")["failed_keys"] == []  # keys unknown
    with pytest.raises(ValueError, match="not a failure"):
        failure_report(NODE, "applied", "done", "x")
    with pytest.raises(ValueError, match="not a failure"):
        failure_report(NODE, "failed", "nowhere", "x")


def test_a_long_error_is_cut_and_kept_on_one_line() -> None:
    text = "first line\nsecond\tline\x1b[31m" + "x" * 5000
    report = failure_report(NODE, "failed", "apply", text, [(ZONE, 1)])
    error = report["error"]
    assert isinstance(error, str) and len(error) == MAX_ERROR_CHARS and error.endswith("...")
    assert error.startswith("first line second line [31m") and error.isprintable()
    (entry,) = report["failed_keys"]  # type: ignore[misc]
    assert len(entry["error"]) == 200
    assert clip("short", 10) == "short"


def test_a_failure_report_for_thousands_of_zones_fits_one_message() -> None:
    # 10,000 zones with two keys each, and an error of non-ASCII text (6 bytes each in JSON).
    keys = [(f"z{i}.example.", tag) for i in range(10_000) for tag in (1000 + i, 30000 + i)]
    report = failure_report(NODE, "failed", "apply", "é\u2028" * 50_000, keys)
    compact = compact_report({**report, "distribution_id": "c0ffee01", "time": 1})
    assert len(canonical_report(compact)) <= MAX_REPORT_BYTES
    assert compact["failed_count"] == 20_000 and compact["outcome"] == "failed"
    assert 0 < len(compact["failed_keys"]) < 20_000  # type: ignore[arg-type]
    message = confirmation_message("c0ffee01", CZ, report, JoseKey.generate(), node_id=NODE)
    assert len(message.to_wire(max_size=0xFFFF)) <= 0xFFFF


def test_the_krs_reports_no_fetch_failure_and_no_keyless_failure_without_signing() -> None:
    def pipeline(signing: object) -> SimpleNamespace:
        config = SimpleNamespace(
            keys=SimpleNamespace(signing=signing), node_id=dns.name.from_text(NODE)
        )
        # no KDC key and an empty krs.db: the report's kdc_keys (ours) is []
        return SimpleNamespace(config=config, verifier=None, store=SimpleNamespace(db=memory))

    memory = sqlite3.connect(":memory:")

    report = Pipeline.failure_report
    assert report(pipeline(Path("s.key")), "failed", "fetch", "down") is None  # type: ignore[arg-type]
    # A tdns KDC takes a report without failed_keys for a success: only a signing node (ours)
    # sends one.
    assert report(pipeline(None), "rejected", "signature", "bad") is None  # type: ignore[arg-type]
    sent = report(pipeline(Path("s.key")), "rejected", "signature", "bad")  # type: ignore[arg-type]
    assert sent is not None and sent["failed_keys"] == [] and sent["stage"] == "signature"


# --- reading it (the KDC) ---------------------------------------------------------------------


def test_the_kdc_reads_ours_and_tdns_failures_and_takes_the_rest_for_success() -> None:
    assert failure_of({"successful_keys": [{"zone_name": ZONE, "key_id": "1"}]}) is None
    ours = failure_report(NODE, "rejected", "policy", "zone not served", [(ZONE, 1)])
    assert failure_of(ours) == Failure("rejected", "policy", "zone not served")
    tdns = {"failed_keys": [{"zone_name": ZONE, "key_id": "1", "error": "no such zone"}]}
    assert failure_of(tdns) == Failure("failed", None, "no such zone")
    assert failure_of({"failed_keys": [{"zone_name": ZONE}]}) == Failure(
        "failed", None, "1 key(s) failed"
    )
    odd = {"outcome": "failed", "stage": "moon", "error": "a\nb"}
    assert failure_of(odd) == Failure("failed", None, "a b")


@pytest.mark.parametrize(
    ("member", "value", "reason"),
    [
        ("outcome", "applied", "outcome 'applied' is not rejected or failed"),
        ("stage", "moon", "stage 'moon' is not one of"),
        ("error", 42, "error is not text"),
    ],
)
def test_binding_refuses_failure_members_our_krs_does_not_send(
    member: str, value: object, reason: str
) -> None:
    report = {"distribution_id": "c0ffee01", "node_id": NODE, "time": 1000, member: value}
    with pytest.raises(PolicyError, match=reason):
        check_binding(report, Expected("c0ffee01", NODE, 900, None), now=1000, clock_skew=SKEW)


@dataclass
class Kdc:
    store: Store
    identity: KdcIdentity
    zone: ControlZone
    signer: JoseKey
    tags: list[int]

    def distribute(self, zone: str = ZONE) -> str:
        return distribute_zone(self.store, self.identity, zone, now=time.time()).distribution_id

    def send(self, dist_id: str, report: dict[str, object], *, signer: JoseKey | None = None,
             now: float | None = None) -> int:  # fmt: skip
        message = confirmation_message(
            dist_id, CZ, report, signer or self.signer, node_id=NODE, now=now
        )
        query = dns.message.from_wire(message.to_wire(max_size=0xFFFF))
        return int(self.zone.answer(query, "127.0.0.1").rcode())

    def row(self, dist_id: str) -> tuple[str, str | None, str | None]:
        (r,) = self.store.distributions(dist_id=dist_id)
        return r.status, r.stage, r.error


def add_key(store: Store, zone: str, flags: int) -> int:
    key = generate_key(zone, 13, flags)
    store.add_key(
        zone,
        key_tag=key.key_tag,
        role="ZSK" if flags == 256 else "KSK",
        algorithm=13,
        flags=flags,
        private_pem=key.to_pkcs8_pem(),
    )
    return key.key_tag


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Kdc]:
    store = Store(tmp_path / "kdc.db")
    for zone in (ZONE, OTHER):
        store.add_zone(zone)
    tags = [add_key(store, ZONE, 257), add_key(store, ZONE, 256)]
    add_key(store, OTHER, 257)
    signer = JoseKey.generate()
    store.add_node(
        NODE,
        notify_address="127.0.0.1:5355",
        backend="hpke",
        hpke_pubkey=HpkeKey.generate().public_hex,
        jose_pubkey=None,
        signing_pubkey=json.dumps(signer.public_jwk),
        zones=[ZONE, OTHER],
    )
    yield Kdc(store, create_identity(tmp_path / "keys"), ControlZone(store, CZ), signer, tags)
    store.close()


def failed(kdc: Kdc, error: str = "zone not served", stage: str = "policy") -> dict[str, object]:
    outcome = "failed" if stage == "apply" else "rejected"
    return failure_report(NODE, outcome, stage, error, [(ZONE, t) for t in kdc.tags])


def success(kdc: Kdc) -> dict[str, object]:
    return {"node_id": NODE, "successful_keys": [{"zone_name": ZONE, "key_id": str(t)}
                                                 for t in kdc.tags]}  # fmt: skip


def test_a_failure_report_is_recorded_failed_with_stage_and_reason_and_logged(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute()
    with caplog.at_level(logging.WARNING, logger="krs_plugin.kdc.server"):
        assert kdc.send(dist_id, failed(kdc)) == dns.rcode.NOERROR
    assert kdc.row(dist_id) == ("failed", "policy", "zone not served")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"distribution {dist_id} for {NODE} failed (rejected at policy): zone not served"
    # Still published until it expires: the node tries a failed apply again.
    assert dist_id in kdc.store.published_ids(NODE)


def test_a_newer_report_replaces_a_failure_and_confirmed_is_final(kdc: Kdc) -> None:
    dist_id = kdc.distribute()
    first = failed(kdc, "server down", "apply")
    assert kdc.send(dist_id, first, now=time.time() - 10) == dns.rcode.NOERROR
    # The same report signed again later (a lost NOERROR): taken, nothing changes.
    assert kdc.send(dist_id, first) == dns.rcode.NOERROR
    assert kdc.row(dist_id) == ("failed", "apply", "server down")
    # The node tried again and failed otherwise: the newer report replaces the first...
    assert kdc.send(dist_id, failed(kdc, "disk full", "apply")) == dns.rcode.NOERROR
    assert kdc.row(dist_id) == ("failed", "apply", "disk full")
    # ...and one sent before it, arriving late, does not.
    late = failed(kdc, "server slow", "apply")
    assert kdc.send(dist_id, late, now=time.time() - 5) == dns.rcode.REFUSED
    assert kdc.row(dist_id) == ("failed", "apply", "disk full")
    # Then it succeeded: confirmed, the failure cleared.
    assert kdc.send(dist_id, success(kdc)) == dns.rcode.NOERROR
    assert kdc.row(dist_id) == ("confirmed", None, None)
    (row,) = kdc.store.distributions(dist_id=dist_id)
    assert row.confirmed_at is not None and row.failed_at is None
    # A failure after a confirmation is refused: confirmed is final.
    assert kdc.send(dist_id, failed(kdc, "later", "apply")) == dns.rcode.REFUSED
    assert kdc.row(dist_id)[0] == "confirmed"


def test_a_forged_or_unbound_failure_report_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute()
    with caplog.at_level(logging.WARNING, logger="krs_plugin.kdc.server"):
        # Signed by another key.
        assert kdc.send(dist_id, failed(kdc), signer=JoseKey.generate()) == dns.rcode.REFUSED
        # Naming a key the distribution did not send.
        unsent = failure_report(NODE, "failed", "apply", "x", [(ZONE, 1)])
        assert kdc.send(dist_id, unsent) == dns.rcode.REFUSED
        # For a distribution that does not exist.
        assert kdc.send("c0ffee01", failed(kdc)) == dns.rcode.REFUSED
    assert kdc.row(dist_id) == ("pending", None, None)
    text = caplog.text
    assert "signature" in text and "did not send" in text and "unknown distribution" in text


def test_a_recorded_failure_report_replayed_is_refused(kdc: Kdc) -> None:
    dist_id = kdc.distribute()
    message = confirmation_message(dist_id, CZ, failed(kdc), kdc.signer, node_id=NODE)
    wire = message.to_wire(max_size=0xFFFF)
    answer = kdc.zone.answer(dns.message.from_wire(wire), "127.0.0.1")
    assert answer.rcode() == dns.rcode.NOERROR
    again = kdc.zone.answer(dns.message.from_wire(wire), "127.0.0.9")
    assert again.rcode() == dns.rcode.REFUSED
    assert kdc.row(dist_id) == ("failed", "policy", "zone not served")


# --- what a node holds (node show, node list) -------------------------------------------------


def test_node_show_lists_the_keys_of_the_newest_confirmed_distribution_deletions_too(
    kdc: Kdc,
) -> None:
    first = kdc.distribute()
    assert kdc.send(first, success(kdc)) == dns.rcode.NOERROR
    states = kdc.store.zone_states(NODE)[NODE]
    assert [(s.zone, s.distribution and s.distribution.id) for s in states] == [
        (ZONE, first),
        (OTHER, None),
    ]
    assert node_state(states) == "ok"
    held = kdc.store.held_keys(NODE)
    assert {(k.zone, k.key_tag, k.role, k.algorithm, k.deleted) for k in held} == {
        (ZONE, kdc.tags[0], "KSK", 13, False),
        (ZONE, kdc.tags[1], "ZSK", 13, False),
    }

    # The ZSK is removed and a new one sent; the node has not confirmed yet: it still holds
    # what it confirmed, and the zone's newest distribution is pending.
    old_zsk = kdc.store.require_key(ZONE, kdc.tags[1])
    kdc.store.set_key_state(old_zsk.id, "removed")
    new_zsk = add_key(kdc.store, ZONE, 256)
    second = kdc.distribute()
    assert {k.distribution_id for k in kdc.store.held_keys(NODE)} == {first}
    assert node_state(kdc.store.zone_states(NODE)[NODE]) == "pending"

    report = {"node_id": NODE, "successful_keys": [
        {"zone_name": ZONE, "key_id": str(t)} for t in (*kdc.tags, new_zsk)]}  # fmt: skip
    assert kdc.send(second, report) == dns.rcode.NOERROR
    held = kdc.store.held_keys(NODE)
    assert {(k.key_tag, k.deleted, k.distribution_id) for k in held} == {
        (kdc.tags[0], False, second),
        (new_zsk, False, second),
        (kdc.tags[1], True, second),
    }
    assert kdc.store.last_contact(NODE) is not None


def test_node_state_is_the_worst_of_its_zones(kdc: Kdc) -> None:
    assert node_state(kdc.store.zone_states(NODE)[NODE]) == "none"
    one = kdc.distribute()
    kdc.distribute(OTHER)
    assert kdc.send(one, success(kdc)) == dns.rcode.NOERROR
    assert node_state(kdc.store.zone_states()[NODE]) == "pending"  # OTHER waits
    both = distribute_node(kdc.store, kdc.identity, NODE, now=time.time()).distribution_id
    assert kdc.send(both, failed(kdc)) == dns.rcode.NOERROR
    states = kdc.store.zone_states(NODE)[NODE]
    assert {s.zone: s.distribution and s.distribution.id for s in states} == {
        ZONE: both,
        OTHER: both,
    }
    assert node_state(states) == "failed"
    failure = kdc.store.last_failure(NODE)
    assert failure is not None and (failure.id, failure.stage) == (both, "policy")


# --- the KRS's queue ----------------------------------------------------------------------------


def test_the_krs_queues_a_failure_once_and_a_later_success_replaces_it(tmp_path: Path) -> None:
    store = ReceiverStore(tmp_path / "krs.db")
    report = failure_report(NODE, "failed", "apply", "server down", [(ZONE, 1)])

    def record(r: dict[str, object]) -> None:
        store.record_outcome("c0ffee01", CZ, 0xC0FFEE01, "failed", stage="apply", report=r)

    record(report)
    ((dist_id, queued, attempts),) = store.due_confirmations(time.time() + 1)
    assert (dist_id, queued, attempts) == ("c0ffee01", report, 0)
    store.confirmation_attempted("c0ffee01", acknowledged=True, next_at=time.time())
    # Tried again at the next poll, failing the same way: the KDC has heard it, nothing queued.
    record(report)
    assert store.due_confirmations(time.time() + 1) == []
    # Failing otherwise: the newer report is queued.
    other = failure_report(NODE, "failed", "apply", "disk full", [(ZONE, 1)])
    record(other)
    assert [q for _, q, _ in store.due_confirmations(time.time() + 1)] == [other]
    # It succeeds: the success replaces the queued failure.
    ok = {"node_id": NODE, "successful_keys": [{"zone_name": ZONE, "key_id": "1"}]}
    store.record_applied("c0ffee01", CZ, 0xC0FFEE01, [(ZONE, 1, 13, 256)], [], ok)
    assert [q for _, q, _ in store.due_confirmations(time.time() + 1)] == [ok]
    # A replay of the applied distribution, refused, never queues a failure over the success.
    refusal = failure_report(NODE, "rejected", "policy", "already applied (replay)", [(ZONE, 1)])
    store.record_outcome("c0ffee01", CZ, 0xC0FFEE01, "rejected", stage="policy", report=refusal)
    assert [q for _, q, _ in store.due_confirmations(time.time() + 1)] == [ok]
    assert store.seen("c0ffee01").outcome == "applied"  # type: ignore[union-attr]
    store.close()
