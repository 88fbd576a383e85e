"""Publishing the control zone into an existing primary by RFC 2136 UPDATE with TSIG, instead of
being the primary (``krs-kdc serve --publish-to``; docs/scale.md). The primary (BIND, Knot,
PowerDNS) then serves the zone and its own secondaries transfer it as they transfer any zone.

The KDC keeps the primary's copy equal to its current version (kdc/zoneversions.py): at start,
and after any failure, it reads what the primary has by AXFR (with the same key) and sends the
difference; otherwise the difference between the version the primary has and the current one.
Only the KDC's own records are touched (CHUNK records and ``_pending`` TXT); the SOA, NS and
anything else in the zone are the primary's. Within one change the records go in an order that
never lets a node see a manifest before its chunks or an index before its manifest: new chunks,
new manifests, the index (old rdata out and new in, in one message), then the old manifests and
chunks. One UPDATE message holds at most ``UPDATE_BUDGET`` bytes of records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from krs_plugin.kdc.zoneversions import Entry
from krs_plugin.protocol import CHUNK_TYPE, parse_chunk_wire

log = logging.getLogger(__name__)

UPDATE_BUDGET = 60_000  # bytes of records in one UPDATE (one 60,000-byte chunk still fits)
RECORD_TTL = 300


@dataclass(frozen=True)
class PublishTarget:
    """The primary the control zone is published into, and the key it takes UPDATEs with."""

    host: str
    port: int
    key: dns.tsig.Key
    timeout: float = 10.0

    def __str__(self) -> str:
        return f"{self.host} port {self.port}"


class PublishError(Exception):
    """The primary refused an UPDATE or a transfer, or did not answer; the text says which."""


def read_primary(target: PublishTarget, origin: dns.name.Name) -> frozenset[Entry]:
    """The KDC's records (CHUNK and TXT) in the primary's copy of the zone, by AXFR."""
    zone = dns.zone.Zone(origin)
    query, _ = dns.xfr.make_query(zone, serial=None, keyring={target.key.name: target.key})
    try:
        dns.query.inbound_xfr(target.host, zone, query, port=target.port, timeout=target.timeout)
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        raise PublishError(f"AXFR of {origin} from {target}: {exc or type(exc).__name__}") from exc
    entries: set[Entry] = set()
    for name, node in zone.nodes.items():
        owner = name.derelativize(origin).to_text().lower()
        for rdataset in node.rdatasets:
            if rdataset.rdtype in (CHUNK_TYPE, dns.rdatatype.TXT):
                for rdata in rdataset:
                    entries.add((owner, int(rdataset.rdtype), rdata.to_digestable()))
    return frozenset(entries)


def _is_manifest(entry: Entry) -> bool:
    """A CHUNK record with Sequence 0: the manifest (docs/protocol.md)."""
    return entry[1] == CHUNK_TYPE and parse_chunk_wire(entry[2]).sequence == 0


def ordered_changes(
    removed: Iterable[Entry], added: Iterable[Entry]
) -> list[list[tuple[str, Entry]]]:
    """The change as groups of ("add"|"delete", entry), each group sent in order and split
    into messages only between its records; the index changes in one group of its own."""
    removed, added = set(removed), set(added)

    def kind(entries: set[Entry], wanted: str) -> list[Entry]:
        if wanted == "index":
            chosen = {e for e in entries if e[1] == dns.rdatatype.TXT}
        elif wanted == "manifest":
            chosen = {e for e in entries if _is_manifest(e)}
        else:
            chosen = {e for e in entries if e[1] == CHUNK_TYPE and not _is_manifest(e)}
        return sorted(chosen)

    index = [("delete", e) for e in kind(removed, "index")]
    index += [("add", e) for e in kind(added, "index")]
    return [
        group
        for group in (
            [("add", e) for e in kind(added, "chunk")],
            [("add", e) for e in kind(added, "manifest")],
            index,
            [("delete", e) for e in kind(removed, "manifest")],
            [("delete", e) for e in kind(removed, "chunk")],
        )
        if group
    ]


def send_changes(
    target: PublishTarget,
    origin: dns.name.Name,
    removed: Iterable[Entry],
    added: Iterable[Entry],
) -> int:
    """Send the change as UPDATE messages; the number sent. ``PublishError`` on the first one
    the primary does not answer NOERROR (what went before it stays: the next sync reads the
    primary again)."""
    sent = 0
    for group in ordered_changes(removed, added):
        for batch in _batches(group):
            update = dns.update.UpdateMessage(origin, keyring={target.key.name: target.key})
            for action, (owner, rdtype, wire) in batch:
                rdata = dns.rdata.from_wire(
                    dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), wire, 0, len(wire)
                )
                name = dns.name.from_text(owner)
                if action == "add":
                    update.add(name, RECORD_TTL, rdata)
                else:
                    update.delete(name, rdata)
            try:
                reply = dns.query.tcp(update, target.host, port=target.port, timeout=target.timeout)
            except (OSError, EOFError, dns.exception.DNSException) as exc:
                raise PublishError(f"UPDATE to {target}: {exc or type(exc).__name__}") from exc
            if reply.rcode() != dns.rcode.NOERROR:
                raise PublishError(
                    f"UPDATE to {target} answered {dns.rcode.to_text(reply.rcode())} "
                    f"(is {origin} a zone there, and does it allow updates with key "
                    f"{target.key.name}?)"
                )
            sent += 1
    return sent


def _batches(group: list[tuple[str, Entry]]) -> list[list[tuple[str, Entry]]]:
    """``group`` in runs of at most ``UPDATE_BUDGET`` bytes; the index group stays whole."""
    batches: list[list[tuple[str, Entry]]] = [[]]
    size = 0
    for item in group:
        _, (owner, _, wire) = item
        estimate = len(owner) + 12 + len(wire)
        if batches[-1] and size + estimate > UPDATE_BUDGET and item[1][1] != dns.rdatatype.TXT:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += estimate
    return batches


@dataclass
class Publisher:
    """Which version the primary holds, and what to send to bring it to the current one."""

    target: PublishTarget
    origin: dns.name.Name
    synced: int | None = None  # our serial the primary holds; None: read it first
    failures: int = 0
    due_at: float = 0.0

    def sync(
        self,
        serial: int,
        entries: frozenset[Entry],
        difference: tuple[set[Entry], set[Entry]] | None,
    ) -> int:
        """Bring the primary to ``serial`` (whose records are ``entries``), from the
        ``difference`` to the version it holds when known, else from what it serves. Runs off
        the event loop (network only). Returns the UPDATE messages sent."""
        if difference is None:
            theirs = read_primary(self.target, self.origin)
            difference = (set(theirs - entries), set(entries - theirs))
        removed, added = difference
        return send_changes(self.target, self.origin, removed, added)
