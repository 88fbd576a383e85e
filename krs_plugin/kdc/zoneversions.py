"""The control zone as a zone with versions: what a secondary transfers (docs/scale.md).

The zone's content is its CHUNK records (manifests and data chunks of every distribution not
expired) and each node's ``_pending`` TXT index (docs/protocol.md section 8), plus the apex SOA
and NS. Each different content gets a new SOA serial: ``max(previous + 1, now)`` in Unix
seconds, so the serial grows with every publication, expiry and withdrawal, also across a
restart or a restored backup (RFC 1982 comparisons hold as long as the clock moves forward).
The serial and a digest of the content are kept in kdc.db's ``meta``; the differences between
recent versions are kept in memory for IXFR (RFC 1995) and lost at a restart, after which an
IXFR is answered with the whole zone, as RFC 1995 allows.

What may change the content is seen without rebuilding it: triggers raise a counter in kdc.db
at every write to ``records`` or to a distribution's status or expiry, whichever process makes it
(store.py), and the content also changes on its own when the earliest distribution expires.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.serial

from krs_plugin.kdc.store import PublishedRecord, Store
from krs_plugin.protocol import CHUNK_TYPE, chunk_name, manifest_name, pending_name
from krs_plugin.sqlitedb import StateWriteError

log = logging.getLogger(__name__)

SERIAL_KEY = "control_zone_serial"
DIGEST_KEY = "control_zone_digest"
PENDING_IDS = 50  # ids a node's _pending TXT lists, newest last (ControlZone._pending)
JOURNAL_VERSIONS = 100  # differences kept for IXFR
JOURNAL_RECORDS = 200_000  # records in all the kept differences, at most

Entry = tuple[str, int, bytes]
"""One record of the zone: owner (lower-case text, absolute), type, rdata in wire form."""


@dataclass(frozen=True)
class Difference:
    """From one serial to the next: records removed and added (RFC 1995 section 4)."""

    old: int
    new: int
    removed: frozenset[Entry]
    added: frozenset[Entry]


@dataclass(frozen=True)
class Snapshot:
    """One version of the zone."""

    serial: int
    entries: frozenset[Entry]
    digest: str
    next_change: int | None
    """When the earliest distribution in it expires: the content changes then by itself."""
    known: bool = True
    """False for the version kdc.db names at start, whose records are not in memory."""


Owners = dict[tuple[str, str, int], str]
"""Owner text by (node id, distribution id, sequence): what ``zone_entries`` made last time."""


def zone_entries(
    records: Iterable[PublishedRecord], origin: dns.name.Name, owners: Owners | None = None
) -> tuple[frozenset[Entry], int | None]:
    """The zone's records (not SOA or NS) from its published CHUNK records, and the earliest
    expiry among them. ``owners``: the owner names of the previous call, taken again instead of
    made anew, and replaced by this call's (serve rebuilds the zone at every distribution, and
    every record still published is in it: 36 us a record, 2,200 records with 100 nodes and 11
    distributions); the names are the same whoever makes them."""
    entries: set[Entry] = set()
    ids_by_node: dict[str, list[str]] = {}
    next_change: int | None = None
    known = owners if owners is not None else {}
    made: Owners = {}
    for record in records:
        key = (record.node_id, record.distribution_id, record.sequence)
        text = known.get(key)
        if text is None:
            node = dns.name.from_text(record.node_id)
            owner = (
                manifest_name(node, record.distribution_id, origin)
                if record.sequence == 0
                else chunk_name(record.sequence, node, record.distribution_id, origin)
            )
            text = owner.to_text().lower()
        made[key] = text
        entries.add((text, CHUNK_TYPE, record.rdata))
        ids = ids_by_node.setdefault(record.node_id, [])
        if not ids or ids[-1] != record.distribution_id:
            ids.append(record.distribution_id)  # records come by distribution serial
        if next_change is None or record.expires_at < next_change:
            next_change = record.expires_at
    for node_id, ids in ids_by_node.items():
        txt = dns.rdtypes.ANY.TXT.TXT(
            dns.rdataclass.IN, dns.rdatatype.TXT, [i.encode() for i in ids[-PENDING_IDS:]]
        )
        owner = pending_name(dns.name.from_text(node_id), origin)
        entries.add((owner.to_text().lower(), int(dns.rdatatype.TXT), txt.to_digestable()))
    if owners is not None:
        owners.clear()
        owners.update(made)  # only the records published now: it never outgrows the zone
    return frozenset(entries), next_change


def digest_of(entries: Iterable[Entry]) -> str:
    """A digest of the content that does not depend on the order of the records."""
    hasher = hashlib.sha256()
    for owner, rdtype, wire in sorted(entries):
        hasher.update(owner.encode() + b"\0" + rdtype.to_bytes(2, "big"))
        hasher.update(len(wire).to_bytes(4, "big") + wire)
    return hasher.hexdigest()


def compose(differences: Iterable[Difference]) -> tuple[set[Entry], set[Entry]]:
    """One condensed difference (removed, added) for several in a row (RFC 1995 section 5)."""
    removed: set[Entry] = set()
    added: set[Entry] = set()
    for difference in differences:
        for entry in difference.removed:
            if entry in added:
                added.discard(entry)
            else:
                removed.add(entry)
        for entry in difference.added:
            if entry in removed:
                removed.discard(entry)
            else:
                added.add(entry)
    return removed, added


def snapshot_now(store: Store, origin: dns.name.Name, now: float) -> Snapshot:
    """The version the zone has at ``now``, read only (``krs-kdc export`` while serve runs):
    the serial kdc.db records when the content is the same, else the one serve will give it."""
    entries, next_change = zone_entries(store.published_records(now=now), origin)
    digest = digest_of(entries)
    stored = int(store.get_meta(SERIAL_KEY) or 0)
    if digest == store.get_meta(DIGEST_KEY) and stored:
        return Snapshot(stored, entries, digest, next_change)
    return Snapshot(max(stored + 1, int(now)) & 0xFFFFFFFF, entries, digest, next_change)


@dataclass
class ZoneVersions:
    """The current version of the control zone and the differences to the recent ones."""

    store: Store
    origin: dns.name.Name
    current: Snapshot = field(init=False)
    journal: list[Difference] = field(default_factory=list, init=False)
    _seen_changes: int = field(default=-1, init=False)
    _owners: Owners = field(default_factory=dict, init=False)  # zone_entries's, kept

    def __post_init__(self) -> None:
        stored = self.store.get_meta(SERIAL_KEY)
        digest = self.store.get_meta(DIGEST_KEY) or ""
        self.current = Snapshot(int(stored) if stored else 0, frozenset(), digest, None, False)

    @property
    def serial(self) -> int:
        return self.current.serial

    def refresh(self, now: float) -> bool:
        """Rebuild the content if something may have changed; True when it did (a new serial:
        time to NOTIFY the secondaries)."""
        changes = self.store.control_zone_changes()
        due = self.current.next_change is not None and now > self.current.next_change
        if changes == self._seen_changes and not due:
            return False
        self._seen_changes = changes
        records = self.store.published_records(now=now)
        entries, next_change = zone_entries(records, self.origin, self._owners)
        digest = digest_of(entries)
        old = self.current
        if digest == old.digest and old.serial:  # the same content (at start: as kdc.db says)
            self.current = Snapshot(old.serial, entries, digest, next_change)
            return False
        serial = max(old.serial + 1, int(now)) & 0xFFFFFFFF
        self.current = Snapshot(serial, entries, digest, next_change)
        if old.known or not old.digest:  # an empty kdc.db starts from the empty zone
            self._remember(
                Difference(old.serial, serial, old.entries - entries, entries - old.entries)
            )
        else:  # the version before a restart: its records are not known, nor the difference
            self.journal.clear()
        try:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?), (?, ?)",
                    (SERIAL_KEY, str(serial), DIGEST_KEY, digest),
                )
        except StateWriteError as exc:  # served all the same; the next change writes it
            log.warning("control zone serial %d not recorded in kdc.db: %s", serial, exc)
        return True

    def above(self, serial: int) -> None:
        """A secondary serves ``serial``, ahead of this zone's (kdc.db restored from an older
        backup, whose serial lags the one the secondaries took): the next version gets a serial
        above it, or they would keep their copy as newer (RFC 1982) and ignore every change."""
        if dns.serial.Serial(serial) > dns.serial.Serial(self.current.serial):
            log.warning(
                "a secondary serves serial %d of %s, ahead of kdc.db's %d: the zone goes on "
                "from %d",
                serial,
                self.origin,
                self.current.serial,
                serial + 1,
            )
            self.current = Snapshot(serial, frozenset(), "", None, False)
            self._seen_changes = -1

    def since(self, serial: int) -> tuple[set[Entry], set[Entry]] | None:
        """The condensed difference from ``serial`` to the current version, or None when it is
        not known (too old, from before a restart, or not a serial this zone had)."""
        if serial == self.current.serial:
            return set(), set()
        for at, difference in enumerate(self.journal):
            if difference.old == serial:
                return compose(self.journal[at:])
        return None

    def _remember(self, difference: Difference) -> None:
        self.journal.append(difference)
        size = sum(len(d.removed) + len(d.added) for d in self.journal)
        while self.journal and (len(self.journal) > JOURNAL_VERSIONS or size > JOURNAL_RECORDS):
            dropped = self.journal.pop(0)
            size -= len(dropped.removed) + len(dropped.added)
