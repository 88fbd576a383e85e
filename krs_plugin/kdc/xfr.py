"""Zone transfers of the control zone to secondaries: AXFR (RFC 5936) and IXFR (RFC 1995), each
allowed by source address and, when a key is configured, by TSIG (RFC 8945); docs/scale.md.

A transfer is answered from one ``Snapshot`` of ``ZoneVersions`` (a consistent version, whatever
is published meanwhile), in messages of at most ``MESSAGE_BUDGET`` bytes: a CHUNK record of up
to 60,000 bytes travels in a message of its own. With TSIG every message is signed, each MAC
covering the one before (RFC 8945 section 5.3.1).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.serial
import dns.tsig
from dns.rdtypes.ANY.SOA import SOA

from krs_plugin.kdc.zoneversions import Entry, ZoneVersions

log = logging.getLogger(__name__)

MESSAGE_BUDGET = 64_000  # bytes of records per message; the rest of 65,535 for header and TSIG
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TransferPolicy:
    """Who may transfer the control zone: a source in ``allow`` and, with ``key``, a query
    signed with that key. Nothing allowed by default: the zone names every node."""

    allow: tuple[Network, ...] = ()
    key: dns.tsig.Key | None = None

    @property
    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key] | None:
        return None if self.key is None else {self.key.name: self.key}

    def refusal(self, query: dns.message.Message, source: str) -> str | None:
        """Why a transfer query from ``source`` is refused, or None."""
        try:
            address = ipaddress.ip_address(source.split("%")[0])
        except ValueError:
            return f"{source} is not an address"
        if not any(address in network for network in self.allow):
            return f"{source} is not in --allow-transfer"
        if self.key is not None and (not query.had_tsig or query.keyname != self.key.name):
            return f"not signed with TSIG key {self.key.name}"
        return None


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Networks from "192.0.2.0/24", "::1" or "127.0.0.1" (ValueError names the bad one)."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or network") from None
    return tuple(networks)


def soa_rrset(origin: dns.name.Name, soa: SOA, serial: int, ttl: int) -> dns.rrset.RRset:
    return dns.rrset.from_rdata(origin, ttl, soa.replace(serial=serial))


def transfer(
    query: dns.message.Message,
    versions: ZoneVersions,
    apex: Sequence[dns.rrset.RRset],
    soa: SOA,
    ttl: int,
) -> list[bytes]:
    """The messages answering an AXFR or IXFR over TCP, from the current version. ``apex``: the
    records of the apex besides SOA (NS); ``soa``: the SOA whose serial is replaced."""
    snapshot = versions.current
    origin = versions.origin
    current = soa_rrset(origin, soa, snapshot.serial, ttl)
    records: list[dns.rrset.RRset]
    if query.question[0].rdtype == dns.rdatatype.IXFR:
        theirs = _ixfr_serial(query)
        if theirs is not None and dns.serial.Serial(theirs) >= dns.serial.Serial(snapshot.serial):
            return _messages(query, [current])  # up to date (or ahead): the SOA alone
        difference = None if theirs is None else versions.since(theirs)
        if difference is not None:
            removed, added = difference
            records = [
                current,
                soa_rrset(origin, soa, theirs or 0, ttl),
                *_rrsets(sorted(removed), ttl),
                current,
                *_rrsets(sorted(added), ttl),
                current,
            ]
            return _messages(query, records)
    records = [current, *apex, *_rrsets(sorted(snapshot.entries), ttl), current]
    return _messages(query, records)


def _ixfr_serial(query: dns.message.Message) -> int | None:
    """The serial the IXFR query's authority section says the secondary has."""
    for rrset in query.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            rdata = rrset[0]
            assert isinstance(rdata, SOA)
            return int(rdata.serial)
    return None


def _rrsets(entries: Iterable[Entry], ttl: int) -> list[dns.rrset.RRset]:
    out = []
    for owner, rdtype, wire in entries:
        rdata = dns.rdata.from_wire(
            dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), wire, 0, len(wire)
        )
        out.append(dns.rrset.from_rdata(dns.name.from_text(owner), ttl, rdata))
    return out


def _messages(query: dns.message.Message, rrsets: Sequence[dns.rrset.RRset]) -> list[bytes]:
    """``rrsets`` in as few messages as fit ``MESSAGE_BUDGET`` each, TSIG-signed in a chain
    when the query was signed."""
    groups: list[list[dns.rrset.RRset]] = [[]]
    size = 0
    for rrset in rrsets:
        estimate = sum(
            len(rrset.name.to_wire() or b"") + 10 + len(r.to_wire() or b"") for r in rrset
        )
        if groups[-1] and size + estimate > MESSAGE_BUDGET:
            groups.append([])
            size = 0
        groups[-1].append(rrset)
        size += estimate
    wires = []
    context = None
    for group in groups:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.answer.extend(group)
        if query.had_tsig:
            wires.append(response.to_wire(max_size=65535, multi=True, tsig_ctx=context))
            context = response.tsig_ctx
        else:
            wires.append(response.to_wire(max_size=65535))
    return wires


def refused(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return bytes(response.to_wire(max_size=65535))
