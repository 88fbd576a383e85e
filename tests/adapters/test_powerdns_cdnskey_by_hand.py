"""A CDNSKEY left at a PowerDNS zone's apex by hand (no CDS) is caught by a batch's
verification, which asks every zone for CDNSKEY as well as CDS, against a real pdns_server
(docs/servers/powerdns.md, "Many zones in one distribution"). The question cannot be spared by
the CDS answer's signed NSEC: pdns_server 4.7.3 serves and signs the CDNSKEY it stores while its
apex NSEC does not list the type (docs/benchmarks.md, "PowerDNS: verified while written")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from krs_lab.powerdns import PowerDnsLab
from krs_plugin.adapters import dnscheck
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.powerdns import PowerDnsAdapter
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.errors import AdapterError
from tests.adapters.test_scenarios import key, now_timing

pytestmark = pytest.mark.integration

HAND = "hand.example."  # a CDNSKEY set by hand, no CDS


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PowerDnsLab]:
    server = PowerDnsLab(tmp_path / "pdns", (HAND,))
    server.start()
    try:
        cdnskey = key("KSK", HAND).dnskey.to_text()
        done = server.pdnsutil("replace-rrset", HAND, "@", "CDNSKEY", "3600", cdnskey)
        assert done.returncode == 0, done.stderr
        server.pdns_control("purge")
        yield server
    finally:
        server.stop()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dns.name.Name, int]]:
    """Every question a batch's look sends (dnscheck's pipelined queries)."""
    questions: list[tuple[dns.name.Name, int]] = []
    real = dnscheck.query_many_reduced

    def noting(qs: Any, *args: Any, **kwargs: Any) -> Any:
        questions.extend(qs)
        return real(qs, *args, **kwargs)

    monkeypatch.setattr(dnscheck, "query_many_reduced", noting)
    return questions


def apply(lab: PowerDnsLab, zone: str) -> Any:
    settings = lab.adapter_settings()
    adapter = PowerDnsAdapter(
        {
            "method": "api",
            "api_url": settings["api_url"],
            "api_key_file": settings["api_key_file"],
            "server": settings["server"],
            "verify_timeout": 3,
        },
        zones=[dns.name.from_text(zone)],
    )
    plan = KeyPlan(
        dns.name.from_text(zone),
        (
            PlannedKey(key("KSK", zone), "KSK", now_timing()),
            PlannedKey(key("ZSK", zone), "ZSK", now_timing()),
        ),
    )
    return apply_atomically(adapter, [plan])


def cdnskey_served(lab: PowerDnsLab, zone: str) -> list[str]:
    reply = dns.query.tcp(
        dns.message.make_query(zone, dns.rdatatype.CDNSKEY, want_dnssec=True),
        lab.host,
        port=lab.port,
        timeout=5,
    )
    return [r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.CDNSKEY
            for r in rrset]  # fmt: skip


def test_a_cdnskey_left_by_hand_is_asked_and_caught_though_the_nsec_omits_it(
    lab: PowerDnsLab, asked: list[tuple[dns.name.Name, int]]
) -> None:
    with pytest.raises(AdapterError, match=r"CDNSKEY \[.*\] served, none expected.*rolled back"):
        apply(lab, HAND)
    assert (dns.name.from_text(HAND), dns.rdatatype.CDNSKEY) in asked
    assert lab.cryptokeys(HAND) == []
    assert len(cdnskey_served(lab, HAND)) == 1  # left as the operator put it
