"""Fetch one distribution's manifest and chunks over DNS/TCP from the control-zone servers.

Servers are tried in the configured order; each query is retried with backoff, and a server that
keeps failing hands over to the next one *keeping the chunks already fetched* (resume). Limits are
checked against the manifest before the first chunk is asked for.

A server that cannot be reached, times out or answers with an error rcode is *down*: the next one
is tried, and when none delivers, ``FetchError`` (stage ``fetch``, recorded ``failed``, tried
again). A server that answers with a record that does not parse or disagrees with the manifest
(Sequence, Total, a count or size over the limits) sent a *bad answer*: it is not asked again for
that record, the next server is; only when every server that answered sent a bad answer is the
distribution refused, ``BadAnswer`` with the stage of the check that found it (``wire``,
``integrity``) naming each server and what it sent (docs/operations.md, "Errors and what to do").

One fetch keeps its TCP connection to a server for the next record (the manifest, then its
chunks): a handshake and an accept at the KDC less per record (docs/protocol.md, "Transport").
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from krs_plugin.config import Address, FetchSettings
from krs_plugin.errors import IntegrityError, KrsError, WireError, stage_of
from krs_plugin.protocol import (
    CHUNK,
    CHUNK_TYPE,
    Limits,
    Manifest,
    Reassembler,
    check_distribution_id,
    chunk_name,
    decode_manifest,
    manifest_name,
    pending_name,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_DOWN = (OSError, EOFError, dns.exception.Timeout)
"""What a server that cannot be reached raises (refused, reset, closed, timed out)."""


class FetchError(KrsError):
    """No configured server could deliver a record after all retries: they are down."""

    stage = "fetch"


class NotPublished(FetchError):
    """The servers answered NXDOMAIN: nothing (any more) for this node under that id."""


class BadAnswer(KrsError):
    """Every server that answered sent a record that does not parse or disagrees with the
    manifest; ``stage`` is that of the check that refused the first (``wire``, ``integrity``)."""


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
        connections: dict[Address, socket.socket] = {}
        try:
            return self._fetch(dist_id, connections)
        finally:
            for sock in connections.values():
                sock.close()

    def _fetch(self, dist_id: str, connections: dict[Address, socket.socket]) -> Fetched:
        where = f"distribution {dist_id} for {self.node_id}"

        def read_manifest(rdata: CHUNK) -> tuple[CHUNK, Manifest]:
            if rdata.sequence != 0:
                raise IntegrityError(f"the manifest name returned chunk {rdata.sequence}")
            decoded = decode_manifest(rdata.data, max_payload_bytes=self.limits.max_total_bytes)
            if decoded.chunk_count != rdata.total:
                raise IntegrityError(
                    f"chunk_count {decoded.chunk_count} differs from the record's total "
                    f"{rdata.total}"
                )
            if not decoded.is_inline:
                Reassembler(decoded, self.limits, where=where)  # limits before allocation
            return rdata, decoded

        (manifest, decoded), server = self._get(
            manifest_name(self.node_id, dist_id, self.control_zone),
            f"{where}: manifest",
            read_manifest,
            where,
            connections,
        )
        if decoded.is_inline:
            return Fetched(manifest, [], server)
        assembler = Reassembler(decoded, self.limits, where=where)
        chunks: dict[int, CHUNK] = {}
        for index in assembler.missing:
            name = chunk_name(index, self.node_id, dist_id, self.control_zone)
            what = f"{where}: chunk {index} of {decoded.chunk_count}"
            check = _chunk_check(assembler, index, where)
            chunk, server = self._get(name, what, check, where, connections)
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

    def _get(
        self,
        qname: dns.name.Name,
        what: str,
        check: Callable[[CHUNK], T],
        where: str,
        connections: dict[Address, socket.socket],
    ) -> tuple[T, Address]:
        """One CHUNK record that passes ``check``, from the first server that sends one; the
        working server moves first. A server that is down is retried with backoff; one that
        sent a bad answer (or NXDOMAIN) is not asked again for this record (module docstring)."""
        down: list[str] = []
        bad: list[tuple[Address, KrsError]] = []
        not_found: list[Address] = []
        for server in list(self.servers):
            for attempt in range(self.settings.retries):
                try:
                    result = check(self._query(qname, server, connections))
                except NotPublished:
                    not_found.append(server)
                    break
                except (*_DOWN, FetchError) as exc:
                    down.append(f"{server}: {exc or type(exc).__name__}")
                    log.info("%s: attempt %d at %s failed: %s", what, attempt + 1, server, exc)
                    time.sleep(self.settings.backoff * 2**attempt)
                    continue
                except KrsError as exc:  # it answered, with something malformed or inconsistent
                    bad.append((server, exc))
                    log.warning("%s: answer from %s refused: %s", what, server, exc)
                    break
                if self.servers[0] != server:  # fail over for the rest of this distribution
                    self.servers.remove(server)
                    self.servers.insert(0, server)
                return result, server
        sent = [f"{s}: {str(e).removeprefix(f'{where}: ')}" for s, e in bad]
        unreachable = [f"unreachable: {'; '.join(down[-2:])}"] if down else []
        if not_found:  # an authoritative "does not exist" is an answer, not an outage
            also = "".join(f"; {text}" for text in [*unreachable, *sent])
            raise NotPublished(f"{what}: not published ({qname} does not exist){also}")
        if bad:  # every server that answered sent a bad answer: refused, not tried again
            server, first = bad[0]
            others = "; ".join([*sent[1:], *unreachable])
            raise BadAnswer(
                f"{what}: {server} sent a bad answer: {str(first).removeprefix(f'{where}: ')}"
                + (f" (and {others})" if others else ""),
                stage=stage_of(first),
            )
        raise FetchError(
            f"{what}: no control-zone server answered after {self.settings.retries} attempts "
            f"each ({'; '.join(down[-3:])})"
        )

    def _query(
        self, qname: dns.name.Name, server: Address, connections: dict[Address, socket.socket]
    ) -> CHUNK:
        """The CHUNK record ``server`` has for ``qname``: ``NotPublished`` for NXDOMAIN,
        ``FetchError`` for another error rcode, ``WireError`` for an answer that does not parse
        or holds no single CHUNK; a server that is down raises what ``_DOWN`` lists."""
        query = dns.message.make_query(qname, self.rdtype, use_edns=0, payload=4096)
        query.flags = 0  # RD=0: the control zone is authoritative data
        try:
            reply = self._exchange(query, server, connections)
        except (*_DOWN, WireError):
            raise
        except (dns.exception.DNSException, ValueError) as exc:
            raise WireError(f"the message does not parse: {exc or type(exc).__name__}") from exc
        if reply.rcode() == dns.rcode.NXDOMAIN or _nodata(reply):
            raise NotPublished(str(qname))
        if reply.rcode() != dns.rcode.NOERROR:
            raise FetchError(f"answered {dns.rcode.to_text(reply.rcode())}")
        for rrset in reply.answer:
            if rrset.name == qname and rrset.rdtype == self.rdtype and len(rrset) == 1:
                rdata = rrset[0]
                if isinstance(rdata, CHUNK):
                    return rdata
        raise WireError(f"no single CHUNK record for {qname} in its answer")

    def _exchange(
        self,
        query: dns.message.Message,
        server: Address,
        connections: dict[Address, socket.socket],
    ) -> dns.message.Message:
        """``query``'s answer over this fetch's connection to ``server``, opened if it has none.
        A connection the server closed since (idle, restarted) is replaced once; any failure
        closes the connection, so no late answer is read as the next query's."""
        sock = connections.pop(server, None)
        if sock is not None:
            try:
                reply = dns.query.tcp(query, server.host, timeout=self.settings.timeout, sock=sock)
            except (OSError, EOFError):
                sock.close()  # closed at the other end: a new connection below
            except BaseException:
                sock.close()
                raise
            else:
                connections[server] = sock
                return reply
        sock = socket.create_connection((server.host, server.port), self.settings.timeout)
        try:
            sock.setblocking(False)
            reply = dns.query.tcp(query, server.host, timeout=self.settings.timeout, sock=sock)
        except BaseException:
            sock.close()
            raise
        connections[server] = sock
        return reply


def _nodata(reply: dns.message.Message) -> bool:
    """An authoritative "the name exists, the record does not" (RFC 2308 NODATA: NOERROR, AA,
    no answer, the zone's SOA in the authority section). A primary that takes the KDC's UPDATEs
    serves a manifest's name as an empty non-terminal while the chunks under it are in and the
    manifest is not yet (docs/scale.md): not published yet, like NXDOMAIN. An empty answer
    without the SOA proves nothing and stays a bad answer."""
    return (
        reply.rcode() == dns.rcode.NOERROR
        and bool(reply.flags & dns.flags.AA)
        and not reply.answer
        and any(rrset.rdtype == dns.rdatatype.SOA for rrset in reply.authority)
    )


def _chunk_check(assembler: Reassembler, index: int, where: str) -> Callable[[CHUNK], CHUNK]:
    """Accept data chunk ``index`` into ``assembler``: its Sequence, Total and size must agree
    with the manifest (``IntegrityError``, ``LimitError`` otherwise; nothing is kept then)."""

    def check(rdata: CHUNK) -> CHUNK:
        if rdata.sequence != index:
            raise IntegrityError(f"{where}: asked for chunk {index}, got {rdata.sequence}")
        assembler.add(rdata)
        return rdata

    return check
