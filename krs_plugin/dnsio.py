"""Small asyncio DNS helpers shared by the KDC and the KRS: the clients (NOTIFY, confirmations)
and the UDP + TCP listener both serve with, whose TCP connections are bounded by a
``ConnectionGuard`` (docs/operations.md, "Resource limits")."""

from __future__ import annotations

import asyncio
import logging
import resource
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import dns.flags
import dns.message
import dns.rcode

log = logging.getLogger(__name__)

FD_RESERVE = 256
"""File descriptors a listener's connection cap leaves free for everything else: fetches,
confirmations, NOTIFYs sent, the state database, the adapter's tools, and for an instant up to
2 x ``ACCEPT_BACKLOG`` connections just accepted or being closed (docs/operations.md, "Resource
limits")."""
ACCEPT_BACKLOG = 32  # the listen() backlog, and what asyncio accepts in one go
MAX_CONNECTIONS_DEFAULT = 256  # per listener, when the descriptor limit allows that many
MIN_CONNECTIONS = 4
IDLE_TIMEOUT_DEFAULT = 10.0  # seconds a TCP connection may go without a complete message
WARN_INTERVAL = 60.0  # at most one warning a minute about connections closed at the cap


async def udp_exchange(
    message: dns.message.Message, host: str, port: int, timeout: float, *, keyring: Any = None
) -> dns.message.Message:
    """Send ``message`` over UDP and return the first reply, or raise ``TimeoutError``; with
    ``keyring``, a TSIG-signed reply is checked against the request's MAC."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not future.done():
                future.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not future.done():
                future.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
    try:
        transport.sendto(message.to_wire())
        data = await asyncio.wait_for(future, timeout)
    finally:
        transport.close()
    if keyring is None:
        return dns.message.from_wire(data)
    return dns.message.from_wire(data, keyring=keyring, request_mac=message.mac)


async def tcp_exchange(
    message: dns.message.Message, host: str, port: int, timeout: float
) -> dns.message.Message:
    """Send ``message`` over TCP (for what does not fit a datagram, or when UDP is blocked)."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            wire = message.to_wire(max_size=0xFFFF)
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(length)
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(exchange(), timeout)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError(f"{host} port {port} closed the connection") from exc
    return dns.message.from_wire(data)


QUERY_FLAGS = 0xFFB0
"""The header bits a listener reads of a query: QR, opcode, AA, TC, RD, RA, AD, CD; not Z, not
the rcode (which mean nothing in a query)."""


def parse_query(wire: bytes, keyring: Any = None) -> dns.message.Message:
    """``dns.message.from_wire`` of a message sent to a listener, its Z bit and rcode cleared
    first. dnspython turns the header's flags into a ``dns.flags.Flag``, and Python's enum keeps
    every combination it was ever given: 65,536 different headers would hold 27 MB for good
    (docs/operations.md, "Resource limits"). Cleared, at most 2,048 combinations remain."""
    if len(wire) >= 4:
        (flags,) = struct.unpack("!H", wire[2:4])
        wire = wire[:2] + struct.pack("!H", flags & QUERY_FLAGS) + wire[4:]
    return dns.message.from_wire(wire, keyring=keyring)


def formerr_reply(wire: bytes) -> bytes | None:
    """FORMERR for a query whose header can be read; None (drop) otherwise."""
    return _header_reply(wire, dns.rcode.FORMERR)


def echo_reply(query: dns.message.Message, wire: bytes, rcode: int) -> bytes:
    """An authoritative answer with ``rcode`` that repeats ``query``'s one question as sent.

    Built from the query's own bytes: dnspython's ``make_response().to_wire()`` costs five times
    the parse, and a NOTIFY listener answers every datagram of a flood (docs/operations.md,
    "Resource limits"). A query with EDNS or TSIG needs those in its answer, so it takes
    dnspython's path."""
    if query.edns >= 0 or query.had_tsig or len(query.question) != 1:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.set_rcode(dns.rcode.Rcode(rcode))
        return bytes(response.to_wire())
    end = 12
    while wire[end]:  # the first name of a query cannot be compressed: plain labels
        end += wire[end] + 1
    end += 5  # the root label, QTYPE and QCLASS
    (flags,) = struct.unpack("!H", wire[2:4])
    flags = 0x8400 | (flags & 0x7900) | rcode  # QR and AA; the query's opcode and RD
    return wire[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + wire[12:end]


def _header_reply(wire: bytes, rcode: int) -> bytes | None:
    """An answer with ``rcode`` and no sections, built from the query's header alone."""
    if len(wire) < 12:
        return None
    (qid, flags) = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:
        return None  # a response: never answer it
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7800) | rcode, 0, 0, 0, 0)


Handler = Callable[[bytes, str, bool], bytes | list[bytes] | None]
"""(wire, source address, over UDP?) -> reply wire, or None to stay silent; over TCP also a
list of messages sent in order (a zone transfer)."""


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE: how many descriptors this process may hold open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(listeners: int) -> int:
    """TCP connections per listener when not configured: what the descriptor limit leaves after
    ``FD_RESERVE``, shared by ``listeners``, at most ``MAX_CONNECTIONS_DEFAULT``."""
    budget = (descriptor_limit() - FD_RESERVE) // max(1, listeners)
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS_DEFAULT, budget))


def connection_budget_problem(max_connections: int, listeners: int) -> str | None:
    """Why ``max_connections`` per listener would leave too few descriptors, or None."""
    limit = descriptor_limit()
    if max_connections * max(1, listeners) + FD_RESERVE <= limit:
        return None
    return (
        f"{max_connections} per listener x {max(1, listeners)} listener(s) would leave fewer "
        f"than {FD_RESERVE} of this process's {limit} file descriptors (RLIMIT_NOFILE) for "
        f"fetches, confirmations, the database and tools: lower it to at most "
        f"{max(0, (limit - FD_RESERVE) // max(1, listeners))} or raise the limit "
        "(systemd: LimitNOFILE=)"
    )


class ConnectionGuard:
    """Bounds one listener's TCP connections (docs/operations.md, "Resource limits").

    At most ``max_connections`` are open at once: a new connection beyond that closes the one
    that has gone longest without a complete message, so idle or slow connections cannot keep
    real clients out, and the descriptors they would hold stay free for fetches and
    confirmations. A connection is also closed after ``idle_timeout`` seconds without a complete
    message, or when it does not read its answers for that long. Closing is counted and
    reported in one warning a minute at most, never as a traceback. Both limits may be changed
    while the listener runs (a reload)."""

    def __init__(self, label: str, max_connections: int, idle_timeout: float) -> None:
        self.label = label
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.active: OrderedDict[asyncio.BaseTransport, None] = OrderedDict()  # oldest first
        self.closed = 0  # connections closed at the cap, in all
        self._unreported = 0
        self._warned_at = -WARN_INTERVAL

    def admit(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: make room for it by closing the longest idle ones."""
        while self.active and len(self.active) >= self.max_connections:
            oldest, _ = self.active.popitem(last=False)
            if isinstance(oldest, asyncio.WriteTransport):
                oldest.abort()
            else:
                oldest.close()
            self.closed += 1
            self._unreported += 1
        self.active[transport] = None
        self._report()

    def touch(self, transport: asyncio.BaseTransport) -> None:
        """A complete message arrived on ``transport``: it is the most recently active."""
        if transport in self.active:
            self.active.move_to_end(transport)

    def leave(self, transport: asyncio.BaseTransport) -> None:
        self.active.pop(transport, None)

    def _report(self) -> None:
        now = time.monotonic()
        if self._unreported and now - self._warned_at >= WARN_INTERVAL:
            log.warning(
                "%s: %d TCP connection(s) closed to stay within %d open at once (%d in all); "
                "the longest idle are closed first",
                self.label,
                self._unreported,
                self.max_connections,
                self.closed,
            )
            self._unreported = 0
            self._warned_at = now


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Report asyncio's ``accept()`` failures (out of descriptors: the server pauses accepting
    for a second and tries again) as one warning a minute instead of a traceback each."""
    warned = [-WARN_INTERVAL]
    suppressed = [0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        suppressed[0] += 1
        now = time.monotonic()
        if now - warned[0] >= WARN_INTERVAL:
            log.warning(
                "cannot accept TCP connections (%s; %d time(s)): the process is out of file "
                "descriptors; accepting again in a second",
                context.get("exception"),
                suppressed[0],
            )
            warned[0] = now
            suppressed[0] = 0

    loop.set_exception_handler(handler)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = _answer(self.handler, data, addr[0], True)
        if isinstance(out, list):  # a handler never sends several datagrams for one query
            out = out[0] if out else None
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


def _answer(handler: Handler, wire: bytes, source: str, udp: bool) -> bytes | list[bytes] | None:
    """``handler``'s answer; a bug in it is logged and answered SERVFAIL, so the client is not
    left waiting and the listener goes on."""
    try:
        return handler(wire, source, udp)
    except Exception:
        log.exception("internal error answering %d bytes from %s", len(wire), source)
        return _header_reply(wire, dns.rcode.SERVFAIL)


async def serve_dns(
    handler: Handler, host: str, port: int, *, guard: ConnectionGuard | None = None
) -> tuple[asyncio.BaseTransport, asyncio.AbstractServer, int]:
    """Listen on UDP and TCP (same port; 0 picks one) and answer every message with ``handler``.

    TCP connections may carry several length-prefixed messages; ``guard`` bounds how many are
    open and closes them when idle or when the handler has nothing to say."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpServer(handler), local_addr=(host, port)
    )
    bound = int(transport.get_extra_info("sockname")[1])
    tcp = guard or ConnectionGuard(
        f"{host} port {bound}", default_max_connections(1), IDLE_TIMEOUT_DEFAULT
    )

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else ""
        connection = writer.transport
        tcp.admit(connection)
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), tcp.idle_timeout)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), tcp.idle_timeout)
                tcp.touch(connection)
                out = _answer(handler, wire, source, False)
                if out is None:
                    break
                for message in [out] if isinstance(out, bytes) else out:
                    writer.write(struct.pack("!H", len(message)) + message)
                # A client that does not read its answers holds memory: closed like an idle one.
                await asyncio.wait_for(writer.drain(), tcp.idle_timeout)
        except TimeoutError:
            connection.abort()  # idle, or not reading its answers: nothing worth flushing
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            tcp.leave(connection)
            writer.close()

    server = await asyncio.start_server(client, host, bound, backlog=ACCEPT_BACKLOG)
    return transport, server, bound
