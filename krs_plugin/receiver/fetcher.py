"""Fetch one distribution's manifest and chunks over DNS/TCP from the control-zone servers.

Servers are tried in the configured order; each query is retried with backoff, and a server that
keeps failing hands over to the next one *keeping the chunks already fetched* (resume). Limits are
checked against the manifest before the first chunk is asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from krs_plugin.config import Address, FetchSettings
from krs_plugin.errors import IntegrityError, KrsError, WireError
from krs_plugin.protocol import (
    CHUNK,
    CHUNK_TYPE,
    Limits,
    Reassembler,
    check_distribution_id,
    chunk_name,
    decode_manifest,
    manifest_name,
    pending_name,
)

log = logging.getLogger(__name__)


class FetchError(KrsError):
    """No configured server could deliver a record after all retries."""


class NotPublished(FetchError):
    """The servers answered NXDOMAIN: nothing (any more) for this node under that id."""


@dataclass(frozen=True)
class Fetched:
    manifest: CHUNK
    chunks: list[CHUNK]
    """Data chunks in order; the pipeline empties the list once it has joined them."""
    server: Address


class Fetcher:
    def __init__(
        self,
        servers: Sequence[Address],
        control_zone: dns.name.Name,
        node_id: dns.name.Name,
        settings: FetchSettings,
        limits: Limits,
    ) -> None:
        self.servers = list(servers)
        self.control_zone = control_zone
        self.node_id = node_id
        self.settings = settings
        self.limits = limits
        self.rdtype = dns.rdatatype.RdataType.make(CHUNK_TYPE)

    def fetch(self, dist_id: str) -> Fetched:
        where = f"distribution {dist_id} for {self.node_id}"
        manifest, server = self._get(manifest_name(self.node_id, dist_id, self.control_zone), where)
        if manifest.sequence != 0:
            raise IntegrityError(f"{where}: the manifest name returned chunk {manifest.sequence}")
        decoded = decode_manifest(manifest.data, max_payload_bytes=self.limits.max_total_bytes)
        if decoded.is_inline:
            return Fetched(manifest, [], server)
        assembler = Reassembler(decoded, self.limits, where=where)  # limits before allocation
        chunks: dict[int, CHUNK] = {}
        for index in assembler.missing:
            name = chunk_name(index, self.node_id, dist_id, self.control_zone)
            chunk, server = self._get(name, f"{where}: chunk {index} of {decoded.chunk_count}")
            if chunk.sequence != index:
                raise IntegrityError(f"{where}: asked for chunk {index}, got {chunk.sequence}")
            assembler.add(chunk)
            chunks[index] = chunk
        return Fetched(manifest, [chunks[i] for i in sorted(chunks)], server)

    def pending_ids(self) -> list[str]:
        """Ids the KDC publishes for this node (``_pending`` TXT), from the first server that
        answers; the poller's way to find distributions whose NOTIFY was lost."""
        qname = pending_name(self.node_id, self.control_zone)
        errors = []
        for server in self.servers:
            query = dns.message.make_query(qname, dns.rdatatype.TXT)
            query.flags = 0
            try:
                reply = dns.query.tcp(
                    query, server.host, port=server.port, timeout=self.settings.timeout
                )
            except (OSError, dns.exception.DNSException, EOFError) as exc:
                errors.append(f"{server}: {exc or type(exc).__name__}")
                continue
            if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                errors.append(f"{server}: {dns.rcode.to_text(reply.rcode())}")
                continue
            ids: list[str] = []
            for rrset in reply.answer:
                if rrset.name == qname and rrset.rdtype == dns.rdatatype.TXT:
                    for rdata in rrset:
                        for item in rdata.strings:
                            text = item.decode("ascii", "replace")
                            try:
                                ids.append(check_distribution_id(text))
                            except WireError:
                                log.warning("ignoring malformed pending id %r", text)
            return ids
        raise FetchError(f"poll of {qname}: no control-zone server answered ({'; '.join(errors)})")

    def _get(self, qname: dns.name.Name, where: str) -> tuple[CHUNK, Address]:
        """One CHUNK record, trying each server with retries; the working server moves first."""
        errors = []
        not_found = 0
        for server in list(self.servers):
            for attempt in range(self.settings.retries):
                try:
                    rdata = self._query(qname, server)
                except NotPublished:
                    not_found += 1
                    break
                except (OSError, dns.exception.DNSException, WireError, EOFError) as exc:
                    errors.append(f"{server}: {exc or type(exc).__name__}")
                    log.info("%s: attempt %d at %s failed: %s", where, attempt + 1, server, exc)
                    time.sleep(self.settings.backoff * 2**attempt)
                    continue
                if self.servers[0] != server:  # fail over for the rest of this distribution
                    self.servers.remove(server)
                    self.servers.insert(0, server)
                return rdata, server
        if not_found:  # an authoritative "does not exist" is an answer, not an outage
            unreachable = f"; unreachable: {'; '.join(errors[-2:])}" if errors else ""
            raise NotPublished(f"{where}: not published ({qname} does not exist){unreachable}")
        raise FetchError(
            f"{where}: no control-zone server answered after {self.settings.retries} attempts "
            f"each ({'; '.join(errors[-3:])})"
        )

    def _query(self, qname: dns.name.Name, server: Address) -> CHUNK:
        query = dns.message.make_query(qname, self.rdtype, use_edns=0, payload=4096)
        query.flags = 0  # RD=0: the control zone is authoritative data
        reply = dns.query.tcp(query, server.host, port=server.port, timeout=self.settings.timeout)
        if reply.rcode() == dns.rcode.NXDOMAIN:
            raise NotPublished(str(qname))
        if reply.rcode() != dns.rcode.NOERROR:
            raise WireError(f"answered {dns.rcode.to_text(reply.rcode())}")
        for rrset in reply.answer:
            if rrset.name == qname and rrset.rdtype == self.rdtype and len(rrset) == 1:
                rdata = rrset[0]
                if isinstance(rdata, CHUNK):
                    return rdata
        raise WireError(f"no single CHUNK record for {qname} in the answer")
