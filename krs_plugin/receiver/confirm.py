"""The KRS's confirmations: the key status report of each distribution, sent to the KDC until it
answers NOERROR (docs/protocol.md section 6).

The report is a NOTIFY to the KDC (``kdc.address``, else the control servers) in order, UDP first
as tdns does, TCP when the report is too big for a datagram or UDP gets no answer. Each try is
bound and signed afresh (``confirmation_message``): its ``time`` is when it is sent, so a report
that waited through a restart is still fresh, and no two tries carry the same signature, which the
KDC refuses as a replay once it has recorded one. The reports wait in the state database
(``ReceiverStore.due_confirmations``), so a restart or a KDC that is down delays them but never
loses them; each failed round waits twice as long as the last, up to ``CONFIRM_RETRY_MAX``.
"""

from __future__ import annotations

import logging

import dns.exception
import dns.message
import dns.rcode

from krs_plugin.config import Config
from krs_plugin.confirmation import confirmation_message
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import tcp_exchange, udp_exchange
from krs_plugin.logs import context

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0
CONFIRM_RETRY_MAX = 300.0
UDP_CONFIRM_MAX = 1232  # the DNS flag day 2020 datagram size: bigger reports go over TCP


def retry_delay(attempts: int) -> float:
    """Seconds before the next try of a report not yet acknowledged after ``attempts`` tries."""
    return min(CONFIRM_RETRY_MAX, 2.0**attempts)


async def confirm(
    dist_id: str, report: dict[str, object], config: Config, signer: JoseKey | None
) -> bool:
    """Send one report; True once the KDC acknowledged it. Never raises: one bad report
    must not stop confirming the others."""
    try:
        return await _send(dist_id, report, config, signer)
    except Exception:
        log.exception(
            "confirmation %s could not be sent",
            dist_id,
            extra=context(distribution_id=dist_id, stage="confirm"),
        )
        return False


async def _send(
    dist_id: str, report: dict[str, object], config: Config, signer: JoseKey | None
) -> bool:
    def message() -> dns.message.Message:
        node_id = config.node_id.to_text()
        return confirmation_message(dist_id, config.control_zone, report, signer, node_id=node_id)

    made = message()  # sent as it is by the first attempt
    fits_udp = len(made.to_wire(max_size=0xFFFF)) <= UDP_CONFIRM_MAX
    first: dns.message.Message | None = made
    where = context(distribution_id=dist_id, stage="confirm")
    for server in config.kdc_servers:
        # UDP first, as tdns does; TCP when the report is too big or UDP gets no answer.
        for exchange in (udp_exchange, tcp_exchange) if fits_udp else (tcp_exchange,):
            # bound to this moment, signed afresh for every later attempt (docs/protocol.md
            # section 6); the first is the one just made to learn the size, not signed twice
            body = first if first is not None else message()
            first = None
            try:
                reply = await exchange(body, server.host, server.port, CONFIRM_TIMEOUT)
            except (TimeoutError, OSError, dns.exception.DNSException) as exc:
                log.info("confirmation %s to %s: %s", dist_id, server, exc, extra=where)
                continue
            if reply.rcode() == dns.rcode.NOERROR:
                log.info("confirmation %s acknowledged by %s", dist_id, server, extra=where)
                return True
            log.warning(
                "confirmation %s refused by %s: %s",
                dist_id,
                server,
                dns.rcode.to_text(reply.rcode()),
                extra=where,
            )
            break
    return False
