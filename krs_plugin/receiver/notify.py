"""The KRS's NOTIFY listener: what a NOTIFY is answered, and the sockets it arrives on.

NOTIFY carries no trust: it only names a distribution id to fetch from the configured servers
(docs/protocol.md sections 1-2). The answer goes out at once: REFUSED for a source outside
``notify.allowed_sources``, another opcode or a flood past ``notify.rate_limit``, NOTAUTH for a
name outside the control zone, NOERROR otherwise. Whether the id is queued is the service's
business (``Service.enqueue``); nothing here waits for the network or the nameserver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode

from krs_plugin.config import Address, NotifySettings
from krs_plugin.dnsio import serve_dns
from krs_plugin.errors import KrsError
from krs_plugin.protocol import parse_notify_name

IDLE_TIMEOUT = 10.0  # seconds a TCP connection may stay silent


class RateLimiter:
    """Token bucket: ``rate`` per second, bursts up to ``rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Answer:
    """What one NOTIFY gets: the ``response`` to send (None: not a query, dropped unanswered),
    and either a refusal or the ``distribution_id`` to queue."""

    response: bytes | None
    refused: Literal["refused", "rate_limited"] | None = None
    distribution_id: str | None = None


def answer_notify(
    wire: bytes,
    source: str,
    settings: NotifySettings,
    control_zone: dns.name.Name,
    limiter: RateLimiter,
) -> Answer:
    """Check one NOTIFY from ``source``: the ACL, the opcode, the name, then the rate limit."""
    try:
        message = dns.message.from_wire(wire)
    except (dns.exception.DNSException, KrsError, ValueError):
        return Answer(None)
    if message.flags & dns.flags.QR:
        return Answer(None)
    response = dns.message.make_response(message)
    response.flags |= dns.flags.AA
    if not allowed(source, settings) or message.opcode() != dns.opcode.NOTIFY:
        response.set_rcode(dns.rcode.REFUSED)
        return Answer(bytes(response.to_wire()), refused="refused")
    try:
        dist_id = parse_notify_name(message.question[0].name, control_zone)
    except (KrsError, IndexError):
        response.set_rcode(dns.rcode.NOTAUTH)
        return Answer(bytes(response.to_wire()), refused="refused")
    if not limiter.allow():
        response.set_rcode(dns.rcode.REFUSED)
        return Answer(bytes(response.to_wire()), refused="rate_limited")
    return Answer(bytes(response.to_wire()), distribution_id=dist_id)


def allowed(source: str, settings: NotifySettings) -> bool:
    """Whether ``source`` (an address, with or without a ``%scope``) may send NOTIFY."""
    try:
        address = ipaddress.ip_address(source.split("%")[0])
    except ValueError:
        return False
    return any(address in net for net in settings.allowed_sources)


@dataclass
class Listener:
    """One bound NOTIFY address: UDP and TCP on the same port."""

    address: Address
    bound: Address
    transport: asyncio.BaseTransport
    server: asyncio.AbstractServer

    def close(self) -> None:
        self.transport.close()
        self.server.close()


async def listen(
    addresses: tuple[Address, ...], answer: Callable[[bytes, str], bytes | None]
) -> list[Listener]:
    """Bind every NOTIFY address, or none: a partial bind is closed again and raises OSError."""
    listeners: list[Listener] = []
    try:
        for address in addresses:
            transport, server, port = await serve_dns(
                lambda wire, source, udp: answer(wire, source),
                address.host,
                address.port,
                idle_timeout=IDLE_TIMEOUT,
            )
            listeners.append(Listener(address, Address(address.host, port), transport, server))
    except OSError:
        close(listeners)
        raise
    return listeners


def close(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.close()
