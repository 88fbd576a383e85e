"""A batch's look validates each RRset's RRSIGs once for the verification and the served state
it keeps (``dnscheck._SignersOnce``): the same signers as validating each time, a forged RRSIG
still not counted, and other objects (another key set) validated afresh."""

from __future__ import annotations

import time

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from krs_plugin.adapters import dnscheck

ZONE = dns.name.from_text("once.example.")


def signed() -> tuple[dns.rrset.RRset, dns.rrset.RRset, int]:
    """A DNSKEY RRset of two keys, its RRSIGs: one valid by the first key, one by the second
    key made over another RRset (invalid here); the valid signer's tag."""
    good, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = dns.rrset.RRset(ZONE, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    dnskeys = [dns.dnssec.make_dnskey(k.public_key(), 13, flags=257) for k in (good, other)]
    for dnskey in dnskeys:
        keys.add(dnskey, 3600)
    now = int(time.time())
    valid = dns.dnssec.sign(keys, good, ZONE, dnskeys[0], inception=now - 60, lifetime=3600)
    elsewhere = dns.rrset.RRset(ZONE, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    elsewhere.add(dnskeys[1], 3600)  # a DNSKEY RRset that is not the one served
    forged = dns.dnssec.sign(elsewhere, other, ZONE, dnskeys[1], inception=now - 60, lifetime=3600)
    sigs = dns.rrset.RRset(ZONE, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    sigs.add(valid, 3600)
    sigs.add(forged, 3600)
    return keys, sigs, dns.dnssec.key_id(dnskeys[0])


def test_each_rrsets_signatures_are_validated_once_with_the_same_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys, sigs, tag = signed()
    calls: list[int] = []
    real = dnscheck._valid_signers

    def counting(*args: object) -> set[int]:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(dnscheck, "_valid_signers", counting)
    once = dnscheck._SignersOnce()
    first = once(keys, sigs, keys, ZONE)
    first.add(1)  # a caller changing its set changes nothing remembered
    assert once(keys, sigs, keys, ZONE) == {tag} == real(keys, sigs, keys, ZONE)
    assert len(calls) == 1
    copy = dns.rrset.RRset(ZONE, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    copy.update(keys)  # another key set (with_hidden makes one): validated afresh
    assert once(keys, sigs, copy, ZONE) == {tag}
    assert len(calls) == 2
