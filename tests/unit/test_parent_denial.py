"""Proofs of a missing DS (krs_plugin/kdc/denial.py) checked against a parent zone signed here by
dnspython: a real proof holds; a proof missing a piece, listing DS, or with a broken signature
does not, and says why (docs/lifecycle.md, "Seeing the DS": absence only when proved)."""

from __future__ import annotations

import time

import dns.dnssec
import dns.dnssectypes
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from krs_plugin.kdc.denial import nsec_absence

PARENT = dns.name.from_text("lab.example.")
CHILD = dns.name.from_text("child.lab.example.")
SECURE = dns.name.from_text("secure.lab.example.")
NOSUCH = dns.name.from_text("nosuch.lab.example.")
ZONE = """\
@ 60 IN SOA ns1 hostmaster 1 3600 900 1209600 60
@ 60 IN NS ns1
ns1 60 IN A 127.0.0.1
child 60 IN NS ns1.child
ns1.child 60 IN A 127.0.0.1
secure 60 IN NS ns1.child
secure 60 IN DS 12345 13 2 {digest}
zzz 60 IN A 127.0.0.1
""".format(digest="ab" * 32)


def signed() -> tuple[dns.zone.Zone, dns.rrset.RRset]:
    """The zone signed with NSEC (dnspython does not sign with NSEC3; the NSEC3 proofs are
    checked against Knot in tests/integration/test_parent_ds.py)."""
    private = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssectypes.Algorithm.ECDSAP256SHA256)
    zone = dns.zone.from_text(ZONE, PARENT, relativize=False)
    dns.dnssec.sign_zone(zone, keys=[(private, dnskey)], lifetime=3600)
    keys = zone.find_rrset(PARENT, dns.rdatatype.DNSKEY)
    return zone, keys


def answer(zone: dns.zone.Zone, owners: list[dns.name.Name], rdtype: str) -> dns.message.Message:
    """A negative answer whose authority holds the ``rdtype`` records at ``owners`` with RRSIGs."""
    message = dns.message.make_response(dns.message.make_query(CHILD, dns.rdatatype.DS))
    kind = dns.rdatatype.from_text(rdtype)
    for owner in owners:
        message.authority.append(zone.find_rrset(owner, kind))
        message.authority.append(zone.find_rrset(owner, dns.rdatatype.RRSIG, kind))
    return message


def nsec_owner_before(zone: dns.zone.Zone, name: dns.name.Name) -> dns.name.Name:
    owners = [n for n, node in zone.items() if node.get_rdataset(1, dns.rdatatype.NSEC)]
    before: dns.name.Name = max(o for o in owners if o < name)
    return before


def test_nsec_at_the_delegation_proves_no_ds() -> None:
    zone, keys = signed()
    now = time.time()
    assert nsec_absence(answer(zone, [CHILD], "NSEC"), CHILD, keys, now, False) is None


def test_nsec_listing_ds_and_a_missing_or_broken_proof_are_refused() -> None:
    zone, keys = signed()
    now = time.time()
    secure = answer(zone, [SECURE], "NSEC")
    assert nsec_absence(secure, SECURE, keys, now, False) == (
        f"the NSEC at {SECURE} lists DS: the answer contradicts itself"
    )
    assert nsec_absence(secure, CHILD, keys, now, False) == f"no NSEC at {CHILD}"
    empty = answer(zone, [], "NSEC")
    assert nsec_absence(empty, CHILD, keys, now, False) == "no NSEC or NSEC3 in the negative answer"
    late = nsec_absence(answer(zone, [CHILD], "NSEC"), CHILD, keys, now + 7200, False)
    assert late is not None and late.startswith(f"bogus signature over the NSEC at {CHILD}")
    unsigned = answer(zone, [CHILD], "NSEC")
    unsigned.authority = [r for r in unsigned.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsec_absence(unsigned, CHILD, keys, now, False) == f"no RRSIG over the NSEC at {CHILD}"


def test_nxdomain_needs_the_name_and_the_wildcard_covered() -> None:
    zone, keys = signed()
    now = time.time()
    covering = nsec_owner_before(zone, NOSUCH)
    wildcard = nsec_owner_before(zone, dns.name.from_text("*.lab.example."))
    both = answer(zone, sorted({covering, wildcard}), "NSEC")
    assert nsec_absence(both, NOSUCH, keys, now, True) is None
    if covering != wildcard:
        only = answer(zone, [covering], "NSEC")
        assert nsec_absence(only, NOSUCH, keys, now, True) == (
            "no NSEC covers the wildcard *.lab.example."
        )
    assert nsec_absence(answer(zone, [wildcard], "NSEC"), NOSUCH, keys, now, True) in (
        None,  # one NSEC may cover both
        f"no NSEC covers {NOSUCH}",
    )
