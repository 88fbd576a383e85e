"""Seeing a child's DS at every address of its parent, validated (docs/lifecycle.md, "Seeing the
DS"; issue 23).

``observe`` asks each parent address over TCP for the child's DS (DO set, RD clear) and accepts
only an authoritative answer whose DS RRset, or proof of absence, validates with the parent's
DNSKEY RRset; that RRset is itself validated from a configured trust anchor (checked at each
address) or by a validating resolver (its AD bit). Every problem is named per address and never
raised, so one broken nameserver holds the DS step and is shown, as a lagging node is. A
signature that does not validate is reported as bogus, never as "not there yet": the step must
not advance on a forged answer.

``ds_step_state`` is the pure rule the engine applies to a view: the new DS is seen when every
address validated and holds all of it; the old DS is gone when every address validated and holds
none of it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.DS
import dns.rrset

from krs_plugin.kdc.denial import nsec3_absence, nsec_absence

DsTuple = tuple[int, int, int, str]
"""(key tag, algorithm, digest type, digest in lower-case hex)."""

PAYLOAD = 1232


@dataclass(frozen=True)
class ParentConfig:
    """Where the parent is and how to validate it."""

    agents: tuple[str, ...] = ()
    """"host:port" / "[v6]:port" addresses queried directly (BIND's parental-agents); empty:
    discover them through ``resolver``."""
    resolver: str | None = None
    """"host:port" of a resolver: finds the parent zone, its NS set and their addresses when
    there are no agents; validates the parent's DNSKEY RRset (AD bit) when there is no anchor."""
    trust_anchor: str | None = None
    """Presentation-format DS or DNSKEY records of the PARENT zone, one per line."""
    port: int = 53
    """The port of addresses discovered from the NS set."""


@dataclass(frozen=True)
class AddressView:
    """What one parent address served for the child's DS."""

    address: str
    server: str
    ds: frozenset[DsTuple] | None
    """Validated DS set; frozenset() = validated absence; None = an error (see ``error``)."""
    ttl: int | None
    error: str | None


@dataclass(frozen=True)
class ParentView:
    """Every parent address's answer at ``at`` (Unix seconds); ``error``: none could be asked."""

    zone: str
    parent: str | None
    at: int
    addresses: tuple[AddressView, ...]
    error: str | None


class _Problem(Exception):
    """One address's (or the whole view's) named problem, turned into an ``error`` string."""


# --- addresses and queries -------------------------------------------------------------------


def split_address(text: str, default_port: int = 53) -> tuple[str, int]:
    """("::1", 53) from "[::1]:53"; ("192.0.2.1", 5300) from "192.0.2.1:5300"; a bare address
    takes ``default_port``. ValueError names what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [v6]:port")
        port = rest[1:] if rest else str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError as error:
        raise ValueError(f"bad address {text!r}: {error}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad address {text!r}: port {number} out of range")
    return host, number


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ask(
    host: str,
    port: int,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    timeout: float,
    recursive: bool = False,
) -> dns.message.Message:
    """One TCP query with DO; RD and AD only for a resolver. Network failures as _Problem."""
    query = dns.message.make_query(name, rdtype, want_dnssec=True, payload=PAYLOAD)
    if recursive:
        query.flags |= dns.flags.AD
    else:
        query.flags &= ~dns.flags.RD
    try:
        return dns.query.tcp(query, host, port=port, timeout=timeout)
    except dns.exception.Timeout:
        raise _Problem("timeout") from None
    except ConnectionRefusedError:
        raise _Problem("connection refused") from None
    except EOFError:
        raise _Problem("connection closed without an answer") from None
    except OSError as error:
        raise _Problem(f"network error: {error.strerror or error}") from None
    except dns.exception.DNSException as error:
        raise _Problem(f"malformed answer: {error}") from None


def _authoritative(reply: dns.message.Message, parent: dns.name.Name | None) -> None:
    rcode = reply.rcode()
    if rcode == dns.rcode.REFUSED:
        raise _Problem("refused")
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise _Problem(f"rcode {dns.rcode.to_text(rcode)}")
    if not reply.flags & dns.flags.AA:
        referral = any(r.rdtype == dns.rdatatype.NS for r in reply.authority)
        where = f" for {parent}" if parent is not None else ""
        raise _Problem(
            f"lame: a referral, not authoritative{where} (no AA)"
            if referral
            else "not authoritative (no AA)"
        )


# --- the parent's DNSKEY RRset ---------------------------------------------------------------


def parse_anchor(text: str) -> tuple[dns.name.Name, list[dns.rdata.Rdata]]:
    """The owner and the DS/DNSKEY rdatas of ``trust_anchor`` text (comments with ';' and blank
    lines skipped; BIND's "IN" and a TTL allowed). ValueError names the bad line."""
    owner: dns.name.Name | None = None
    records: list[dns.rdata.Rdata] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";")[0].strip()
        if not line:
            continue
        try:
            rrset = dns.rrset.from_text(*_anchor_fields(line))
        except (dns.exception.DNSException, ValueError) as error:
            raise ValueError(f"trust anchor line {number}: {error}") from None
        if rrset.rdtype not in (dns.rdatatype.DS, dns.rdatatype.DNSKEY):
            raise ValueError(f"trust anchor line {number}: not a DS or DNSKEY record")
        if owner is not None and rrset.name != owner:
            raise ValueError(f"trust anchor line {number}: {rrset.name} is not {owner}")
        owner = rrset.name
        records.extend(rrset)
    if owner is None:
        raise ValueError("trust anchor: no DS or DNSKEY record")
    return owner, records


def _anchor_fields(line: str) -> tuple[str, int, str, str, str]:
    fields = line.split()
    owner, rest = fields[0], fields[1:]
    ttl = 0
    if rest and rest[0].isdigit():
        ttl, rest = int(rest[0]), rest[1:]
    if rest and rest[0].upper() == "IN":
        rest = rest[1:]
    if len(rest) < 2:
        raise ValueError("expected OWNER [TTL] [IN] DS|DNSKEY RDATA")
    return owner, ttl, "IN", rest[0], " ".join(rest[1:])


def _anchored(
    dnskeys: dns.rrset.RRset, anchor: Sequence[dns.rdata.Rdata]
) -> list[dns.rdtypes.ANY.DNSKEY.DNSKEY]:
    """The DNSKEYs of the set that the anchor names (same key, or a DS whose digest matches)."""
    matched = []
    for key in dnskeys:
        assert isinstance(key, dns.rdtypes.ANY.DNSKEY.DNSKEY)
        for record in anchor:
            if isinstance(record, dns.rdtypes.ANY.DNSKEY.DNSKEY):
                hit = record == key
            else:
                assert isinstance(record, dns.rdtypes.ANY.DS.DS)
                hit = (
                    record.key_tag == dns.dnssec.key_id(key)
                    and record.algorithm == key.algorithm
                    and _digest_matches(dnskeys.name, key, record)
                )
            if hit:
                matched.append(key)
                break
    return matched


def _digest_matches(
    owner: dns.name.Name, key: dns.rdtypes.ANY.DNSKEY.DNSKEY, ds: dns.rdtypes.ANY.DS.DS
) -> bool:
    try:
        return bool(dns.dnssec.make_ds(owner, key, ds.digest_type) == ds)
    except (dns.exception.DNSException, ValueError):
        return False


def _dnskeys_at(
    host: str,
    port: int,
    parent: dns.name.Name,
    anchor: Sequence[dns.rdata.Rdata],
    source: str,
    timeout: float,
    now: float,
) -> dns.rrset.RRset:
    """The parent's DNSKEY RRset as this address serves it, validated from ``anchor`` (DS or
    DNSKEY records; ``source`` names where they came from in errors)."""
    try:
        reply = _ask(host, port, parent, dns.rdatatype.DNSKEY, timeout)
        _authoritative(reply, parent)
    except _Problem as problem:
        raise _Problem(f"parent DNSKEY: {problem}") from None
    keys = reply.get_rrset(reply.answer, parent, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    if keys is None:
        raise _Problem(f"parent DNSKEY: no DNSKEY RRset for {parent}")
    trusted = _anchored(keys, anchor)
    if not trusted:
        raise _Problem(f"unknown parent key: no DNSKEY served matches {source}")
    sigs = reply.get_rrset(
        reply.answer, parent, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY
    )
    if sigs is None:
        raise _Problem("parent DNSKEY: no RRSIG over the DNSKEY RRset")
    anchored = dns.rrset.from_rdata_list(parent, keys.ttl, trusted)
    try:
        dns.dnssec.validate(keys, sigs, {parent: anchored}, now=now)
    except dns.exception.DNSException as failure:
        raise _Problem(
            f"bogus signature over the parent DNSKEY RRset (no valid RRSIG by an anchored key: "
            f"{failure})"
        ) from None
    return keys


def _dnskeys_by_resolver(
    resolver: tuple[str, int], parent: dns.name.Name, timeout: float
) -> dns.rrset.RRset:
    """The parent's DNSKEY RRset from a validating resolver; AD missing is a _Problem."""
    reply = _ask(*resolver, parent, dns.rdatatype.DNSKEY, timeout, recursive=True)
    if reply.rcode() != dns.rcode.NOERROR:
        raise _Problem(f"resolver: parent DNSKEY: rcode {dns.rcode.to_text(reply.rcode())}")
    keys = reply.get_rrset(reply.answer, parent, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    if keys is None:
        raise _Problem(f"resolver: no DNSKEY RRset for {parent}")
    if not reply.flags & dns.flags.AD:
        raise _Problem(
            f"resolver: the parent DNSKEY RRset came without AD: the resolver does not validate "
            f"{parent} (not a validating resolver, or the parent is not secure)"
        )
    return keys


# --- one address -----------------------------------------------------------------------------


def _ds_at(
    host: str,
    port: int,
    zone: dns.name.Name,
    parent: dns.name.Name,
    keys: dns.rrset.RRset,
    timeout: float,
    now: float,
) -> tuple[frozenset[DsTuple], int | None]:
    reply = _ask(host, port, zone, dns.rdatatype.DS, timeout)
    _authoritative(reply, parent)
    ds = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.DS)
    if ds is not None:
        sigs = reply.get_rrset(
            reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DS
        )
        if sigs is None:
            raise _Problem("no RRSIG over the DS RRset")
        signers = {s.signer for s in sigs}
        if parent not in signers:
            raise _Problem(f"bogus: the DS RRset is signed by {', '.join(map(str, signers))}")
        try:
            dns.dnssec.validate(ds, sigs, {parent: keys}, now=now)
        except dns.exception.DNSException as failure:
            tags = ", ".join(str(s.key_tag) for s in sigs)
            raise _Problem(f"bogus signature over the DS RRset (RRSIG {tags}: {failure})") from None
        return frozenset(ds_tuple(r) for r in ds), ds.ttl
    if reply.answer:
        raise _Problem("the answer holds no DS RRset for the zone")
    nxdomain = reply.rcode() == dns.rcode.NXDOMAIN
    if any(r.rdtype == dns.rdatatype.NSEC3 for r in reply.authority):
        why = nsec3_absence(reply, zone, parent, keys, now, nxdomain)
    else:
        why = nsec_absence(reply, zone, keys, now, nxdomain)
    if why is not None:
        raise _Problem(f"absence not validated: {why}")
    return frozenset(), None


def _view_address(
    address: str,
    server: str,
    zone: dns.name.Name,
    parent: dns.name.Name,
    anchor: Sequence[dns.rdata.Rdata],
    source: str,
    timeout: float,
    now: float,
    default_port: int,
) -> AddressView:
    try:
        host, port = split_address(address, default_port)
        keys = _dnskeys_at(host, port, parent, anchor, source, timeout, now)
        found, ttl = _ds_at(host, port, zone, parent, keys, timeout, now)
    except (_Problem, ValueError) as problem:
        return AddressView(address, server, None, None, str(problem))
    return AddressView(address, server, found, ttl, None)


# --- discovery through the resolver ----------------------------------------------------------


def _find_parent(resolver: tuple[str, int], zone: dns.name.Name, timeout: float) -> dns.name.Name:
    """The nearest ancestor of ``zone`` that has an SOA: the parent zone."""
    candidate = zone
    while candidate != dns.name.root:
        candidate = candidate.parent()
        reply = _ask(*resolver, candidate, dns.rdatatype.SOA, timeout, recursive=True)
        if reply.get_rrset(reply.answer, candidate, dns.rdataclass.IN, dns.rdatatype.SOA):
            return candidate
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise _Problem(f"resolver: {candidate} SOA: rcode {dns.rcode.to_text(reply.rcode())}")
    raise _Problem(f"resolver: no parent zone found above {zone}")


def _discover(
    resolver: tuple[str, int], parent: dns.name.Name, port: int, timeout: float
) -> list[tuple[str, str, str | None]]:
    """(address, NS name, error) per address of the parent's NS set, through the resolver; an
    NS without an address is one entry with the NS name as its address and an error."""
    reply = _ask(*resolver, parent, dns.rdatatype.NS, timeout, recursive=True)
    ns = reply.get_rrset(reply.answer, parent, dns.rdataclass.IN, dns.rdatatype.NS)
    if ns is None:
        raise _Problem(f"resolver: no NS RRset for {parent}")
    found: list[tuple[str, str, str | None]] = []
    for target in sorted(str(r.target) for r in ns):
        addresses = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = _ask(*resolver, dns.name.from_text(target), rdtype, timeout, True)
            except _Problem:
                continue
            rrset = answer.get_rrset(
                answer.answer, dns.name.from_text(target), dns.rdataclass.IN, rdtype
            )
            addresses += [join_address(r.address, port) for r in rrset or ()]
        if not addresses:
            found.append((target, target, "no address (A/AAAA) found through the resolver"))
        found.extend((a, target, None) for a in addresses)
    return found


# --- the whole view --------------------------------------------------------------------------


def observe(
    zone: str, config: ParentConfig, *, timeout: float = 5.0, now: int | None = None
) -> ParentView:
    """Every parent address's validated DS set for ``zone``; never raises for a bad address or
    a bad configuration (the view's or the address's ``error`` says what)."""
    at = int(time.time()) if now is None else now
    try:
        child = dns.name.from_text(zone)
    except dns.exception.DNSException as error:
        return ParentView(zone, None, at, (), f"bad zone name {zone!r}: {error}")
    try:
        return _observe(child, config, timeout, at)
    except (_Problem, ValueError, dns.exception.DNSException) as problem:
        return ParentView(child.to_text(), None, at, (), str(problem))


def _observe(child: dns.name.Name, config: ParentConfig, timeout: float, at: int) -> ParentView:
    zone = child.to_text()
    anchor: list[dns.rdata.Rdata] | None = None
    parent: dns.name.Name | None = None
    if config.trust_anchor:
        parent, anchor = parse_anchor(config.trust_anchor)
    resolver = split_address(config.resolver) if config.resolver else None
    if anchor is None and resolver is None:
        raise _Problem("cannot validate: no trust anchor for the parent and no resolver")
    if resolver is not None and (parent is None or not config.agents):
        found = _find_parent(resolver, child, timeout)
        if parent is not None and found != parent:
            raise _Problem(f"the trust anchor is for {parent}, the parent zone is {found}")
        parent = found
    if parent is None:  # agents and a resolver-less anchor handled above; this is for mypy
        raise _Problem("no parent zone")
    if not child.is_subdomain(parent) or child == parent:
        raise _Problem(f"{zone} is not below the parent zone {parent}")
    targets: list[tuple[str, str, str | None]]
    if config.agents:
        targets = [(a, "agent", None) for a in config.agents]
    else:
        if resolver is None:
            raise _Problem("no parental agents and no resolver to find the parent's servers")
        targets = _discover(resolver, parent, config.port, timeout)
    source = "the trust anchor"
    if anchor is None:
        # The resolver's validated DNSKEY RRset anchors each address's own DNSKEY RRset, so an
        # address that still serves the parent's previous ZSK (a lagging secondary during the
        # parent's own ZSK rollover) validates as long as it shares a key with the resolver.
        assert resolver is not None
        try:
            anchor = list(_dnskeys_by_resolver(resolver, parent, timeout))
            source = "the resolver's validated DNSKEY RRset"
        except _Problem as problem:
            views = tuple(AddressView(a, s, None, None, str(problem)) for a, s, _ in targets)
            return ParentView(zone, parent.to_text(), at, views, str(problem))

    def one(target: tuple[str, str, str | None]) -> AddressView:
        address, server, error = target
        if error is not None:
            return AddressView(address, server, None, None, error)
        return _view_address(
            address, server, child, parent, anchor, source, timeout, at, config.port
        )

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(targets)))) as pool:
        views = tuple(pool.map(one, targets))
    return ParentView(zone, parent.to_text(), at, views, None)


# --- what the engine asks of a view ----------------------------------------------------------


def ds_tuple(record: dns.rdata.Rdata) -> DsTuple:
    assert isinstance(record, dns.rdtypes.ANY.DS.DS)
    return (
        int(record.key_tag),
        int(record.algorithm),
        int(record.digest_type),
        record.digest.hex().lower(),
    )


def ds_tuples(lines: Iterable[str]) -> set[DsTuple]:
    """DS tuples from presentation lines as ``krs-kdc zone ds`` prints them
    ("child. [TTL] IN DS tag alg dt digest") or bare rdata ("tag alg dt digest")."""
    found = set()
    for line in lines:
        text = line.split(";")[0].strip()
        if not text:
            continue
        fields = text.split()
        upper = [f.upper() for f in fields]
        rdata = " ".join(fields[upper.index("DS") + 1 :]) if "DS" in upper else text
        record = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, rdata)
        found.add(ds_tuple(record))
    return found


def _norm(ds: Iterable[DsTuple]) -> set[DsTuple]:
    return {(int(t), int(a), int(d), h.lower()) for t, a, d, h in ds}


def _tags(ds: Iterable[DsTuple]) -> str:
    return ", ".join(f"{t}/{a}/{d}" for t, a, d, _ in sorted(ds)) or "none"


def ds_step_state(
    view: ParentView, new: Iterable[DsTuple], old: Iterable[DsTuple]
) -> tuple[bool, bool, str]:
    """(seen_new, old_gone, why). seen_new: every address validated and holds all of ``new``;
    old_gone: every address validated and holds none of ``old``; ``why`` names the addresses
    that hold the step and what they serve."""
    wanted, leaving = _norm(new), _norm(old)
    if view.error is not None:
        return False, False, f"parent of {view.zone}: {view.error}"
    if not view.addresses:
        return False, False, f"parent of {view.zone}: no address to ask"
    failed = [a for a in view.addresses if a.ds is None]
    lacking = [a for a in view.addresses if a.ds is not None and not wanted <= a.ds]
    holding = [a for a in view.addresses if a.ds is not None and leaving & a.ds]
    seen_new = not failed and not lacking
    old_gone = not failed and not holding
    parts = [f"{_name(a)}: {a.error}" for a in failed]
    if lacking:
        parts.append(f"new DS {_tags(wanted)} not yet at " + ", ".join(_name(a) for a in lacking))
    for address in holding:  # what each still serves, not every digest looked for
        parts.append(f"old DS {_tags(leaving & (address.ds or set()))} still at {_name(address)}")
    if not parts:
        parts.append(
            f"all {len(view.addresses)} parent address(es) serve the new DS and not the old"
        )
    return seen_new, old_gone, "; ".join(parts)


def _name(view: AddressView) -> str:
    return (
        view.address
        if view.server in ("agent", view.address)
        else (f"{view.address} ({view.server})")
    )


def largest_ttl(view: ParentView) -> int | None:
    """The largest DS TTL any address served (None: no address served a DS RRset): the engine
    waits this instead of the policy's parent-ds-ttl when it is larger."""
    return max((a.ttl for a in view.addresses if a.ttl is not None), default=None)
