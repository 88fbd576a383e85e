"""Issue 22, item 2: a confirmation says what the node's server SERVES, read back over DNS after
the apply was verified (docs/protocol.md section 6, ``served``), and the KDC records it per
(distribution, node, zone) and shows it in ``node show`` and ``distribution show``. Real
``krs-kdc serve``, ``krs run`` and knotd / named on loopback; what the KDC recorded is compared
with an independent dnspython query of the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest
from daemonkit import NODE, ZONE, Deployment

from krs_lab.bind9 import Bind9Lab
from krs_lab.knot import KnotLab
from krs_lab.process import LabServer

pytestmark = pytest.mark.integration


def ask(host: str, port: int, rdtype: dns.rdatatype.RdataType) -> tuple[Any, Any]:
    zone = dns.name.from_text(ZONE)
    query = dns.message.make_query(zone, rdtype, want_dnssec=True)
    query.flags = 0
    reply = dns.query.tcp(query, host, port=port, timeout=5)
    rrset = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, rdtype)
    sigs = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
    return rrset, sigs


@pytest.fixture(params=["knot", "bind9"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    lab: LabServer
    if request.param == "knot":
        lab = KnotLab(tmp_path / "knot", [ZONE])
    else:
        lab = Bind9Lab(tmp_path / "named", [ZONE])
    lab.start()
    try:
        yield request.param, lab
    finally:
        lab.stop()


def test_the_kdc_records_what_the_server_serves_after_a_distribution(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    kind, lab = server
    deployment = Deployment(tmp_path / "d")
    try:
        deployment.write_config(
            adapter={"type": kind, "settings": {**lab.adapter_settings(), "verify_timeout": 10}}
        )
        deployment.start_kdc()
        deployment.start_krs()
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id)

        dnskey, dnskey_sigs = ask(lab.host, lab.port, dns.rdatatype.DNSKEY)
        soa, soa_sigs = ask(lab.host, lab.port, dns.rdatatype.SOA)
        (row,) = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
        report = json.loads(row["report"])
        sent = {int(k["key_id"]) for k in report["successful_keys"] if k["zone_name"] == ZONE}
        assert sent  # the distribution's keys (the KDC checked them against what it sent)

        node = json.loads(deployment.kdc("--json", "node", "show", NODE))
        (zone,) = [z for z in node["zones"] if z["zone"] == ZONE]
        served = zone["served"]
        assert served["distribution_id"] == dist_id
        tags = {tag for tag, _, _ in served["dnskey"]}
        assert tags == {dns.dnssec.key_id(k) for k in dnskey}
        assert tags == sent  # the distribution's keys, as the server serves them
        assert sorted(served["dnskey"]) == sorted(
            [dns.dnssec.key_id(k), int(k.algorithm), k.flags] for k in dnskey
        )
        assert served["dnskey_ttl"] == dnskey.ttl
        assert set(served["dnskey_signers"]) == {s.key_tag for s in dnskey_sigs}
        assert set(served["soa_signers"]) == {s.key_tag for s in soa_sigs}
        assert set(served["soa_signers"]) <= sent and set(served["dnskey_signers"]) <= sent
        assert (served["soa_serial"], served["soa_ttl"], served["soa_minimum"]) == (
            soa[0].serial,
            soa.ttl,
            soa[0].minimum,
        )
        assert served["soa_rrsig_expiration"] == min(s.expiration for s in soa_sigs)
        assert served["soa_rrsig_inception"] == max(s.inception for s in soa_sigs)
        assert abs(served["read_at"] - served["recorded_at"]) < 30

        shown = deployment.kdc("node", "show", NODE)
        assert f"serial {soa[0].serial}" in shown and f"in {dist_id}" in shown
        assert [s["zone"] for s in row["served"]] == [ZONE]
        assert row["served"][0]["soa_serial"] == soa[0].serial
        assert f"served {ZONE}: DNSKEY " in deployment.kdc("distribution", "show", dist_id)
        assert report["served"]["zone_count"] == 1
    finally:
        deployment.close()


def test_a_directory_node_reports_its_key_folder_as_what_it_serves(tmp_path: Path) -> None:
    """The directory adapter has no server: its folder is what the node serves, so that a
    policy's steps pass the gate on directory nodes too (docs/protocol.md section 6)."""
    deployment = Deployment(tmp_path / "d")
    try:
        deployment.start_kdc()
        deployment.start_krs()
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id)
        (row,) = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
        report = json.loads(row["report"])
        (entry,) = report["served"]["zones"]
        assert entry["source"] == "key folder" and "absent" not in report["served"]
        keys = json.loads(deployment.kdc("--json", "key", "list", "--zone", ZONE))
        assert sorted(k[0] for k in entry["dnskey"]) == sorted(k["key_tag"] for k in keys)
        ksk = [k["key_tag"] for k in keys if k["role"] == "KSK"]
        zsk = [k["key_tag"] for k in keys if k["role"] == "ZSK"]
        assert entry["dnskey_signers"] == ksk and entry["soa_signers"] == zsk
        assert entry["dnskey_ttl"] == 3600  # a zone without a policy: the key files' default
        assert [s["zone"] for s in row["served"]] == [ZONE]
    finally:
        deployment.close()
