"""The PowerDNS lab, with both backends the adapter must handle: it serves the unsigned zones,
takes a key through the API and signs with it (checked with dnspython, not with PowerDNS's own
word), keeps its data across a restart, and shows the answers the adapter has to interpret. The
facts behind each step are in docs/servers/powerdns-lab-notes.md."""

from __future__ import annotations

import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from krs_lab.powerdns import BACKENDS, PowerDnsLab
from krs_plugin.dnssec import generate_key

pytestmark = pytest.mark.integration

ZONES = ("example.com.", "example.net.")
ZONE = ZONES[0]
NAME = dns.name.from_text(ZONE)


@pytest.fixture(params=BACKENDS)
def pdns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PowerDnsLab]:
    lab = PowerDnsLab(tmp_path / "pdns", ZONES, backend=request.param)
    lab.start()
    yield lab
    lab.stop()


def ask(lab: PowerDnsLab, qname: str | dns.name.Name, rdtype: str) -> dns.message.Message:
    name = dns.name.from_text(qname) if isinstance(qname, str) else qname
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    return dns.query.tcp(query, lab.host, port=lab.port, timeout=3)


def rrset(reply: dns.message.Message, name: dns.name.Name, rdtype: str) -> dns.rrset.RRset | None:
    kind = dns.rdatatype.from_text(rdtype)
    return reply.get_rrset(reply.answer, name, dns.rdataclass.IN, kind)


def validated(lab: PowerDnsLab, qname: str, rdtype: str) -> set[int]:
    """Tags of the keys whose RRSIGs over ``qname``/``rdtype`` validate against the served
    DNSKEY RRset; ``dns.dnssec.validate`` raises when none does."""
    keys = rrset(ask(lab, NAME, "DNSKEY"), NAME, "DNSKEY")
    assert keys is not None
    name = dns.name.from_text(qname)
    reply = ask(lab, name, rdtype)
    kind = dns.rdatatype.from_text(rdtype)
    answer = reply.find_rrset(reply.answer, name, dns.rdataclass.IN, kind)
    sigs = reply.find_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, kind)
    dns.dnssec.validate(answer, sigs, {NAME: keys})
    return {sig.key_tag for sig in sigs}


def post_key(lab: PowerDnsLab, private_text: str, keytype: str) -> dict[str, object]:
    status, reply = lab.api(
        "POST",
        f"/zones/{ZONE}/cryptokeys",
        {"keytype": keytype, "active": True, "published": True, "privatekey": private_text},
    )
    assert status == 201, reply
    assert isinstance(reply, dict)
    return reply


def test_serves_each_zone_unsigned_with_a_private_api_key(pdns: PowerDnsLab) -> None:
    for zone in ZONES:
        reply = ask(pdns, zone, "SOA")
        assert reply.rcode() == dns.rcode.NOERROR
        assert rrset(reply, dns.name.from_text(zone), "SOA") is not None
        assert not [r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG]
        assert pdns.cryptokeys(zone) == []
    for secret in (pdns.api_key_file, pdns.config):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    settings = pdns.adapter_settings()
    assert settings["server"] == f"127.0.0.1:{pdns.port}"
    assert settings["api_url"] == f"http://127.0.0.1:{pdns.api_port}"
    assert settings["backend"] == pdns.backend
    assert f"--socket-dir={pdns.socket_dir}" in settings["pdns_control"]


def test_api_key_is_served_and_validates_after_a_flush(pdns: PowerDnsLab) -> None:
    # one algorithm: a lone KSK or ZSK of an algorithm would sign everything as a CSK
    ksk = generate_key(ZONE, 15, 257)
    zsk = generate_key(ZONE, 15, 256)
    for key, keytype in ((ksk, "ksk"), (zsk, "zsk")):
        reply = post_key(pdns, key.to_bind_private(), keytype)
        # PowerDNS derives the DNSKEY from the private key; it must be the one we sent
        served = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, str(reply["dnskey"]))
        assert served == key.dnskey
    pdns.rectify(ZONE)  # gsqlite3 needs the NSEC ordering now; the bind backend ignores it
    assert {k["tag"] for k in pdns.cryptokeys(ZONE)} == {ksk.key_tag, zsk.key_tag}

    assert validated(pdns, ZONE, "DNSKEY") == {ksk.key_tag}
    assert validated(pdns, ZONE, "SOA") == {zsk.key_tag}
    assert validated(pdns, "www.example.com.", "A") == {zsk.key_tag}
    # the other zone stays unsigned
    other = ask(pdns, ZONES[1], "SOA")
    assert not [r for r in other.answer if r.rdtype == dns.rdatatype.RRSIG]

    # the denial of existence is a real chain: ns1 -> www covers "nx"
    reply = ask(pdns, "nx.example.com.", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    nsec = reply.find_rrset(
        reply.authority, dns.name.from_text("ns1.example.com."), dns.rdataclass.IN, "NSEC"
    )
    assert nsec[0].next == dns.name.from_text("www.example.com.")


def test_restart_keeps_zones_keys_ports_and_api_key(pdns: PowerDnsLab) -> None:
    csk = generate_key(ZONE, 13, 257)
    post_key(pdns, csk.to_bind_private(), "csk")
    ports, api_key = (pdns.port, pdns.api_port), pdns.api_key()
    pdns.stop()
    assert not pdns.process or not pdns.process.running
    pdns.start()
    assert (pdns.port, pdns.api_port) == ports
    assert pdns.api_key() == api_key
    assert [(k["tag"], k["flags"]) for k in pdns.cryptokeys(ZONE)] == [(csk.key_tag, 257)]
    assert validated(pdns, ZONE, "SOA") == {csk.key_tag}  # a fresh process has empty caches
    assert f"cryptokeys  {csk.key_tag}" in pdns.list_keys(ZONE)


def test_pdnsutil_import_while_running_is_served_after_a_purge(pdns: PowerDnsLab) -> None:
    csk = generate_key(ZONE, 13, 257)
    ask(pdns, ZONE, "SOA")  # fill the packet cache with the unsigned answer
    with tempfile.NamedTemporaryFile("w", suffix=".private") as private:
        private.write(csk.to_bind_private())
        private.flush()
        done = pdns.pdnsutil("import-zone-key", ZONE, private.name, "ksk", "active", "published")
    assert done.returncode == 0, done.stderr
    purge = pdns.pdns_control("purge", f"{ZONE}$")
    assert purge.returncode == 0, purge.stderr
    deadline = time.monotonic() + 3  # about 0.05 s measured; about 41 s without the purge
    while rrset(ask(pdns, NAME, "DNSKEY"), NAME, "DNSKEY") is None:
        assert time.monotonic() < deadline, "the imported key was not served after the purge"
        time.sleep(0.02)
    assert validated(pdns, ZONE, "SOA") == {csk.key_tag}


def test_api_errors_the_adapter_has_to_read(pdns: PowerDnsLab) -> None:
    key = generate_key(ZONE, 13, 256).to_bind_private()
    body = {"keytype": "zsk", "active": True, "published": True, "privatekey": key}
    assert pdns.api("GET", f"/zones/{ZONE}/cryptokeys", api_key="wrong") == (401, "Unauthorized")
    assert pdns.api("POST", "/zones/nosuch.example./cryptokeys", body) == (404, "Not Found")
    status, reply = pdns.api("POST", f"/zones/{ZONE}/cryptokeys", {**body, "privatekey": "x"})
    assert status == 422 and "could not be parsed" in reply["error"]
    assert pdns.cryptokeys(ZONE) == []
