"""The confirmation's ``served`` (ours, issue 22 item 2; docs/protocol.md section 6): what the
node read back from its server per zone. It fits one message for thousands of zones (cut, saying
how many zones it covers), the KDC refuses served data for a zone the distribution did not send,
and records what it takes per (distribution, node, zone)."""

from __future__ import annotations

import json

import dns.name
import dns.rcode
import pytest

from krs_plugin.adapters.base import ApplyResult
from krs_plugin.confirmation import (
    MAX_REPORT_BYTES,
    canonical_report,
    compact_report,
    confirmation_message,
    served_part,
)
from krs_plugin.crypto import JoseKey
from tests.unit import test_confirmation_binding as binding
from tests.unit.test_confirmation_binding import (
    ZONE,
    A,
    Kdc,
    applied,
    confirmation,
    refused,
    report_of,
)

kdc = binding.kdc  # the fixture: a zone with a KSK and a ZSK, nodes that sign their reports


def state(zone: str, tags: tuple[int, ...] = (12345, 54321)) -> dict[str, object]:
    """One zone's served entry as ``dnscheck.read_served`` makes it."""
    return {
        "zone": zone,
        "read_at": 1_800_000_000,
        "soa_serial": 2026120501,
        "soa_ttl": 3600,
        "soa_minimum": 300,
        "soa_rrsig_inception": 1_799_990_000,
        "soa_rrsig_expiration": 1_801_200_000,
        "dnskey": [[t, 13, 257 if i == 0 else 256] for i, t in enumerate(tags)],
        "dnskey_ttl": 3600,
        "dnskey_signers": [tags[0]],
        "soa_signers": list(tags[1:]),
    }


def served_report(zones: list[str]) -> dict[str, object]:
    keys = [{"zone_name": z, "key_id": str(t)} for z in zones for t in (12345, 54321)]
    results = [
        ApplyResult(dns.name.from_text(z), True, served=state(z)) for z in zones
    ]  # fmt: skip
    return {"node_id": A, "successful_keys": keys, "served": served_part("knot", results)}


def test_a_report_for_thousands_of_zones_fits_and_says_how_many_zones_served_covers() -> None:
    zones = [f"z{i:05d}.example." for i in range(5000)]
    report = {**served_report(zones), "distribution_id": "c0ffee01", "time": 1_800_000_000}
    assert len(canonical_report(report)) > 10 * MAX_REPORT_BYTES
    compact = compact_report(report)
    assert len(canonical_report(compact)) <= MAX_REPORT_BYTES
    served = compact["served"]
    assert isinstance(served, dict)
    assert served["zone_count"] == 5000
    kept = served["zones"]
    assert isinstance(kept, list) and 0 < len(kept) == served["covered"] < 5000
    assert [z["zone"] for z in kept] == zones[: len(kept)]  # in the distribution's order
    assert compact["successful_count"] == 10000
    # The served part keeps at least half of the room, whatever the keys need.
    assert len(json.dumps(kept, separators=(",", ":"))) >= MAX_REPORT_BYTES // 2 - 600
    # And the whole signed message still fits one DNS message.
    message = confirmation_message("c0ffee01", "kdc.example.", report, JoseKey.generate(),
                                   node_id=A, now=1_800_000_000)  # fmt: skip
    assert len(message.to_wire(max_size=0xFFFF)) < 0xFFFF


def test_a_report_that_fits_is_unchanged() -> None:
    report = served_report([ZONE])
    assert compact_report(report) == report
    served = report["served"]
    assert isinstance(served, dict) and served["zone_count"] == 1 and "covered" not in served


def test_an_adapter_without_a_server_says_served_data_is_absent() -> None:
    served = served_part("directory", [ApplyResult(dns.name.from_text(ZONE), True)])
    assert served["zones"] == [] and served["zone_count"] == 0
    assert served["absent"] == "the directory adapter has no server to read from"


def test_the_kdc_records_the_served_state_per_distribution_node_and_zone(kdc: Kdc) -> None:
    dist_id = kdc.distribute()
    body = {**applied(kdc.tags), "served": {"zones": [state(ZONE, tuple(kdc.tags))],
                                            "zone_count": 1}}  # fmt: skip
    assert kdc.send(confirmation(kdc, dist_id, report=body)) == dns.rcode.NOERROR
    (row,) = kdc.store.served_state(node_id=A, zone=ZONE, latest=True)
    assert (row.distribution_id, row.node_id, row.zone) == (dist_id, A, ZONE)
    assert (row.read_at, row.soa_serial) == (1_800_000_000, 2026120501)
    assert row.state["dnskey"] == [[kdc.tags[0], 13, 257], [kdc.tags[1], 13, 256]]
    assert kdc.store.served_state(dist_id=dist_id) == [row]


def test_served_data_naming_a_zone_the_distribution_did_not_send_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    dist_id = kdc.distribute()
    body = {
        **applied(kdc.tags),
        "served": {"zones": [state(ZONE), state("example.net.")], "zone_count": 2},
    }
    reason = refused(kdc, caplog, confirmation(kdc, dist_id, report=body), "127.0.0.1")
    assert (
        f"served data names zone example.net., which distribution {dist_id} did not send to {A}"
        in reason
    )
    assert kdc.store.served_state() == []


@pytest.mark.parametrize(
    ("served", "why"),
    [
        ("yes", "served is not an object with a list of zones"),
        ({"zones": [{"read_at": 1}]}, "an entry without a zone"),
        ({"zones": [{**state(ZONE), "soa_serial": "7"}]}, "soa_serial of example.com. is not"),
        ({"zones": [{**state(ZONE), "dnskey": "12345"}]}, "dnskey of example.com. is not a list"),
    ],
)
def test_malformed_served_data_is_refused(
    kdc: Kdc, caplog: pytest.LogCaptureFixture, served: object, why: str
) -> None:
    dist_id = kdc.distribute()
    body = {**applied(kdc.tags), "served": served}
    assert why in refused(kdc, caplog, confirmation(kdc, dist_id, report=body), "127.0.0.1")


def test_report_of_carries_served_as_sent(kdc: Kdc) -> None:
    body = {**applied(kdc.tags), "served": {"zones": [state(ZONE)], "zone_count": 1}}
    assert report_of(confirmation(kdc, "c0ffee01", report=body))["served"] == body["served"]
