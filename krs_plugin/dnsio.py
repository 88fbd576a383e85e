"""Small asyncio DNS client helpers shared by the KDC (NOTIFY) and the KRS (confirmations)."""

from __future__ import annotations

import asyncio

import dns.message


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
