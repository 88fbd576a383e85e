"""Checking a parent's proof that a child has no DS (RFC 4035 5.4, RFC 5155 8): NSEC or NSEC3
records whose RRSIGs validate with the parent's validated DNSKEY RRset.

Used by parent.py: an absent DS counts as absent only when proved, because an unsigned or
forged negative answer would otherwise read as "the old DS is gone" (docs/lifecycle.md,
"Seeing the DS"). Each function returns None when the proof holds, or why it does not.
"""

from __future__ import annotations

import base64

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

NSEC3_OPT_OUT = 0x01


def _signed(
    message: dns.message.Message,
    rdtype: dns.rdatatype.RdataType,
    keys: dns.rrset.RRset,
    now: float,
) -> tuple[list[dns.rrset.RRset], str | None]:
    """The authority section's ``rdtype`` RRsets whose RRSIGs validate with ``keys``."""
    found = [r for r in message.authority if r.rdtype == rdtype]
    good = []
    for rrset in found:
        sigs = next(
            (
                r
                for r in message.authority
                if r.rdtype == dns.rdatatype.RRSIG and r.covers == rdtype and r.name == rrset.name
            ),
            None,
        )
        if sigs is None:
            return [], f"no RRSIG over the {dns.rdatatype.to_text(rdtype)} at {rrset.name}"
        try:
            dns.dnssec.validate(rrset, sigs, {keys.name: keys}, now=now)
        except dns.exception.DNSException as failure:
            what = dns.rdatatype.to_text(rdtype)
            return [], f"bogus signature over the {what} at {rrset.name}: {failure}"
        good.append(rrset)
    return good, None


def _types(rrset: dns.rrset.RRset) -> set[dns.rdatatype.RdataType]:
    rdata = rrset[0]
    return {dns.rdatatype.RdataType.make(t) for window in rdata.windows for t in _window(window)}


def _window(window: tuple[int, bytes]) -> list[int]:
    number, bitmap = window
    return [
        number * 256 + i * 8 + bit
        for i, byte in enumerate(bitmap)
        for bit in range(8)
        if byte & (0x80 >> bit)
    ]


def _covers(owner: dns.name.Name, following: dns.name.Name, name: dns.name.Name) -> bool:
    """``name`` lies strictly between an NSEC's owner and its next name (canonical order, the
    last NSEC of the zone wrapping round to the apex)."""
    if owner < following:
        return bool(owner < name < following)
    return bool(name > owner or name < following)


def nsec_absence(
    message: dns.message.Message,
    zone: dns.name.Name,
    keys: dns.rrset.RRset,
    now: float,
    nxdomain: bool,
) -> str | None:
    """NODATA: an NSEC at ``zone`` (from the parent's side: no SOA) without DS or CNAME in its
    bitmap. NXDOMAIN: an NSEC covering ``zone`` and one covering the wildcard at its closest
    encloser."""
    nsecs, problem = _signed(message, dns.rdatatype.NSEC, keys, now)
    if problem:
        return problem
    if not nsecs:
        return "no NSEC or NSEC3 in the negative answer"
    if not nxdomain:
        for rrset in nsecs:
            if rrset.name == zone:
                types = _types(rrset)
                if dns.rdatatype.DS in types or dns.rdatatype.CNAME in types:
                    return f"the NSEC at {zone} lists DS: the answer contradicts itself"
                if dns.rdatatype.SOA in types:
                    return f"the NSEC at {zone} is the child's (SOA in its bitmap)"
                return None
        return f"no NSEC at {zone}"
    covering = [r for r in nsecs if _covers(r.name, r[0].next, zone)]
    if not covering:
        return f"no NSEC covers {zone}"
    owner, following = covering[0].name, covering[0][0].next
    encloser = max(
        (zone.fullcompare(owner)[2], owner), (zone.fullcompare(following)[2], following)
    )[0]
    ancestor = zone.split(encloser)[1] if encloser > 0 else dns.name.root
    wildcard = dns.name.Name((b"*", *ancestor.labels))
    if not any(_covers(r.name, r[0].next, wildcard) for r in nsecs):
        return f"no NSEC covers the wildcard {wildcard}"
    return None


def _hash(name: dns.name.Name, rrset: dns.rrset.RRset) -> str:
    rdata = rrset[0]
    return str(dns.dnssec.nsec3_hash(name, rdata.salt, rdata.iterations, rdata.algorithm)).lower()


def _owner_hash(rrset: dns.rrset.RRset) -> str:
    return rrset.name.labels[0].decode().lower()


def _next_hash(rrset: dns.rrset.RRset) -> str:
    return base64.b32hexencode(rrset[0].next).decode().lower()


def _covers_hash(rrset: dns.rrset.RRset, hashed: str) -> bool:
    owner, following = _owner_hash(rrset), _next_hash(rrset)
    if owner < following:
        return owner < hashed < following
    return hashed > owner or hashed < following


def nsec3_absence(
    message: dns.message.Message,
    zone: dns.name.Name,
    parent: dns.name.Name,
    keys: dns.rrset.RRset,
    now: float,
    nxdomain: bool,
) -> str | None:
    """NODATA: an NSEC3 matching ``zone`` without DS or CNAME, or (opt-out, RFC 5155 8.6) the
    closest encloser proof with an opt-out NSEC3 covering the next closer name. NXDOMAIN: the
    closest encloser proof and an NSEC3 covering the wildcard at the closest encloser."""
    nsec3s, problem = _signed(message, dns.rdatatype.NSEC3, keys, now)
    if problem:
        return problem
    if not nsec3s:
        return "no NSEC or NSEC3 in the negative answer"
    try:
        by_hash = {_owner_hash(r): r for r in nsec3s}

        def matching(name: dns.name.Name) -> dns.rrset.RRset | None:
            return by_hash.get(_hash(name, nsec3s[0]))

        if not nxdomain:
            exact = matching(zone)
            if exact is not None:
                types = _types(exact)
                if dns.rdatatype.DS in types or dns.rdatatype.CNAME in types:
                    return f"the NSEC3 matching {zone} lists DS: the answer contradicts itself"
                if dns.rdatatype.SOA in types:
                    return f"the NSEC3 matching {zone} is the child's (SOA in its bitmap)"
                return None
        # The closest encloser: the longest ancestor of zone (within the parent) with a
        # matching NSEC3, the next closer name covered.
        if not zone.is_subdomain(parent) or zone == parent:
            return f"{zone} is not below {parent}"
        candidate = zone
        while candidate != parent:
            closer, candidate = candidate, candidate.parent()
            if matching(candidate) is None:
                continue
            hashed = _hash(closer, nsec3s[0])
            covering = [r for r in nsec3s if _covers_hash(r, hashed)]
            if not covering:
                return f"no NSEC3 covers the next closer name {closer}"
            if not nxdomain:
                if covering[0][0].flags & NSEC3_OPT_OUT:
                    return None
                return f"no NSEC3 matches {zone} and the one covering it is not opt-out"
            wildcard = dns.name.Name((b"*", *candidate.labels))
            if not any(_covers_hash(r, _hash(wildcard, nsec3s[0])) for r in nsec3s):
                return f"no NSEC3 covers the wildcard {wildcard}"
            return None
        return f"no closest encloser proof for {zone}"
    except (dns.exception.DNSException, ValueError) as error:
        return f"unusable NSEC3: {error}"
