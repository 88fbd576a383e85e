"""The KRS's NOTIFY listener: what a NOTIFY is answered, and the sockets it arrives on.

NOTIFY carries no trust: it only names a distribution id to fetch from the configured servers
(docs/protocol.md sections 1-2). The answer goes out at once: FORMERR for anything but one
question, REFUSED for a source outside ``notify.allowed_sources``, another opcode or a source
past its budget, NOTAUTH for a name outside the control zone, NOERROR otherwise. Whether the id
is queued is the service's business (``Service.enqueue``); nothing here waits for the network or
the nameserver. How a flood is kept from starving real NOTIFYs (per-source budgets, ids already
known for free, TCP apart) and the TCP connection limits: docs/operations.md, "Resource limits".
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections import OrderedDict
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
from krs_plugin.dnsio import ConnectionGuard, Handler, echo_reply, parse_query, serve_dns
from krs_plugin.errors import KrsError
from krs_plugin.protocol import parse_notify_name

MAX_SOURCES = 4096  # per-source budgets kept per transport; the least recently used go first


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


class NotifyBudget:
    """How many NOTIFYs naming new ids are taken: ``per_source`` a second from each source and
    ``total`` a second from all sources together, counted apart over UDP and over TCP (a TCP
    source cannot be forged, so a forged UDP flood never uses up TCP's budget). At most
    ``max_sources`` sources are remembered per transport."""

    def __init__(self, per_source: float, total: float, max_sources: int = MAX_SOURCES) -> None:
        self.per_source = per_source
        self.max_sources = max_sources
        self.sources: dict[bool, OrderedDict[str, RateLimiter]] = {
            False: OrderedDict(),
            True: OrderedDict(),
        }
        self.totals = {False: RateLimiter(total), True: RateLimiter(total)}

    def allow(self, source: str, *, tcp: bool) -> bool:
        buckets = self.sources[tcp]
        bucket = buckets.get(source)
        if bucket is None:
            bucket = buckets[source] = RateLimiter(self.per_source)
            if len(buckets) > self.max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(source)
        if not bucket.allow():
            return False
        if not self.totals[tcp].allow():
            bucket.tokens += 1  # not taken: this source did not use up the shared budget
            return False
        return True


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
    budget: NotifyBudget,
    *,
    tcp: bool = False,
    known: Callable[[str], bool] = lambda dist_id: False,
) -> Answer:
    """Check one NOTIFY from ``source``: one question, the ACL, the opcode, the name, then the
    budget, which an id that is ``known`` (queued, running or done) does not use."""
    try:
        message = parse_query(wire)
    except (dns.exception.DNSException, KrsError, ValueError):
        return Answer(None)
    if message.flags & dns.flags.QR:
        return Answer(None)
    if len(message.question) != 1:
        response = dns.message.make_response(message)
        response.question = []  # never echo a hundred questions back
        response.set_rcode(dns.rcode.FORMERR)
        return Answer(bytes(response.to_wire()), refused="refused")
    if not allowed(source, settings) or message.opcode() != dns.opcode.NOTIFY:
        return Answer(echo_reply(message, wire, dns.rcode.REFUSED), refused="refused")
    try:
        dist_id = parse_notify_name(message.question[0].name, control_zone)
    except KrsError:
        return Answer(echo_reply(message, wire, dns.rcode.NOTAUTH), refused="refused")
    if not known(dist_id) and not budget.allow(source.split("%")[0], tcp=tcp):
        return Answer(echo_reply(message, wire, dns.rcode.REFUSED), refused="rate_limited")
    return Answer(echo_reply(message, wire, dns.rcode.NOERROR), distribution_id=dist_id)


def allowed(source: str, settings: NotifySettings) -> bool:
    """Whether ``source`` (an address, with or without a ``%scope``) may send NOTIFY."""
    return _allowed(source, settings.allowed_sources)


@functools.lru_cache(maxsize=MAX_SOURCES)
def _allowed(
    source: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """``allowed``, remembered: a flood comes from few sources, and parsing the address is a
    third of what answering one NOTIFY costs."""
    try:
        address = ipaddress.ip_address(source.split("%")[0])
    except ValueError:
        return False
    return any(address in net for net in networks)


@dataclass
class Listener:
    """One bound NOTIFY address: UDP and TCP on the same port, its TCP connections bounded by
    ``guard``."""

    address: Address
    bound: Address
    transport: asyncio.BaseTransport
    server: asyncio.AbstractServer
    guard: ConnectionGuard

    def close(self) -> None:
        self.transport.close()
        self.server.close()


async def listen(settings: NotifySettings, answer: Handler) -> list[Listener]:
    """Bind every address of ``settings.listen``, or none: a partial bind is closed again and
    raises OSError. ``answer`` gets (wire, source, over UDP?)."""
    listeners: list[Listener] = []
    try:
        for address in settings.listen:
            guard = ConnectionGuard(
                f"NOTIFY listener {address}", settings.max_connections, settings.tcp_idle_timeout
            )
            transport, server, port = await serve_dns(
                answer, address.host, address.port, guard=guard
            )
            bound = Address(address.host, port)
            listeners.append(Listener(address, bound, transport, server, guard))
    except OSError:
        close(listeners)
        raise
    return listeners


def limit_connections(listeners: list[Listener], settings: NotifySettings) -> None:
    """Apply changed connection limits to listeners that keep running (a reload)."""
    for listener in listeners:
        listener.guard.max_connections = settings.max_connections
        listener.guard.idle_timeout = settings.tcp_idle_timeout


def close(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.close()
