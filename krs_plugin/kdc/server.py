"""``krs-kdc serve``: the control zone over UDP and TCP, NOTIFY to nodes, confirmations back.

Answers, authoritatively: SOA and NS at the control-zone apex, and CHUNK queries for published
distributions (NXDOMAIN otherwise). Everything else is REFUSED; an unparsable query gets FORMERR
when its header can be read and is dropped when not. Over UDP an answer larger than the client's
buffer is truncated (TC=1) so the client retries over TCP.

NOTIFY goes to each target node with exponential backoff until the node answers NOERROR.
Confirmations are NOTIFY messages from nodes carrying EDNS0 option 65004 (docs/protocol.md
section 6); when the node enrolled a signing key, the report's JWS must verify with it and the
report must be bound to this distribution, this node, the present time and keys the distribution
sent (``confirmation.check_binding``); a node without one is known by its source address only.
Enrollment UPDATEs (docs/protocol.md section 7) go to ``kdc/enroll.py``; resync requests (ours,
section 9: a node asks for its keys again) to ``kdc/resync.py``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
from dns.rdtypes.ANY.SOA import SOA

from krs_plugin.confirmation import (
    Expected,
    check_binding,
    failure_of,
    key_ref,
    same_outcome,
    served_zones,
    verify_report,
)
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import (
    ConnectionGuard,
    default_max_connections,
    formerr_reply,
    parse_query,
    quiet_accept_errors,
    serve_dns,
    udp_exchange,
)
from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.kdc import noderekey
from krs_plugin.kdc.engine import DEFAULT_RESEND_AFTER, Engine, EngineOptions
from krs_plugin.kdc.enroll import EnrollmentDesk
from krs_plugin.kdc.fleet import LagWatch
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.metrics import KdcMetrics, ServerHealth, health_of
from krs_plugin.kdc.parentwatch import ParentDesk, ParentTask
from krs_plugin.kdc.publisher import Publisher, PublishError, PublishTarget
from krs_plugin.kdc.resync import RESYNC_INTERVAL, ResyncDesk
from krs_plugin.kdc.signroll import advance as advance_roll
from krs_plugin.kdc.signroll import note_report
from krs_plugin.kdc.store import DistributionRow, NodeRow, Store
from krs_plugin.kdc.wake import Wakeup, forget_listen, is_local, is_wake, record_listen
from krs_plugin.kdc.xfr import TransferPolicy, refused, soa_rrset, transfer
from krs_plugin.kdc.zoneversions import Entry, ZoneVersions
from krs_plugin.logs import context
from krs_plugin.metrics import serve_http
from krs_plugin.protocol import (
    CHUNK_TYPE,
    find_chunk_option,
    notify_name,
    parse_chunk_query,
    parse_chunk_wire,
    parse_notify_name,
    parse_pending_name,
)
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS
from krs_plugin.protocol.manifest import DEFAULT_CLOCK_SKEW
from krs_plugin.resync import is_resync
from krs_plugin.sqlitedb import FailureLog, StateWriteError

log = logging.getLogger(__name__)
# kdc.db failing (a full disk): one line per kind a minute, no traceback (docs/kdc.md, "Serve")
state_failures = FailureLog(log)
STATE_RETRY = 5.0  # no NOTIFY round for this long after one could not be recorded
# What each kind of kdc.db write failure says once kdc.db takes a write again.
RECOVERED = {
    "confirmation": "confirmations are recorded again",
    "notify": "NOTIFYs are recorded again",
    "expiry": "expiry and key states are recorded again",
    "engine": "lifecycle steps are recorded again",
    "parent": "what the parents serve is recorded again",
}


def state_written() -> None:
    """kdc.db took a write (a confirmation, a NOTIFY): every kind of write failure is over, also
    one nothing will try again (a NOTIFY whose answer was not recorded, confirmed since), which
    /healthz would otherwise report (docs/operations.md, "The KDC: metrics and alerts")."""
    for kind, message in RECOVERED.items():
        state_failures.recovered(kind, message)


RECORD_TTL = 300
UDP_DEFAULT_PAYLOAD = 512
NOTIFY_TIMEOUT = 2.0
MAX_TCP_MESSAGE = 65535
MAX_NOTIFY_IN_FLIGHT = 64  # NOTIFYs awaiting an answer at once, each holding a UDP socket
MAX_PARENT_CHECKS = 8  # zones whose parent is being asked at once (threads)


@dataclass(frozen=True)
class ServeOptions:
    listen: tuple[tuple[str, int], ...]
    notify_retry_base: float = 1.0
    notify_retry_max: float = 60.0
    tick: float = 0.5
    clock_skew: float = DEFAULT_CLOCK_SKEW  # allowed in a signed confirmation's ``time``
    # TCP connections per listener (None: from the descriptor limit) and their idle timeout;
    # docs/kdc.md, "Serve", and docs/operations.md, "Resource limits".
    max_connections: int | None = None
    tcp_idle_timeout: float = 30.0
    max_notify_in_flight: int = MAX_NOTIFY_IN_FLIGHT
    resync_interval: float = RESYNC_INTERVAL  # at most one resend per node in this time
    resend_after: float = DEFAULT_RESEND_AFTER  # the engine's step resend (engine.EngineOptions)
    engine_interval: float = 1.0  # seconds between the lifecycle engine's passes
    metrics: tuple[str, int] | None = None  # /metrics and /healthz (kdc/metrics.py); None: off
    # The parent watch's backoff (kdc/parentwatch.py): first wait, doubling up to the max.
    parent_check_interval: float = 60.0
    parent_check_max: float = 3600.0
    # The control zone as a primary (docs/scale.md): secondaries NOTIFYed at every new serial,
    # and who may transfer the zone (kdc/xfr.py); nothing by default.
    also_notify: tuple[tuple[str, int], ...] = ()
    transfers: TransferPolicy = field(default_factory=TransferPolicy)
    # Or: the zone published into an existing primary by UPDATE (kdc/publisher.py)
    publish: PublishTarget | None = None


class ControlZone:
    """Builds answers from the store; no network code, so it is testable on its own."""

    def __init__(
        self,
        store: Store,
        control_zone: str,
        nameserver: str = "ns",
        *,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        resync: ResyncDesk | None = None,
    ) -> None:
        self.store = store
        self.clock_skew = clock_skew
        self.resync = resync  # resync requests (ours, kdc/resync.py); None: refused
        self.origin = dns.name.from_text(control_zone)
        self.ns = dns.name.Name((nameserver.encode(), *self.origin.labels))
        self.chunk_type = dns.rdatatype.RdataType.make(CHUNK_TYPE)
        # The zone's versions and SOA serial (kdc/zoneversions.py); None: the clock's second
        self.versions: ZoneVersions | None = None

    def soa(self) -> SOA:
        """The apex SOA: the serial of the current version (the clock's without versions).
        Refresh 1 h, retry 10 min, expire 1 day: a secondary keeps serving the published
        distributions for a day without the KDC (docs/scale.md)."""
        serial = (
            self.versions.serial if self.versions is not None else int(time.time()) & 0xFFFFFFFF
        )
        text = f"{self.ns} hostmaster.{self.origin} {serial} 3600 600 86400 {RECORD_TTL}"
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, text)
        assert isinstance(rdata, SOA)
        return rdata

    def answer(self, query: dns.message.Message, source: str) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            # RFC 1035 4.1.2 and RFC 1996: one question. Not echoed back: a hundred questions
            # would not fit the answer (and would make this server an amplifier).
            response.question = []
            response.set_rcode(dns.rcode.FORMERR)
            response.flags &= ~dns.flags.AA
            return response
        if query.opcode() == dns.opcode.NOTIFY:
            if is_resync(query, self.origin):
                if self.resync is None:
                    log.warning("resync request from %s refused: not taken here", source)
                    response.set_rcode(dns.rcode.REFUSED)
                    return response
                return self.resync.answer(query, response, source)
            return self._confirmation(query, response, source)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return response
        if qname == self.origin and qtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            rdata = self.soa() if qtype == dns.rdatatype.SOA else self.ns_rdata()
            response.answer.append(dns.rrset.from_rdata_list(qname, RECORD_TTL, [rdata]))
            return response
        if qtype == dns.rdatatype.TXT:
            try:
                node = parse_pending_name(qname, self.origin)
            except KrsError:
                node = None
            if node is not None:
                return self._pending(response, qname, node)
        if qtype != self.chunk_type:
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return response
        try:
            parsed = parse_chunk_query(qname, self.origin)
        except KrsError:
            return self._nxdomain(response)
        wire = self.store.record(parsed.distribution_id, parsed.node_id.to_text(), parsed.index)
        if wire is None:
            return self._nxdomain(response)
        rdata = parse_chunk_wire(wire, CHUNK_TYPE)
        response.answer.append(dns.rrset.from_rdata_list(qname, RECORD_TTL, [rdata]))
        return response

    def _pending(
        self, response: dns.message.Message, qname: dns.name.Name, node: dns.name.Name
    ) -> dns.message.Message:
        """TXT with the ids published for ``node``, newest last; NODATA when there are none."""
        ids = self.store.published_ids(node.to_text())[-50:]
        if ids:
            text = " ".join(f'"{i}"' for i in ids)
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
            response.answer.append(dns.rrset.from_rdata_list(qname, 60, [rdata]))
        else:
            response.authority.append(
                dns.rrset.from_rdata_list(self.origin, RECORD_TTL, [self.soa()])
            )
        return response

    def ns_rdata(self) -> dns.rdata.Rdata:
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, self.ns.to_text())

    def _nxdomain(self, response: dns.message.Message) -> dns.message.Message:
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_rdata_list(self.origin, RECORD_TTL, [self.soa()]))
        return response

    def _confirmation(
        self, query: dns.message.Message, response: dns.message.Message, source: str
    ) -> dns.message.Message:
        """A node's confirmation NOTIFY: find the node, check the report, record the outcome.

        Every refusal is REFUSED (FORMERR for a report that is not JSON), logged at warning with
        its reason, and records nothing (docs/kdc.md, "Confirmations")."""
        try:
            dist_id = parse_notify_name(query.question[0].name, self.origin)
        except (KrsError, IndexError) as exc:
            log.warning("confirmation from %s refused: %s", source, exc)
            response.set_rcode(dns.rcode.REFUSED)
            return response
        option = find_chunk_option(query.options)
        report: dict[str, object] = {}
        if option is not None and option.content == CONTENT_KEY_STATUS:
            try:
                loaded = json.loads(option.body)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                loaded = None
            if not isinstance(loaded, dict):
                log.warning("confirmation from %s for %s: malformed report", source, dist_id)
                response.set_rcode(dns.rcode.FORMERR)
                return response
            report = loaded
        rows = self._rows(dist_id, report)
        if not rows:
            log.warning("confirmation from %s for unknown distribution %s", source, dist_id)
            response.set_rcode(dns.rcode.REFUSED)
            return response
        node_id, unknown = self._identify(report, rows, source)
        if node_id is None:
            log.warning(
                "confirmation from %s for %s: no matching node: %s", source, dist_id, unknown
            )
            response.set_rcode(dns.rcode.REFUSED)
            return response
        row = next(r for r in rows if r.node_id == node_id)
        problem = self._check_report(report, row)
        if problem is None:
            problem = self._check_recorded(report, row)
        if problem == "":
            log.info("confirmation %s for %s already recorded; nothing changed", dist_id, node_id)
            return response
        if problem is not None:
            log.warning(
                "confirmation for %s from node %s (%s) rejected: %s",
                dist_id,
                node_id,
                source,
                problem,
            )
            response.set_rcode(dns.rcode.REFUSED)
            return response
        failure = failure_of(report)  # failed_keys (tdns), or ours: outcome, stage, error
        status = "failed" if failure is not None else "confirmed"
        try:
            self.store.set_distribution_status(
                dist_id,
                node_id,
                status,
                now=time.time(),
                error=None if failure is None else failure.error,
                stage=None if failure is None else failure.stage,
                report=json.dumps(report),
                served=self._served(report, node_id),
            )
        except StateWriteError as exc:  # never dropped: the node sends it again until NOERROR
            state_failures.error(
                "confirmation", f"confirmation not recorded, answered SERVFAIL: {exc}"
            )
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        state_written()
        self._note_trust(node_id, dist_id, report)
        if failure is not None:
            log.warning(
                "distribution %s for %s failed (%s at %s): %s",
                dist_id,
                node_id,
                failure.outcome,
                failure.stage or "a stage it did not name",
                failure.error,
                extra=context(distribution_id=dist_id, stage=failure.stage, outcome="failed"),
            )
        else:
            log.info("distribution %s for %s %s", dist_id, node_id, status)
            try:  # verified with the node's current key: a switched rotation is complete
                noderekey.confirmed(self.store, node_id, now=time.time())
            except (StateWriteError, KrsError) as exc:  # the next confirmation completes it
                log.warning("node %s: key rotation completion not recorded: %s", node_id, exc)
        return response

    def _note_trust(self, node_id: str, dist_id: str, report: dict[str, object]) -> None:
        """The KDC keys the node's verified report says it trusts (``kdc_keys``, ours): what
        a signing-key roll waits for (kdc/signroll.py). Not recorded: asked again later."""
        try:
            note_report(self.store, node_id, dist_id, int(dist_id, 16), report)
        except StateWriteError as exc:
            log.warning("confirmation %s from %s: trusted keys not recorded: %s",
                        dist_id, node_id, exc)  # fmt: skip

    def _rows(self, dist_id: str, report: dict[str, object]) -> list[DistributionRow]:
        """The rows a report may answer: the one of the node it names when that node is a
        target (one row, not the whole fleet's: reading every row made each confirmation cost
        as much as the fleet is large), else every row of the distribution."""
        claimed = report.get("node_id")
        if isinstance(claimed, str):
            rows = self.store.distributions(dist_id=dist_id, node_id=key_ref(claimed, "")[0])
            if rows:
                return rows
        return self.store.distributions(dist_id=dist_id)

    def _identify(
        self, report: dict[str, object], rows: list[DistributionRow], source: str
    ) -> tuple[str | None, str]:
        """The target node the report is from, or None and why not."""
        claimed = report.get("node_id")
        targets = {r.node_id for r in rows}
        if isinstance(claimed, str):
            name = key_ref(claimed, "")[0]
            if name not in targets:
                return None, f"the report names node {claimed[:255]!r}, not a target of it"
            node = self.store.find_node(name)
            if node is not None and not node.signing_pubkey and not _sent_from(node, source):
                # tdns: a node without a signing key is known by its source address only.
                return None, f"{name} has no signing key and {source} is not its address"
            return name, ""
        # tdns: the node is the one whose notify address has the packet's source IP.
        node_id: str
        for node_id in sorted(targets):
            node = self.store.find_node(node_id)
            if node is not None and _sent_from(node, source):
                return node_id, ""
        return None, "no target of it has that address"

    def _check_report(self, report: dict[str, object], row: DistributionRow) -> str | None:
        """Why a report from ``row``'s node must be refused, or None: the signature by the node's
        key, then what the signed report is bound to (docs/protocol.md section 6)."""
        node = self.store.find_node(row.node_id)
        if node is None:
            return "node no longer exists"
        if not node.signing_pubkey:
            return None  # a tdns node without a signing key: identified by address only
        expected = Expected(
            row.id, row.node_id, row.created_at, self.store.sent_keys(row.id, row.node_id)
        )
        try:
            verify_report(
                report, JoseKey.from_jwk_text(node.signing_pubkey, f"node {node.id} signing key")
            )
            check_binding(report, expected, now=time.time(), clock_skew=self.clock_skew)
        except KrsError as exc:
            return str(exc)
        return None

    def _served(self, report: dict[str, object], node_id: str) -> list[dict[str, object]]:
        """The report's ``served`` zones to record (docs/kdc.md, "What nodes serve"), zone
        names made absolute; none from a node without a signing key: its unsigned report was
        not checked (``check_binding`` is what refuses a zone the distribution did not send)."""
        node = self.store.find_node(node_id)
        if node is None or not node.signing_pubkey:
            return []
        return [{**z, "zone": key_ref(z["zone"], "")[0]} for z in served_zones(report)]

    @staticmethod
    def _check_recorded(report: dict[str, object], row: DistributionRow) -> str | None:
        """For a distribution already confirmed or failed: "" for a copy of the recorded report
        sent again (nothing to do, answered NOERROR), a reason to refuse, or None to record it.

        ``confirmed`` is final. ``failed`` is not: a node tries a failed apply again, and its
        newer report (another failure, or the success) replaces the one recorded; an older one
        (sent before it, arriving late) does not."""
        if row.status not in ("confirmed", "failed") or row.report is None:
            return None
        try:
            recorded = json.loads(row.report)
        except json.JSONDecodeError:
            recorded = {}
        if not isinstance(recorded, dict):
            recorded = {}
        signature = report.get("signature")
        if signature is not None and signature == recorded.get("signature"):
            return f"a replay of the report already recorded ({row.status})"
        if same_outcome(recorded, report):
            return ""
        if row.status == "confirmed":
            return "already recorded as confirmed with a different report"
        then, now = recorded.get("time"), report.get("time")
        if isinstance(then, int) and isinstance(now, int) and now < then:
            return f"older than the failure report already recorded (time {now} < {then})"
        return None


def _sent_from(node: NodeRow, source: str) -> bool:
    """Whether ``source`` is the IP address of the node's notify address (tdns's identification)."""
    return node.notify_address.rpartition(":")[0].strip("[]") == source


def _udp_limit(query: dns.message.Message) -> int:
    return max(UDP_DEFAULT_PAYLOAD, query.payload) if query.edns >= 0 else UDP_DEFAULT_PAYLOAD


def _wire(response: dns.message.Message, limit: int) -> bytes:
    """``response`` in at most ``limit`` bytes: when it does not fit, the same answer emptied
    with TC set, so the client retries over TCP; when even that does not fit (questions and
    EDNS options larger than the client's buffer), without the question too."""
    try:
        return bytes(response.to_wire(max_size=limit))
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
    try:
        return bytes(response.to_wire(max_size=limit))
    except dns.exception.TooBig:
        response.question = []
        response.use_edns(False)
        return bytes(response.to_wire(max_size=limit))


def _tsig_refusal(wire: bytes) -> bytes | None:
    """NOTAUTH for a query whose TSIG did not verify (unknown key, bad MAC, bad time), unsigned
    as RFC 8945 section 5.2 has it, with the question so the client can match it."""
    try:
        query = dns.message.from_wire(wire, keyring=lambda message, name: False)
    except (dns.exception.DNSException, ValueError):
        return None
    if query.flags & dns.flags.QR:
        return None
    response = dns.message.Message(id=query.id)
    response.flags = dns.flags.QR | (query.flags & dns.flags.RD)
    response.set_opcode(query.opcode())
    response.question = list(query.question)
    response.set_rcode(dns.rcode.NOTAUTH)
    return bytes(response.to_wire(max_size=65535))


def is_transfer(query: dns.message.Message) -> bool:
    return (
        query.opcode() == dns.opcode.QUERY
        and len(query.question) == 1
        and query.question[0].rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR)
    )


class NotifySchedule:
    """Which secondary is due a NOTIFY of which serial: at once after a change, then again with
    exponential backoff until it answers; a newer serial starts afresh."""

    def __init__(self, base: float, ceiling: float) -> None:
        self.base, self.ceiling = base, ceiling
        self.waiting: dict[tuple[str, int], tuple[int, int, float]] = {}  # serial, tries, due
        self.sending: set[tuple[str, int]] = set()

    def changed(self, target: tuple[str, int], serial: int) -> None:
        self.waiting[target] = (serial, 0, 0.0)

    def due(self, now: float) -> list[tuple[str, int]]:
        ready = [t for t, (_, _, at) in self.waiting.items() if at <= now and t not in self.sending]
        self.sending.update(ready)
        return ready

    def answered(self, target: tuple[str, int], serial: int) -> None:
        self.sending.discard(target)
        if self.waiting.get(target, (None,))[0] == serial:
            del self.waiting[target]

    def failed(self, target: tuple[str, int], serial: int, now: float) -> None:
        self.sending.discard(target)
        entry = self.waiting.get(target)
        if entry is None or entry[0] != serial:
            return  # a newer serial is due already
        tries = entry[1] + 1
        self.waiting[target] = (serial, tries, now + min(self.ceiling, self.base * 2**tries))


async def secondary_serials(
    origin: dns.name.Name, secondaries: tuple[tuple[str, int], ...]
) -> list[int]:
    """The SOA serial each secondary serves now (those that answer within 2 s), asked once at
    start so that the zone's next serial is above all of them (ZoneVersions.above)."""

    async def one(host: str, port: int) -> int | None:
        query = dns.message.make_query(origin, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        try:
            reply = await udp_exchange(query, host, port, 2.0)
        except (TimeoutError, OSError, dns.exception.DNSException):
            return None
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA and rrset.name == origin:
                return int(rrset[0].serial)
        return None

    found = await asyncio.gather(*(one(host, port) for host, port in secondaries))
    return [serial for serial in found if serial is not None]


def _is_update(wire: bytes) -> bool:
    """A query (QR clear) with opcode UPDATE, read from the header alone: the SIG(0) after it
    must be checked on the bytes as they came."""
    return len(wire) >= 12 and not wire[2] & 0x80 and (wire[2] >> 3) & 0x0F == dns.opcode.UPDATE


class KdcServer:
    """UDP and TCP listeners plus the NOTIFY and expiry loops."""

    def __init__(
        self,
        store: Store,
        zone: ControlZone,
        options: ServeOptions,
        enrollment: EnrollmentDesk | None = None,
    ) -> None:
        self.store = store
        self.zone = zone
        self.options = options
        self.enrollment = enrollment
        self.rekey: noderekey.RekeyDesk | None = None  # node-key rotation UPDATEs (serve)
        self._rekey_due = 0.0
        self.bound: list[tuple[str, int]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.BaseTransport] = []
        self.notify_hold = 0.0  # no NOTIFY round before this time (kdc.db not taking changes)
        # A round at once, not at the next tick: `krs-kdc distribute` woke us (kdc/wake.py).
        self.wakeup = Wakeup()
        # NOTIFYs awaiting an answer, and those due that wait for one of their places: each
        # that ends hands its place to the next at once (``_notify_done``), not at the tick.
        self.in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.notify_backlog: collections.deque[tuple[str, str]] = collections.deque()
        self.engine: Engine | None = None  # the lifecycle engine, when serve has the identity
        self.parents: ParentDesk | None = None  # the parent watch (with the engine)
        self.lag_watch = LagWatch()  # logs a node falling behind, once (kdc/fleet.py)
        self._engine_due = 0.0
        # NOTIFY to the control zone's secondaries (ServeOptions.also_notify)
        self.secondaries = NotifySchedule(options.notify_retry_base, options.notify_retry_max)
        self._secondary_tasks: set[asyncio.Task[None]] = set()
        self.publisher = (
            Publisher(options.publish, zone.origin) if options.publish is not None else None
        )
        self._publishing: asyncio.Task[None] | None = None
        # The engine's passes and kdc.db's failures, for /metrics and /healthz (kdc/metrics.py)
        self.health = ServerHealth(state_failures, engine_interval=options.engine_interval)

    def handle(self, wire: bytes, source: str, *, udp: bool) -> bytes | list[bytes] | None:
        if (
            self.rekey is not None
            and _is_update(wire)
            and noderekey.looks_like_rekey(wire, self.zone.origin)
        ):
            return self.rekey.handle(wire, source) or None  # node-key rotation (kdc/noderekey.py)
        if self.enrollment is not None and _is_update(wire):
            return self.enrollment.handle(wire, source) or None
        try:
            query = parse_query(wire, keyring=self.options.transfers.keyring)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadSignature, dns.tsig.BadTime) as exc:
            log.warning("query from %s refused: TSIG: %s", source, exc or type(exc).__name__)
            return _tsig_refusal(wire)
        except (dns.exception.DNSException, KrsError, ValueError) as exc:
            log.info("malformed query from %s: %s", source, exc)
            return formerr_reply(wire)
        if query.flags & dns.flags.QR:
            return None
        if is_wake(query, self.zone.origin) and is_local(source, self.bound):
            self.wakeup.set()  # another krs-kdc command changed kdc.db (kdc/wake.py)
            return _wire(dns.message.make_response(query), MAX_TCP_MESSAGE)
        if is_transfer(query):
            return self.transfer(query, source, udp=udp)
        try:
            response = self.zone.answer(query, source)
        except (sqlite3.Error, StateWriteError) as exc:  # kdc.db failing: SERVFAIL, one line
            state_failures.error("answer", f"state database {self.store.path}: {exc}")
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            state_failures.recovered("answer", "queries are answered from kdc.db again")
        return _wire(response, _udp_limit(query) if udp else MAX_TCP_MESSAGE)

    def transfer(
        self, query: dns.message.Message, source: str, *, udp: bool
    ) -> bytes | list[bytes]:
        """An AXFR or IXFR of the control zone, when ``--allow-transfer`` (and the TSIG key)
        allow it (kdc/xfr.py). Over UDP an IXFR gets the current SOA alone (RFC 1995 section
        4), an AXFR is refused: both go over TCP."""
        question = query.question[0]
        kind = dns.rdatatype.to_text(question.rdtype)
        versions = self.zone.versions
        if question.name != self.zone.origin or versions is None:
            return refused(query, dns.rcode.NOTAUTH if versions else dns.rcode.REFUSED)
        problem = self.options.transfers.refusal(query, source)
        if problem is not None:
            log.warning("%s of %s from %s refused: %s", kind, question.name, source, problem)
            return refused(query, dns.rcode.REFUSED)
        if udp and question.rdtype == dns.rdatatype.AXFR:
            return refused(query, dns.rcode.REFUSED)
        try:
            versions.refresh(time.time())
        except sqlite3.Error as exc:  # kdc.db failing: the version in memory is still whole
            state_failures.error("answer", f"state database {self.store.path}: {exc}")
        apex = [dns.rrset.from_rdata(self.zone.origin, RECORD_TTL, self.zone.ns_rdata())]
        soa = self.zone.soa()
        if udp:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            response.answer.append(soa_rrset(self.zone.origin, soa, versions.serial, RECORD_TTL))
            return bytes(response.to_wire(max_size=_udp_limit(query)))
        messages = transfer(query, versions, apex, soa, RECORD_TTL)
        log.info(
            "%s of %s serial %d to %s in %d message(s)",
            kind,
            question.name,
            versions.serial,
            source,
            len(messages),
        )
        return messages

    async def start(self) -> None:
        options = self.options
        connections = options.max_connections or default_max_connections(len(options.listen))
        for host, port in options.listen:
            guard = ConnectionGuard(
                f"control-zone listener {host} port {port}", connections, options.tcp_idle_timeout
            )
            try:
                transport, server, bound = await serve_dns(
                    lambda wire, source, udp: self.handle(wire, source, udp=udp),
                    host,
                    port,
                    guard=guard,
                )
            except OSError as exc:
                self.close()
                raise ConfigError(
                    f"--listen {host}:{port}: cannot listen there: {exc.strerror or exc}"
                ) from exc
            self._transports.append(transport)
            self._servers.append(server)
            self.bound.append((host, bound))
            log.info("serving control zone %s on %s port %d", self.zone.origin, host, bound)

    async def notify_loop(self) -> None:
        """Send NOTIFY for pending distributions until each node answers; expire old ones.

        Each NOTIFY runs as its own task, so a silent node never delays the others or expiry.
        """
        in_flight = self.in_flight
        while True:
            now = time.time()
            try:
                for dist_id, node_id in self.store.expire_distributions(now=now):
                    log.info("distribution %s for %s expired and was withdrawn", dist_id, node_id)
                for zone, tag, state in self.store.advance_key_states(now=now):
                    log.info("key %d of %s is now %s", tag, zone, state)
            except StateWriteError as exc:  # the next tick tries again
                state_failures.error("expiry", f"expiry and key states not recorded: {exc}")
            else:
                state_failures.recovered("expiry", RECOVERED["expiry"])
            self.lag_watch.tick(self.store.db, now)  # every LAG_CHECK_INTERVAL
            if self.engine is not None and now >= self._engine_due:
                self._engine_due = now + self.options.engine_interval
                self.run_engine(self.engine, now)
            if self.rekey is not None and now >= self._rekey_due:  # the maximum node-key age
                self._rekey_due = now + noderekey.POLICY_CHECK
                try:
                    noderekey.ask_due(self.store, self.rekey.identity, now=now)
                except (StateWriteError, KrsError) as exc:  # the next check asks again
                    log.warning("node key ages: asking for rotations failed: %s", exc)
            self.refresh_zone(now)
            for key in [k for k, task in in_flight.items() if task.done()]:
                del in_flight[key]
            self.notify_backlog.clear()
            if self.publication_behind():  # nodes would ask the primary for what it lacks
                await self.wakeup.wait(self.options.tick)
                continue
            for d in self.store.distributions(status="pending"):
                key = (d.id, d.node_id)
                if key in in_flight or d.notify_acked_at is not None:
                    continue
                if now >= self.notify_hold and self._due(d.notified_at, d.notify_attempts, now):
                    if len(in_flight) < self.options.max_notify_in_flight:
                        self._launch_notify(key)
                    else:  # descriptors stay free for queries: it waits for a place
                        self.notify_backlog.append(key)
            await self.wakeup.wait(self.options.tick)

    def _launch_notify(self, key: tuple[str, str]) -> None:
        task = asyncio.create_task(self._notify(*key))
        self.in_flight[key] = task
        task.add_done_callback(lambda _task: self._notify_done(key))

    def _notify_done(self, key: tuple[str, str]) -> None:
        """A NOTIFY ended: its place goes to the next one due at once, not at the next tick,
        so the 65th node of a fleet does not wait 0.5 s for the first 64 (and no round reads
        every pending distribution again for it)."""
        self.in_flight.pop(key, None)
        if time.time() < self.notify_hold:
            return
        while self.notify_backlog and len(self.in_flight) < self.options.max_notify_in_flight:
            following = self.notify_backlog.popleft()
            if following not in self.in_flight:
                self._launch_notify(following)

    def publication_behind(self) -> bool:
        """With ``--publish-to``: the primary does not hold the current version yet. Nodes are
        NOTIFYed only once it does, since they fetch from it (docs/scale.md)."""
        versions = self.zone.versions
        return (
            self.publisher is not None
            and versions is not None
            and self.publisher.synced != versions.serial
        )

    def refresh_zone(self, now: float) -> None:
        """A new version of the control zone when what it serves changed: a new SOA serial,
        and NOTIFY to every ``--also-notify`` secondary (kdc/xfr.py)."""
        versions = self.zone.versions
        if versions is None:
            return
        try:
            changed = versions.refresh(now)
        except sqlite3.Error as exc:
            state_failures.error("answer", f"state database {self.store.path}: {exc}")
            return
        if changed:
            log.info("control zone %s is now serial %d", self.zone.origin, versions.serial)
            for target in self.options.also_notify:
                self.secondaries.changed(target, versions.serial)
        for target in self.secondaries.due(now):
            task = asyncio.create_task(self._notify_secondary(target, versions.serial))
            self._secondary_tasks.add(task)
            task.add_done_callback(self._secondary_tasks.discard)
        publisher = self.publisher
        if (
            publisher is not None
            and publisher.synced != versions.serial
            and now >= publisher.due_at
            and self._publishing is None
        ):
            known = None if publisher.synced is None else versions.since(publisher.synced)
            self._publishing = asyncio.create_task(
                self._publish(publisher, versions.serial, versions.current.entries, known)
            )

    async def _publish(
        self,
        publisher: Publisher,
        serial: int,
        entries: frozenset[Entry],
        difference: tuple[set[Entry], set[Entry]] | None,
    ) -> None:
        """Bring the primary the zone is published into to ``serial`` (kdc/publisher.py), in a
        thread; on failure it is read again at the next try, 1 s later, doubling up to 1 min."""
        try:
            sent = await asyncio.to_thread(publisher.sync, serial, entries, difference)
        except PublishError as exc:
            publisher.synced = None
            publisher.failures += 1
            publisher.due_at = time.time() + min(60.0, 2.0 ** (publisher.failures - 1))
            log.warning("control zone not published into %s: %s", publisher.target, exc)
        else:
            publisher.synced, publisher.failures = serial, 0
            log.info(
                "control zone serial %d published into %s (%d UPDATE message(s))",
                serial,
                publisher.target,
                sent,
            )
        finally:
            self._publishing = None
            self.wakeup.set()  # the nodes' NOTIFYs held for it go now (publication_behind)

    async def _notify_secondary(self, target: tuple[str, int], serial: int) -> None:
        """One NOTIFY (RFC 1996) of ``serial`` to a secondary, TSIG-signed with the transfer
        key when there is one; answered NOERROR, it is done, otherwise sent again later."""
        host, port = target
        message = dns.message.make_query(self.zone.origin, dns.rdatatype.SOA)
        message.set_opcode(dns.opcode.NOTIFY)
        message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
        soa = soa_rrset(self.zone.origin, self.zone.soa(), serial, RECORD_TTL)
        message.answer.append(soa)
        key = self.options.transfers.key
        if key is not None:
            message.use_tsig(key)
        where = f"NOTIFY of {self.zone.origin} serial {serial} to {host} port {port}"
        try:
            reply = await udp_exchange(
                message, host, port, NOTIFY_TIMEOUT, keyring=self.options.transfers.keyring
            )
        except (TimeoutError, OSError, dns.exception.DNSException) as exc:
            log.info("%s unanswered: %s", where, exc or type(exc).__name__)
            self.secondaries.failed(target, serial, time.time())
            return
        if reply.rcode() == dns.rcode.NOERROR:
            log.info("%s answered", where)
            self.secondaries.answered(target, serial)
        else:
            log.warning("%s answered %s", where, dns.rcode.to_text(reply.rcode()))
            self.secondaries.failed(target, serial, time.time())

    async def parent_loop(self) -> None:
        """Push DS sets and look at parents (kdc/parentwatch.py): the network work in threads,
        at most ``MAX_PARENT_CHECKS`` zones at once, kdc.db read and written on this loop."""
        desk = self.parents
        if desk is None:
            return
        running: set[asyncio.Task[None]] = set()

        async def one(task: ParentTask) -> None:
            try:
                outcome = await asyncio.to_thread(task.run)
                desk.record(task, outcome, int(time.time()))
                state_failures.recovered("parent", RECOVERED["parent"])
            except StateWriteError as exc:
                state_failures.error("parent", f"what the parent served not recorded: {exc}")
            except Exception:  # one zone's fault must not stop the others' watch
                log.exception("zone %s: looking at the parent failed", task.zone)
            finally:
                desk.running.discard(task.zone)

        while True:
            try:
                due = desk.due(time.time()) if len(running) < MAX_PARENT_CHECKS else []
            except (sqlite3.Error, StateWriteError, KrsError) as exc:
                log.warning("the parent watch could not read kdc.db: %s", exc)
                due = []
            for task in due[: MAX_PARENT_CHECKS - len(running)]:
                desk.running.add(task.zone)
                job = asyncio.create_task(one(task))
                running.add(job)
                job.add_done_callback(running.discard)
            await asyncio.sleep(self.options.tick)

    def run_engine(self, engine: Engine, now: float) -> None:
        """One pass of the lifecycle engine, timed and its failure kept for /metrics, /healthz."""
        started = time.monotonic()
        error = None
        try:
            engine.run_pass(now)
            self.roll_step(engine, now)
        except StateWriteError as exc:  # one transaction per change: the next pass
            error = str(exc)
            state_failures.error("engine", f"lifecycle step not recorded: {exc}")
        else:
            state_failures.recovered("engine", RECOVERED["engine"])
        self.health.passed(now, time.monotonic() - started, error)

    def roll_step(self, engine: Engine, now: float) -> None:
        """A signing-key roll's next step once every node confirmed (docs/security.md,
        "Rotation"); nodes holding it get a distribution again every ``resend_after``."""
        if engine.identity is None:
            return
        try:
            step = advance_roll(
                self.store, engine.identity, now=now, resend_after=self.options.resend_after
            )
        except StateWriteError:
            raise
        except (KrsError, OSError) as exc:
            log.error("signing-key roll: the next step failed, tried again next pass: %s", exc)
            return
        if step.taken is not None:
            log.warning("signing-key roll: %s (every node confirmed)", step.taken)
        for dist_id in step.resent:
            log.info("signing-key roll: distribution %s sent to a node that has not confirmed",
                     dist_id)  # fmt: skip

    def _due(self, last: int | None, attempts: int, now: float) -> bool:
        if last is None:
            return True
        delay = min(
            self.options.notify_retry_max, self.options.notify_retry_base * 2 ** (attempts - 1)
        )
        return bool(now >= last + delay)

    async def _notify(self, dist_id: str, node_id: str) -> None:
        node = self.store.find_node(node_id)
        if node is None:
            return
        host, _, port = node.notify_address.rpartition(":")
        message = dns.message.make_query(
            notify_name(dist_id, self.zone.origin), dns.rdatatype.RdataType.make(CHUNK_TYPE)
        )
        message.set_opcode(dns.opcode.NOTIFY)
        message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
        try:
            self.store.mark_notified(dist_id, node_id, now=time.time())
        except StateWriteError as exc:  # sent all the same, and no new round for a while
            state_failures.error("notify", f"NOTIFY not recorded: {exc}")
            self.notify_hold = time.time() + STATE_RETRY
        else:
            state_written()
        try:
            reply = await udp_exchange(message, host.strip("[]"), int(port), NOTIFY_TIMEOUT)
        except (TimeoutError, OSError, dns.exception.DNSException) as exc:
            log.info(
                "NOTIFY %s to %s (%s) unanswered: %s", dist_id, node_id, node.notify_address, exc
            )
            return
        if reply.rcode() == dns.rcode.NOERROR and reply.id == message.id:
            try:
                self.store.mark_notify_acked(dist_id, node_id, now=time.time())
            except StateWriteError as exc:  # NOTIFYed again later: the node has it queued
                state_failures.error("notify", f"NOTIFY answer not recorded: {exc}")
            else:
                state_written()
            log.info("NOTIFY %s to %s answered", dist_id, node_id)
        else:
            log.info(
                "NOTIFY %s to %s answered %s", dist_id, node_id, dns.rcode.to_text(reply.rcode())
            )

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for transport in self._transports:
            transport.close()


async def serve(
    store: Store, control_zone: str, options: ServeOptions, identity: KdcIdentity | None = None
) -> None:
    """Run until cancelled; with ``identity``, enrollment UPDATEs are answered too."""
    resync = ResyncDesk(
        store, identity, clock_skew=options.clock_skew, min_interval=options.resync_interval
    )
    zone = ControlZone(store, control_zone, clock_skew=options.clock_skew, resync=resync)
    zone.versions = ZoneVersions(store, zone.origin)
    for serial in await secondary_serials(zone.origin, options.also_notify):
        zone.versions.above(serial)
    desk = EnrollmentDesk(store, identity, zone.origin) if identity is not None else None
    server = KdcServer(store, zone, options, desk)
    if identity is not None:
        server.rekey = noderekey.RekeyDesk(
            store, identity, zone.origin, clock_skew=options.clock_skew
        )
    if identity is not None:
        server.engine = Engine(store, identity, EngineOptions(resend_after=options.resend_after))
        server.health.engine = True
        server.parents = ParentDesk(
            store, server.engine, options.parent_check_interval, options.parent_check_max
        )
    quiet_accept_errors(asyncio.get_running_loop())
    await server.start()
    record_listen(store, server.bound)  # where krs-kdc distribute wakes us (kdc/wake.py)
    http = None
    if options.metrics is not None:
        host, port = options.metrics
        try:
            http, bound = await serve_http(
                host,
                port,
                KdcMetrics(store.path, server.health),
                health_of(server.health, store.path),
                in_thread=True,  # a scrape reads kdc.db: never on the loop that answers DNS
            )
        except OSError as exc:
            server.close()
            raise ConfigError(
                f"--metrics {host}:{port}: cannot listen there: {exc.strerror or exc}"
            ) from exc
        log.info("metrics and health on http://%s:%d", host, bound)
    print(
        "krs-kdc serving "
        + ", ".join(f"{h}:{p}" for h, p in server.bound)
        + f" for {control_zone}",
        flush=True,
    )
    watch = asyncio.create_task(server.parent_loop())
    try:
        await server.notify_loop()
    finally:
        watch.cancel()
        if http is not None:
            http.close()
        server.close()
        forget_listen(store)


__all__ = [
    "ControlZone",
    "KdcServer",
    "ServeOptions",
    "serve",
]
