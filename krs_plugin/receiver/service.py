"""``krs run``: the NOTIFY listener, the fetch-and-apply worker and the confirmation sender.

NOTIFY carries no trust: it only names a distribution id to fetch from the configured servers.
The listener answers at once (NOERROR), checks the source against ``notify.allowed_sources``,
rate-limits, and queues each id once; one worker fetches (in a thread, so the listener never
waits on the network) and applies them in order. Confirmations are retried until the KDC answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from krs_plugin.config import Address, Config
from krs_plugin.confirmation import sign_report
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import serve_dns, udp_exchange
from krs_plugin.errors import KrsError
from krs_plugin.protocol import CHUNK_TYPE, ChunkOption, notify_name, parse_notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS
from krs_plugin.receiver.fetcher import Fetcher
from krs_plugin.receiver.pipeline import Pipeline
from krs_plugin.receiver.store import ReceiverStore

log = logging.getLogger("krs_plugin.receiver.service")

CONFIRM_TIMEOUT = 5.0
CONFIRM_RETRY_MAX = 300.0
MAX_QUEUE = 1000


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


class Service:
    def __init__(
        self,
        config: Config,
        store: ReceiverStore,
        pipeline: Pipeline,
        fetcher: Fetcher,
        signer: JoseKey | None,
    ) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.fetcher = fetcher
        self.signer = signer
        self.queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUE)
        self.pending: set[str] = set()
        self.limiter = RateLimiter(config.notify.rate_limit)
        self.bound: list[Address] = []
        self.counters = {"notify_accepted": 0, "notify_refused": 0, "notify_limited": 0}

    # --- NOTIFY ---------------------------------------------------------------------------

    def handle_notify(self, wire: bytes, source: str) -> bytes | None:
        try:
            message = dns.message.from_wire(wire)
        except (dns.exception.DNSException, KrsError, ValueError):
            return None
        if message.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(message)
        response.flags |= dns.flags.AA
        if not self._allowed(source) or message.opcode() != dns.opcode.NOTIFY:
            self.counters["notify_refused"] += 1
            response.set_rcode(dns.rcode.REFUSED)
            return bytes(response.to_wire())
        try:
            dist_id = parse_notify_name(message.question[0].name, self.config.control_zone)
        except (KrsError, IndexError):
            self.counters["notify_refused"] += 1
            response.set_rcode(dns.rcode.NOTAUTH)
            return bytes(response.to_wire())
        if not self.limiter.allow():
            self.counters["notify_limited"] += 1
            response.set_rcode(dns.rcode.REFUSED)
            return bytes(response.to_wire())
        self.counters["notify_accepted"] += 1
        self.enqueue(dist_id)
        return bytes(response.to_wire())

    def enqueue(self, dist_id: str) -> bool:
        """Queue ``dist_id`` unless it is queued, running or already finished."""
        if dist_id in self.pending:
            return False
        seen = self.store.seen(dist_id)
        if seen is not None and seen.outcome in ("applied", "rejected"):
            return False
        try:
            self.queue.put_nowait(dist_id)
        except asyncio.QueueFull:
            log.warning("queue full, NOTIFY for %s dropped (the poller will find it)", dist_id)
            return False
        self.pending.add(dist_id)
        return True

    def _allowed(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source.split("%")[0])
        except ValueError:
            return False
        return any(address in net for net in self.config.notify.allowed_sources)

    # --- worker ---------------------------------------------------------------------------

    async def worker(self) -> None:
        while True:
            dist_id = await self.queue.get()
            try:
                await self.process(dist_id)
            except Exception:  # keep the daemon alive whatever one distribution does
                log.exception("distribution %s: unexpected error", dist_id)
            finally:
                self.pending.discard(dist_id)

    async def process(self, dist_id: str) -> None:
        started = time.monotonic()
        try:
            fetched = await asyncio.to_thread(self.fetcher.fetch, dist_id)
        except KrsError as exc:
            log.warning("distribution %s: fetch failed: %s", dist_id, exc)
            self.store.record_outcome(
                dist_id,
                self.pipeline.kdc,
                int(dist_id, 16),
                "failed",
                stage="fetch",
                error=str(exc),
            )
            return
        outcome = self.pipeline.process(dist_id, fetched.manifest, fetched.chunks)
        log.info(
            "distribution %s %s in %.3f s",
            dist_id,
            outcome.outcome,
            time.monotonic() - started,
        )

    # --- poller -------------------------------------------------------------------------

    async def poll_loop(self) -> None:
        """Ask the control zone for this node's distributions every ``poll_interval`` seconds,
        so a lost NOTIFY delays a key but never loses it."""
        while True:
            try:
                ids = await asyncio.to_thread(self.fetcher.pending_ids)
            except KrsError as exc:
                log.warning("poll failed: %s", exc)
                ids = []
            last = self.store.last_serial(self.pipeline.kdc) or 0
            for dist_id in ids:
                if int(dist_id, 16) > last and self.enqueue(dist_id):
                    log.info("poll found distribution %s", dist_id)
            await asyncio.sleep(self.config.poll_interval)

    # --- confirmations --------------------------------------------------------------------

    async def confirm_loop(self, tick: float = 0.5) -> None:
        while True:
            for dist_id, report, attempts in self.store.due_confirmations(time.time()):
                acked = await self._confirm(dist_id, report)
                delay = 0 if acked else min(CONFIRM_RETRY_MAX, 2.0**attempts)
                self.store.confirmation_attempted(
                    dist_id, acknowledged=acked, next_at=time.time() + delay
                )
            await asyncio.sleep(tick)

    async def _confirm(self, dist_id: str, report: dict[str, object]) -> bool:
        signed = sign_report(report, self.signer) if self.signer is not None else report
        body = dns.message.make_query(
            notify_name(dist_id, self.config.control_zone),
            dns.rdatatype.RdataType.make(CHUNK_TYPE),
        )
        body.set_opcode(dns.opcode.NOTIFY)
        body.flags = (body.flags | dns.flags.AA) & ~dns.flags.RD
        option = ChunkOption(CONTENT_KEY_STATUS, json.dumps(signed).encode())
        body.use_edns(0, 0, 4096, options=[option])
        for server in self.config.control_servers:
            try:
                reply = await udp_exchange(body, server.host, server.port, CONFIRM_TIMEOUT)
            except (TimeoutError, OSError, dns.exception.DNSException) as exc:
                log.info("confirmation %s to %s: %s", dist_id, server, exc)
                continue
            if reply.rcode() == dns.rcode.NOERROR:
                log.info("confirmation %s acknowledged by %s", dist_id, server)
                return True
            log.warning(
                "confirmation %s refused by %s: %s",
                dist_id,
                server,
                dns.rcode.to_text(reply.rcode()),
            )
        return False

    # --- listeners ------------------------------------------------------------------------

    async def start(self) -> list[asyncio.AbstractServer]:
        servers = []
        for address in self.config.notify.listen:
            _, server, port = await serve_dns(
                lambda wire, source, udp: self.handle_notify(wire, source),
                address.host,
                address.port,
                idle_timeout=10,
            )
            servers.append(server)
            self.bound.append(Address(address.host, port))
        return servers

    async def run(self) -> None:
        for dist_id in self.pipeline.recover():
            self.enqueue(dist_id)  # fetch again to complete it, if still published
        await self.start()
        print("krs listening for NOTIFY on " + ", ".join(str(a) for a in self.bound), flush=True)
        await asyncio.gather(self.worker(), self.confirm_loop(), self.poll_loop())
