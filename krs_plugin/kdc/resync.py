"""``krs-kdc serve``'s answer to a resync request (ours, docs/protocol.md section 9): a node whose
server lost keys asks for them again, and gets a new distribution of its keys for all its zones.

Checked in this order, each refusal REFUSED with a warning naming the node and the reason, and
nothing made: the body parses and names an enrolled node; the node enrolled a signing key (a node
without one cannot ask: anyone could, in its name); the signature verifies with that key and the
request's ``time`` is within the clock skew; the node had no resend in the last
``min_interval`` seconds. Then ``distribute_node`` makes the distribution (one transaction) and
the NOTIFY loop sends it like any other.
"""

from __future__ import annotations

import logging
import time

import dns.message
import dns.rcode

from krs_plugin.crypto import JoseKey
from krs_plugin.errors import KrsError
from krs_plugin.kdc.distribute import distribute_node
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.store import StateError, Store
from krs_plugin.resync import check_request, describe, parse_request, requesting_node
from krs_plugin.sqlitedb import StateWriteError

log = logging.getLogger("krs_plugin.kdc.server")

RESYNC_INTERVAL = 60.0  # seconds: at most one resend per node in this time
REFUSALS_LOGGED = 20  # refusals logged one by one per minute; a flood of forged ones is counted


class ResyncDesk:
    def __init__(
        self,
        store: Store,
        identity: KdcIdentity | None,
        *,
        clock_skew: float,
        min_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.store = store
        self.identity = identity
        self.clock_skew = clock_skew
        self.min_interval = min_interval
        self.last_resend: dict[str, float] = {}  # node -> when its last resend was made
        self._window = -60.0  # the minute refusals are counted in (monotonic start)
        self._logged = self._unlogged = 0

    def answer(
        self, query: dns.message.Message, response: dns.message.Message, source: str
    ) -> dns.message.Message:
        node_id = "?"
        try:
            body = parse_request(query)
            node_id = requesting_node(body)
            reason, zones = describe(body)
            problem = self._refusal(body, node_id, time.time())
        except KrsError as exc:
            reason, zones, problem = "", [], str(exc)
        if problem is not None:
            self._refused(node_id, source, problem)
            response.set_rcode(dns.rcode.REFUSED)
            return response
        assert self.identity is not None
        try:
            summary = distribute_node(self.store, self.identity, node_id, now=time.time())
        except StateWriteError as exc:  # the node asks again until NOERROR
            log.error("resync request from node %s: not recorded, answered SERVFAIL: %s",
                      node_id, exc)  # fmt: skip
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        except StateError as exc:
            log.warning(
                "resync request from node %s (%s) refused: no distribution made: %s",
                node_id,
                source,
                exc,
            )
            response.set_rcode(dns.rcode.REFUSED)
            return response
        self.last_resend[node_id] = time.monotonic()
        log.info(
            "resync request from node %s (%s): %s (zones named: %s); distribution %s made with "
            "%d key(s) of %d zone(s)",
            node_id,
            source,
            reason,
            ", ".join(zones[:10]) or "none",
            summary.distribution_id,
            summary.key_count,
            len(summary.zones),
        )
        return response

    def _refused(self, node_id: str, source: str, problem: str) -> None:
        """A warning per refusal, up to REFUSALS_LOGGED a minute; beyond, one line saying how
        many were not logged (a flood of forged requests must not fill the log)."""
        now = time.monotonic()
        if now - self._window >= 60.0:
            if self._unlogged:
                log.warning("%d more resync request(s) refused in a minute, not logged one by one",
                            self._unlogged)  # fmt: skip
            self._window, self._logged, self._unlogged = now, 0, 0
        if self._logged >= REFUSALS_LOGGED:
            self._unlogged += 1
            return
        self._logged += 1
        log.warning("resync request from node %s (%s) refused: %s", node_id[:255], source, problem)

    def _refusal(self, body: dict[str, object], node_id: str, now: float) -> str | None:
        """Why the request must be refused, or None; raises KrsError for a bad signature."""
        if self.identity is None:
            return "this KDC has no signing identity to make distributions with"
        node = self.store.find_node(node_id)
        if node is None:
            return "no such node is enrolled"
        if not node.signing_pubkey:
            return (
                "the node has no signing key, so a request in its name cannot be trusted "
                "(krs-kdc distribute --node ... --all-zones sends its keys again)"
            )
        check_request(
            body,
            JoseKey.from_jwk_text(node.signing_pubkey, f"node {node_id} signing key"),
            now=now,
            clock_skew=self.clock_skew,
        )
        last = self.last_resend.get(node_id)
        if last is not None and time.monotonic() - last < self.min_interval:
            return (
                f"rate limited: a resend was made for it {time.monotonic() - last:.0f} s ago "
                f"(at most one per {self.min_interval:.0f} s)"
            )
        return None
