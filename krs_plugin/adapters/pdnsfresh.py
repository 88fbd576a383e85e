"""Which zones of a PowerDNS batch are *fresh*: their metadata need not be read before the batch
writes them (docs/servers/powerdns.md, "Many zones in one distribution").

A zone is fresh when everything its metadata would tell the batch is known without it:
- PowerDNS's zone list says it is not signed: no keys, not PRESIGNED;
- every backend pdns_server launched stores DNSSEC keys (its configuration, read once): the
  zone's backend takes keys and metadata, as the per-zone check would have found;
- it serves no CDS (asked over DNS, all zones down one connection): no records of an earlier
  marking (the delete records a zone keeps after leaving DNSSEC) wait to be replaced. The KRS
  writes and deletes CDS and CDNSKEY together, so one question a zone tells; a CDNSKEY left
  alone by hand is still caught by the verification, which compares both with the marking
  (the batch then fails and is rolled back).
The KRS's own metadata of such a zone (the timing of keys it no longer has, a marking left by
an earlier life) is then replaced by one write, never read: the CDS marking now travels in
``X-KRS-KEY-TIMING`` and wins over an ``X-KRS-CDS`` left there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from krs_plugin.adapters.dnsbatch import query_many

SQL_BACKENDS = ("gsqlite3", "gmysql", "gpgsql", "godbc")
"""Backends whose DNSSEC storage is the ``<backend>-dnssec=yes`` setting."""


def backends_store_keys(settings: Mapping[str, str]) -> bool:
    """Whether every backend in ``launch`` stores DNSSEC keys and metadata: a generic SQL
    backend with ``<name>-dnssec=yes``, the bind backend with a ``bind-dnssec-db``. Any other
    backend (or none listed) is not known to: its zones are then read as ever."""
    stores = _storing(settings)
    return bool(stores) and all(s is True for s in stores)


def backends_store_no_keys(settings: Mapping[str, str]) -> bool:
    """Whether no backend in ``launch`` stores DNSSEC keys (each a known one without its DNSSEC
    setting): no zone can take keys. A gsqlite3 without ``gsqlite3-dnssec`` still answers the
    metadata listing a batch reads (HTTP 200, empty), so only this says it before writing."""
    stores = _storing(settings)
    return bool(stores) and all(s is False for s in stores)


def _storing(settings: Mapping[str, str]) -> list[bool | None]:
    """For each launched backend: stores keys, does not, or not known (another backend)."""
    launched = [b.strip() for b in settings.get("launch", "").split(",") if b.strip()]
    out: list[bool | None] = []
    for spec in launched:
        name, _, instance = spec.partition(":")  # "gsqlite3:second" reads gsqlite3-second-*
        prefix = f"{name}-{instance}" if instance else name
        if name in SQL_BACKENDS:
            out.append(settings.get(f"{prefix}-dnssec", "no").strip().lower() == "yes")
        elif name == "bind":
            out.append(bool(settings.get(f"{prefix}-dnssec-db", "").strip()))
        else:
            out.append(None)
    return out


def without_cds(zones: Sequence[dns.name.Name], host: str, port: int) -> set[dns.name.Name]:
    """The zones the server answers for without a CDS RRset (NOERROR, no CDS in the answer).
    A zone it does not answer for, or answers otherwise, is left out: it is read as ever."""
    questions = [(zone, dns.rdatatype.CDS) for zone in zones]
    replies = query_many(questions, host, port)
    return {zone for (zone, _), reply in zip(questions, replies, strict=True) if _empty(reply)}


def _empty(reply: object) -> bool:
    if not isinstance(reply, dns.message.Message) or reply.rcode() != dns.rcode.NOERROR:
        return False
    return not any(rrset.rdtype == dns.rdatatype.CDS for rrset in reply.answer)


Metadata = dict[str, list[str]] | None
"""A zone's metadata by kind (``KeyStore.all_meta``); None where it cannot be listed."""


AHEAD = 1000
"""Zones whose metadata ``MetadataAhead`` reads before the batch comes to them (a slice's worth):
their answers take about a megabyte, where all 10,000 zones' raised the peak of ``krs run`` by
5 MB; 100 ahead kept the reads in step with the writes, which cost the batch 5 % (2,000 zones
in-process: 23.2 and 22.8 s against 21.9 and 21.7 s, all ahead; 1,000 ahead: 20.7 and 22.5 s
against 21.5 s, within the spread)."""


class MetadataAhead:
    """The metadata of a batch's fresh zones, read in a thread of its own, in the order the
    batch writes them, while it writes: PowerDNS answers these reads while its API waits on the
    disk for the batch's writes, so the read a fresh zone may need (whether it holds metadata
    of an earlier life, docs/servers/powerdns.md, section 5) no longer waits in line with them.
    At most ``AHEAD`` zones are read ahead; each zone's result is handed out once, and an error
    reading it is raised where it is taken."""

    def __init__(
        self,
        read: Callable[[dns.name.Name], Metadata],
        zones: Sequence[dns.name.Name],
        ahead: int = AHEAD,
    ) -> None:
        self._read = read
        self._zones = list(zones)
        self._position = {zone: n for n, zone in enumerate(self._zones)}
        self._ahead = ahead
        self._next = 0
        self._reads: OrderedDict[dns.name.Name, Future[Metadata]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdns-metadata")
        self._fill(0)

    def _fill(self, start: int) -> None:
        self._next = max(self._next, start)
        while len(self._reads) < self._ahead and self._next < len(self._zones):
            zone = self._zones[self._next]
            self._next += 1
            self._reads[zone] = self._pool.submit(self._read, zone)

    def take(self, zone: dns.name.Name) -> Future[Metadata] | None:
        """The read of ``zone`` (its result waited for by the caller); None when it was not
        read ahead (then the caller reads it). Reads of zones before it, which the batch
        passed by, are dropped."""
        position = self._position.get(zone)
        if position is None:
            return None
        while self._reads:
            first = next(iter(self._reads))
            if self._position[first] >= position:
                break
            self._reads.popitem(last=False)[1].cancel()
        found = self._reads.pop(zone, None)
        self._fill(position + 1)
        return found

    def close(self) -> None:
        """Reads not yet made are not made."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reads.clear()
