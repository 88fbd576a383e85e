"""Small asyncio DNS client helpers shared by the KDC (NOTIFY) and the KRS (confirmations)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import cast

import dns.message
import dns.rcode


async def udp_exchange(
    message: dns.message.Message, host: str, port: int, timeout: float
) -> dns.message.Message:
    """Send ``message`` over UDP and return the first reply, or raise ``TimeoutError``."""
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
    return dns.message.from_wire(data)


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


def formerr_reply(wire: bytes) -> bytes | None:
    """FORMERR for a query whose header can be read; None (drop) otherwise."""
    if len(wire) < 12:
        return None
    (qid, flags) = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:
        return None  # a response: never answer it
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7800) | dns.rcode.FORMERR, 0, 0, 0, 0)


Handler = Callable[[bytes, str, bool], bytes | None]
"""(wire, source address, over UDP?) -> reply wire, or None to stay silent."""


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.handler(data, addr[0], True)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def serve_dns(
    handler: Handler, host: str, port: int, *, idle_timeout: float = 30.0
) -> tuple[asyncio.BaseTransport, asyncio.AbstractServer, int]:
    """Listen on UDP and TCP (same port; 0 picks one) and answer every message with ``handler``.

    TCP connections may carry several length-prefixed messages and close when idle or when the
    handler has nothing to say."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpServer(handler), local_addr=(host, port)
    )
    bound = int(transport.get_extra_info("sockname")[1])

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else ""
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), idle_timeout)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), idle_timeout)
                out = handler(wire, source, False)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, host, bound)
    return transport, server, bound
