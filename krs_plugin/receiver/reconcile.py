"""What the server holds against what the KRS installed, and the request for the keys again.

The KRS keeps no private key once it is installed, so when the server lost keys (a key folder
emptied, krs.yaml switched to another adapter after enrolling) it cannot put them back by itself.
``krs run`` compares, per configured zone, the adapter's ``current_keys`` with the keys the zone's
newest applied distribution installed (``ReceiverStore.expected_keys``), at start, after a reload
that changed the adapter and after each applied distribution while a zone is out of sync. A zone
whose server lacks one of those keys is out of sync: one warning per zone, ``/healthz`` unhealthy,
and a signed resync request (``krs_plugin/resync.py``, docs/protocol.md section 9) to the control
servers until one acknowledges it; the KDC then sends a new distribution of the node's keys.
``krs keys`` and ``krs doctor`` show the same comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.rcode

from krs_plugin.adapters.base import Adapter
from krs_plugin.config import Config
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import tcp_exchange, udp_exchange
from krs_plugin.errors import KrsError
from krs_plugin.logs import context
from krs_plugin.receiver.store import ExpectedZone, ReceiverStore
from krs_plugin.resync import resync_message

log = logging.getLogger(__name__)

RESYNC_TIMEOUT = 5.0
RESYNC_RETRY = 2.0  # seconds before the first retry of an unacknowledged request, doubling...
RESYNC_RETRY_MAX = 300.0  # ...up to this
UDP_MAX = 1232  # the DNS flag day 2020 datagram size: bigger requests go over TCP

SERVER_NAMES = {"knot": "knotd", "bind9": "named", "nsd": "nsd", "powerdns": "PowerDNS"}


def adapter_identity(config: Config) -> str:
    """``<type>:<digest>``: the adapter type and the first 16 hex digits of SHA-256 over its
    settings as canonical JSON (relative paths with krs.yaml's folder). Another type, another
    folder or another server is another identity; the settings themselves are not kept."""
    settings = json.dumps(
        config.adapter.settings, sort_keys=True, separators=(",", ":"), default=str
    )
    base = str(config.path.parent.resolve()) if config.path is not None else ""
    digest = hashlib.sha256(f"{base}\0{settings}".encode()).hexdigest()[:16]
    return f"{config.adapter.type}:{digest}"


def holder(config: Config) -> str:
    """What holds the keys, for messages: the server's program, or the key folder."""
    kind = config.adapter.type
    if kind == "directory":
        folder = Path(str(config.adapter.settings.get("path", "")))
        return f"the key folder {folder if folder.is_absolute() else config.path.parent / folder}"
    return SERVER_NAMES.get(kind, f"the {kind} adapter's server")


@dataclass(frozen=True)
class ZoneSync:
    """One zone compared: ``missing`` keys (tag, algorithm) that ``distribution_id`` installed
    and the server does not hold; ``reason`` empty when the zone is in sync."""

    zone: str
    distribution_id: str
    expected: tuple[tuple[int, int, int], ...]
    missing: tuple[tuple[int, int], ...]
    adapter_changed: bool
    reason: str
    error: str | None = None  # the adapter could not list the zone's keys

    @property
    def in_sync(self) -> bool:
        return not self.reason


def compare(config: Config, store: ReceiverStore, adapter: Adapter) -> list[ZoneSync]:
    """Every configured zone that has applied keys, compared with what ``adapter`` holds now.
    A zone whose keys cannot be listed (the server down) is reported with ``error`` and not
    counted as out of sync: the KDC could not fix that."""
    now_identity = adapter_identity(config)
    expected = store.expected_keys()
    results = []
    for zone in sorted(config.zones, key=lambda z: z.to_text()):
        name = zone.to_text()
        want = expected.get(name)
        if want is None:
            continue  # nothing applied yet: the KDC's first distribution brings the keys
        try:
            held = {(k.key_tag, k.algorithm) for k in adapter.current_keys(zone)}
        except (KrsError, OSError) as exc:
            results.append(_zone(want, (), now_identity, config, error=str(exc)))
            continue
        missing = tuple((t, a) for t, a, _ in want.keys if (t, a) not in held)
        results.append(_zone(want, missing, now_identity, config))
    return results


def _zone(
    want: ExpectedZone,
    missing: tuple[tuple[int, int], ...],
    identity: str,
    config: Config,
    *,
    error: str | None = None,
) -> ZoneSync:
    changed = want.adapter is not None and want.adapter != identity
    reason = ""
    if missing:
        tags = ", ".join(str(t) for t, _ in missing)
        reason = (
            f"{holder(config)} does not hold key(s) {tags} of {want.zone} that distribution "
            f"{want.distribution_id} installed"
        )
        if changed:
            reason += f" (installed through adapter {want.adapter}, now {identity})"
    return ZoneSync(
        want.zone, want.distribution_id, tuple(want.keys), missing, changed, reason, error
    )


async def request_resend(config: Config, signer: JoseKey, zones: list[str], reason: str) -> bool:
    """One round of the resync request to the KDC (``kdc.address``, else the control servers)
    in order (UDP, then TCP); True once one answered NOERROR. Never raises."""
    where = context(stage="resync")
    node_id = config.node_id.to_text()
    first = resync_message(node_id, config.control_zone, zones, reason, signer)
    fits_udp = len(first.to_wire(max_size=0xFFFF)) <= UDP_MAX
    for server in config.kdc_servers:
        # UDP first when the request fits a datagram, as confirmations; TCP otherwise.
        for exchange in (udp_exchange, tcp_exchange) if fits_udp else (tcp_exchange,):
            message = resync_message(node_id, config.control_zone, zones, reason, signer)
            try:
                reply = await exchange(message, server.host, server.port, RESYNC_TIMEOUT)
            except (TimeoutError, OSError, dns.exception.DNSException) as exc:
                log.info("resync request to %s: %s", server, exc, extra=where)
                continue
            except Exception:  # one bad round must not end the retries
                log.exception("resync request to %s could not be sent", server, extra=where)
                continue
            if reply.rcode() == dns.rcode.NOERROR:
                log.info(
                    "resync request acknowledged by %s: the KDC sends the keys again",
                    server,
                    extra=where,
                )
                return True
            log.warning(
                "resync request refused by %s: %s (the KDC's log says why)",
                server,
                dns.rcode.to_text(reply.rcode()),
                extra=where,
            )
            break
    return False


def retry_delay(attempts: int) -> float:
    return float(min(RESYNC_RETRY_MAX, RESYNC_RETRY * 2.0 ** max(0, attempts - 1)))


def resend_advice(config: Config) -> str:
    return f"krs run asks the KDC to send the keys again (or, at the KDC: {kdc_command(config)})"


def kdc_command(config: Config) -> str:
    """What the KDC's operator types to send this node its keys again."""
    return f"krs-kdc distribute --node {config.node_id.to_text()} --all-zones"


__all__ = [
    "ZoneSync",
    "adapter_identity",
    "compare",
    "holder",
    "kdc_command",
    "request_resend",
    "resend_advice",
]
