"""The listeners' resource limits (docs/operations.md, "Resource limits"): how many TCP
connections stay open and for how long (issue 20, finding 7), what ``krs-kdc serve`` answers a
query with more than one question or an answer too big for the client (finding 9), the memory
header flags cannot grow, and how many NOTIFYs the KDC has in flight."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from krs_lab.ports import free_port
from krs_plugin.config import NotifySettings
from krs_plugin.crypto import HpkeKey
from krs_plugin.dnsio import (
    ConnectionGuard,
    connection_budget_problem,
    default_max_connections,
    quiet_accept_errors,
    serve_dns,
)
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.server import ControlZone, KdcServer, ServeOptions
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import pending_name
from krs_plugin.receiver.notify import NotifyBudget, answer_notify
from tests.loopthread import LoopThread

CZ = "kdc.example."
ORIGIN = dns.name.from_text(CZ)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def echo(wire: bytes, source: str, udp: bool) -> bytes | None:
    """NOERROR to every query; a 60,000-byte TXT answer when asked for TXT."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    if query.question[0].rdtype == dns.rdatatype.TXT:
        return bytes(response.to_wire()) + b"\x00" * 60000
    return bytes(response.to_wire())


def serve(loop_thread: LoopThread, guard: ConnectionGuard) -> int:
    port = free_port()

    async def start() -> None:
        await serve_dns(echo, "127.0.0.1", port, guard=guard)

    loop_thread.run(start())
    return port


def closed_by_server(sock: socket.socket, wait: float = 2.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_past_the_cap_close_the_longest_idle(
    loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    """20 idle connections against a cap of 8: the 12 oldest are closed as the newer arrive,
    a new client is answered, and all of it is one warning, no traceback."""
    guard = ConnectionGuard("test listener", max_connections=8, idle_timeout=30)
    port = serve(loop_thread, guard)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        time.sleep(0.3)
        reply = dns.query.tcp(
            dns.message.make_query(CZ, dns.rdatatype.SOA), "127.0.0.1", port=port, timeout=5
        )
        assert reply.rcode() == dns.rcode.NOERROR
        closed = [closed_by_server(s, 0.5) for s in idle]
        assert closed[:13] == [True] * 13  # the new client took the place of a 13th
        assert closed[13:] == [False] * 7
        assert len(guard.active) <= 8 and guard.closed == 13
    finally:
        for sock in idle:
            sock.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "closed to stay within 8 open at once" in warnings[0].message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_busy_connection_outlives_idle_ones(loop_thread: LoopThread) -> None:
    """A client that keeps sending complete messages is the most recently active: the idle go
    first."""
    guard = ConnectionGuard("test listener", max_connections=4, idle_timeout=30)
    port = serve(loop_thread, guard)
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    query = dns.message.make_query(CZ, dns.rdatatype.SOA).to_wire()
    idle = []
    try:
        for _ in range(10):
            idle.append(socket.create_connection(("127.0.0.1", port)))
            busy.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", busy.recv(2))
            assert len(busy.recv(length)) == length
        assert not closed_by_server(busy, 0.2)
    finally:
        busy.close()
        for sock in idle:
            sock.close()


def test_silent_and_non_reading_connections_are_closed_after_the_idle_timeout(
    loop_thread: LoopThread,
) -> None:
    guard = ConnectionGuard("test listener", max_connections=8, idle_timeout=0.5)
    port = serve(loop_thread, guard)
    silent = socket.create_connection(("127.0.0.1", port))
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x00\x40abc")  # 64 bytes announced, 3 sent
    deaf = socket.create_connection(("127.0.0.1", port))
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    txt = dns.message.make_query(CZ, dns.rdatatype.TXT).to_wire()
    try:
        # Asks for 60 KB answers and never reads them: the server stops waiting to send.
        deaf.sendall((struct.pack("!H", len(txt)) + txt) * 200)
        started = time.monotonic()
        assert closed_by_server(silent, 3) and closed_by_server(half, 3)
        assert time.monotonic() - started < 2
        deadline = time.monotonic() + 3
        while guard.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not guard.active
    finally:
        for sock in (silent, half, deaf):
            sock.close()


def test_the_default_cap_leaves_descriptors_for_everything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 1024))
    assert default_max_connections(1) == 256 and default_max_connections(3) == 256
    assert default_max_connections(4) == 192
    assert connection_budget_problem(192, 4) is None
    assert "RLIMIT_NOFILE" in (connection_budget_problem(193, 4) or "")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (300, 300))
    assert default_max_connections(1) == 44


# --- krs-kdc serve: one question, answers that fit (finding 9) -----------------------------------


@pytest.fixture
def kdc_server(tmp_path: Path, loop_thread: LoopThread) -> Iterator[KdcServer]:
    def make() -> KdcServer:
        store = Store(tmp_path / "kdc.db")
        store.set_meta("control_zone", CZ)
        return KdcServer(store, ControlZone(store, CZ), ServeOptions(listen=()))

    server = loop_thread.call(make)
    yield server
    loop_thread.call(server.store.close)


def handle(loop_thread: LoopThread, server: KdcServer, wire: bytes, udp: bool) -> bytes:
    reply = loop_thread.call(lambda: server.handle(wire, "127.0.0.1", udp=udp))
    assert reply is not None
    return reply


@pytest.mark.parametrize("opcode", [dns.opcode.QUERY, dns.opcode.NOTIFY])
@pytest.mark.parametrize("count", [0, 2, 100])
def test_anything_but_one_question_is_a_format_error(
    loop_thread: LoopThread, kdc_server: KdcServer, count: int, opcode: dns.opcode.Opcode
) -> None:
    """The 623-byte query with 100 questions got no answer and a TooBig traceback."""
    query = dns.message.make_query(CZ, dns.rdatatype.SOA)
    query.set_opcode(opcode)
    query.question = query.question * count
    for udp in (True, False):
        wire = handle(loop_thread, kdc_server, query.to_wire(), udp)
        reply = dns.message.from_wire(wire)
        assert reply.id == query.id and reply.rcode() == dns.rcode.FORMERR
        assert not reply.question and len(wire) <= 512


def test_an_answer_too_big_for_udp_is_truncated(
    loop_thread: LoopThread, kdc_server: KdcServer
) -> None:
    """50 pending ids with a long node name do not fit 512 bytes: TC=1, empty; whole over TCP."""
    node = "n" * 60 + "." + "o" * 60 + ".edge.example."
    store = kdc_server.store
    loop_thread.call(
        lambda: store.add_node(
            node,
            notify_address="127.0.0.1:9",
            backend="hpke",
            hpke_pubkey="00" * 32,
            jose_pubkey=None,
            signing_pubkey=None,
            zones=[],
        )
    )
    loop_thread.call(lambda: setattr(kdc_server.store, "published_ids", lambda n: ["ab" * 8] * 50))
    query = dns.message.make_query(pending_name(node, CZ), dns.rdatatype.TXT)
    udp = dns.message.from_wire(handle(loop_thread, kdc_server, query.to_wire(), True))
    assert udp.flags & dns.flags.TC and not udp.answer and udp.rcode() == dns.rcode.NOERROR
    tcp = dns.message.from_wire(handle(loop_thread, kdc_server, query.to_wire(), False))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0][0].strings) == 50


def test_header_flags_do_not_grow_memory(loop_thread: LoopThread, kdc_server: KdcServer) -> None:
    """dnspython keeps every header flags value it parsed (Python's enum.Flag caches each one):
    all 65,536 would hold 27 MB in each daemon for good. The listeners clear Z and the rcode
    before parsing, so a few thousand values at most are ever kept (2,048 of queries, a few
    hundred of answers: about 1 MB)."""
    settings = NotifySettings(allowed_sources=(ipaddress.ip_network("127.0.0.0/8"),))
    budget = NotifyBudget(50, 200)
    query = bytearray(dns.message.make_query(CZ, dns.rdatatype.SOA).to_wire())
    before = set(dns.flags.Flag._value2member_map_)

    def every_flags_value() -> None:
        for flags in range(65536):
            query[2:4] = struct.pack("!H", flags)
            kdc_server.handle(bytes(query), "127.0.0.1", udp=True)
            answer_notify(bytes(query), "127.0.0.1", settings, ORIGIN, budget)

    loop_thread.call(every_flags_value)
    assert len(set(dns.flags.Flag._value2member_map_) - before) <= 3000


def test_accept_out_of_descriptors_is_one_warning_not_a_traceback(
    loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    """What asyncio reports when ``accept()`` finds no free descriptor (it then pauses a second):
    one warning a minute instead of a traceback each time; anything else as asyncio would."""

    def report() -> None:
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        for _ in range(50):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})

    loop_thread.call(report)
    accept = [r for r in caplog.records if "cannot accept TCP connections" in r.getMessage()]
    assert len(accept) == 1 and accept[0].levelno == logging.WARNING and not accept[0].exc_info
    others = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(others) == 1 and "something else" in others[0].getMessage()


def test_the_kdc_has_a_bounded_number_of_notifies_in_flight(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    """Each NOTIFY awaiting an answer holds a UDP socket: with 10 nodes pending and a cap of 3,
    three go out; the rest wait for a free place."""
    started: list[str] = []

    def make() -> KdcServer:
        identity = create_identity(tmp_path / "keys")
        store = Store(tmp_path / "kdc.db")
        store.set_meta("control_zone", CZ)
        store.add_zone("example.com.")
        key = generate_key("example.com.", 13, 257)
        store.add_key(
            "example.com.", key_tag=key.key_tag, role="CSK", algorithm=13, flags=257,
            private_pem=key.to_pkcs8_pem(),
        )  # fmt: skip
        for n in range(10):
            store.add_node(
                f"n{n}.edge.example.", notify_address="127.0.0.1:9", backend="hpke",
                hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None, signing_pubkey=None,
                zones=["example.com."],
            )  # fmt: skip
        distribute_zone(store, identity, "example.com.", now=time.time())
        options = ServeOptions(listen=(), tick=0.05, max_notify_in_flight=3)
        return KdcServer(store, ControlZone(store, CZ), options)

    server = loop_thread.call(make)

    async def silent(dist_id: str, node_id: str) -> None:
        started.append(node_id)
        await asyncio.sleep(3600)  # a node that never answers

    server._notify = silent  # type: ignore[method-assign]

    async def a_few_ticks() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.notify_loop(), 0.5)

    loop_thread.run(a_few_ticks())
    assert len(started) == 3
    loop_thread.call(server.store.close)
