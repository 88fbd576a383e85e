"""The KDC's side of node-key rotation (docs/kdc.md, "Rotating a node's keys"; wire form in
docs/protocol.md section 10).

State per node, in table ``node_rekey`` (made here, additive): when its current keys were
recorded, whether the KDC asked it to rekey (``requested``: by ``krs-kdc node rekey NODE`` or by
the maximum key age), and, between the switch and the first confirmation signed with the new
key (``switched``), the old public keys. The switch is one transaction: the node's row gets the
new keys, the old ones are kept here, a distribution sealed to the new key is made (the node's
zones when something was still pending for it, a ping otherwise), and the audit entry is
written. The first confirmation verified with the new signing key completes it: the old public
keys are forgotten (``node.rekey.complete``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode

from krs_plugin.dnsio import formerr_reply
from krs_plugin.errors import KrsError, SignatureError
from krs_plugin.kdc.build import build_distribution
from krs_plugin.kdc.distribute import LIVE_STATES, distribute_node, recipient_for
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.pqidentity import pq_signer
from krs_plugin.kdc.store import NodeRow, StateError, Store
from krs_plugin.payload import encode_payload, ping_entry
from krs_plugin.protocol import sig0
from krs_plugin.rekey import (
    BACKEND_FIELDS,
    NewPublicKeys,
    check_body,
    is_rekey,
    key_identity,
    read_body,
    requesting_node,
)

log = logging.getLogger(__name__)

SCHEMA = """CREATE TABLE IF NOT EXISTS node_rekey (
    node_id TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    keys_since INTEGER,
    state TEXT NOT NULL DEFAULT '',
    requested_at INTEGER,
    request_cause TEXT,
    switched_at INTEGER,
    old_keys TEXT,
    completed_at INTEGER,
    rekeys INTEGER NOT NULL DEFAULT 0
)"""
EVERY_META = "node_rekey_every"  # seconds; the maximum node-key age (krs-kdc node rekey --every)
REQUEST_TTL = 3600  # the ping that carries a request stays as long as an enrollment's first one
POLICY_CHECK = 5.0  # seconds between two looks at the key ages in serve


@dataclass(frozen=True)
class RekeyState:
    node_id: str
    keys_since: int  # when the current keys were recorded (enrollment or the last switch)
    state: str  # "" | "requested" | "switched"
    requested_at: int | None
    request_cause: str | None
    switched_at: int | None
    old_keys: dict[str, str] | None  # the public keys before the switch, until completion
    completed_at: int | None
    rekeys: int


def ensure_table(store: Store) -> None:
    """The table, made when a change needs it; ``execute``, not ``executescript``, which would
    commit the transaction it runs in (a ``--dry-run``'s)."""
    store.db.execute(SCHEMA)


def _has_table(store: Store) -> bool:
    """Reading needs no table: a kdc.db where no rotation happened has none (and may be opened
    read-only)."""
    found = store.db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'node_rekey'"
    ).fetchone()
    return found is not None


def thumbprint(text: str | None) -> str:
    """A digest of a public key text as stored, for the audit trail (the text's own SHA-256, as
    ``node.enroll`` records it, cut to 16 hex digits)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


def public_of(node: NodeRow) -> dict[str, str]:
    keys = {
        "hpke": node.hpke_pubkey,
        "jose": node.jose_pubkey,
        "hpke-pq": node.hpke_pq_pubkey,
        "signing": node.signing_pubkey,
        "sig0": node.sig0_pubkey,
    }
    return {k: v for k, v in keys.items() if v}


def state_of(store: Store, node: NodeRow) -> RekeyState:
    row = (
        store.db.execute("SELECT * FROM node_rekey WHERE node_id = ?", (node.id,)).fetchone()
        if _has_table(store)
        else None
    )
    if row is None:
        return RekeyState(node.id, node.created_at, "", None, None, None, None, None, 0)
    return RekeyState(
        node.id,
        row["keys_since"] or node.created_at,
        row["state"],
        row["requested_at"],
        row["request_cause"],
        row["switched_at"],
        json.loads(row["old_keys"]) if row["old_keys"] else None,
        row["completed_at"],
        row["rekeys"],
    )


def _upsert(store: Store, node: NodeRow, **values: object) -> None:
    store.db.execute(
        "INSERT OR IGNORE INTO node_rekey(node_id, keys_since) VALUES (?, ?)",
        (node.id, node.created_at),
    )
    assignments = ", ".join(f"{k} = ?" for k in values)
    store.db.execute(
        f"UPDATE node_rekey SET {assignments} WHERE node_id = ?", (*values.values(), node.id)
    )


# --- the KDC asks -------------------------------------------------------------------------------


def request(
    store: Store,
    identity: KdcIdentity | None,
    node_id: str,
    *,
    cause: str,
    now: float,
    backend: str | None = None,
) -> str | None:
    """Mark ``node_id`` to rekey and make the ping distribution that asks it (its id), in one
    transaction. A node asked less than ``REQUEST_TTL`` ago gets no second ping (None); once that
    ping expired unanswered (the node was down), it is asked again. Refused for a node without a
    SIG(0) key (it could not sign the rekey UPDATE) or without a signing key. ``backend``: the
    ping asks the node to move to it (``rekey: NAME``; docs/enrollment.md section 7)."""
    ensure_table(store)
    node = store.require_node(node_id)
    if not node.sig0_pubkey or not node.signing_pubkey:
        raise StateError(
            f"node {node.id} has no SIG(0) or signing key at the KDC (added by hand, or a tdns "
            "KRS): it cannot rekey; enrol it again instead"
        )
    current = state_of(store, node)
    if current.state == "requested" and now < (current.requested_at or 0) + REQUEST_TTL:
        return None
    if current.state == "switched":
        raise StateError(
            f"node {node.id} switched to new keys at {current.switched_at} and has not confirmed "
            "with them yet: ask again once that rotation completed (krs-kdc node show)"
        )
    with store.transaction():
        _upsert(store, node, state="requested", requested_at=int(now), request_cause=cause)
        dist_id = None
        if identity is not None:
            dist_id = send_ping(store, identity, node, rekey=True, now=now, backend=backend)
        store.audit(
            "node.rekey.request",
            node=node.id,
            now=now,
            details={"cause": cause, "distribution": dist_id, "backend": backend or node.backend},
        )
    return dist_id


def cancel(store: Store, node_id: str, *, now: float) -> bool:
    """Withdraw a request not acted on yet; False when there was none."""
    node = store.require_node(node_id)
    if state_of(store, node).state != "requested":
        return False
    with store.transaction():
        _upsert(store, node, state="", requested_at=None, request_cause=None)
        store.audit("node.rekey.cancel", node=node.id, now=now, details={})
    return True


def send_ping(
    store: Store,
    identity: KdcIdentity,
    node: NodeRow,
    *,
    rekey: bool,
    now: float,
    backend: str | None = None,
) -> str:
    """One distribution holding a single ping entry for ``node`` (sealed to its current key);
    with ``rekey`` its metadata carries our ``rekey: true`` (docs/payload.md)."""
    stamp = int(now)
    with store.transaction():
        dist_id, serial = store.next_distribution_id(now)
        nonce = f"rekey-{secrets.token_hex(6)}"
        entry = ping_entry(
            nonce,
            datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            distribution_id=dist_id,
            issued_at=stamp,
            expires_at=stamp + REQUEST_TTL,
            rekey=rekey,
            rekey_backend=backend if rekey and backend != node.backend else None,
        )
        records = build_distribution(
            encode_payload([entry]),
            recipient_for(node),
            identity.signer,
            dist_id,
            now=now,
            content="mgmt_operations",
            counts={"operation_count": 1},
            distribution_ttl=REQUEST_TTL,
            pq_signer=pq_signer(store.path.parent / "keys"),
        )
        store.add_distribution(
            dist_id,
            serial,
            node.id,
            zone=None,
            content="mgmt_operations",
            created_at=stamp,
            expires_at=stamp + REQUEST_TTL,
            records=[r.to_wire() or b"" for r in records],
            keys=[("ping.", f"nonce-{nonce}")],
        )
    return dist_id


def set_every(store: Store, seconds: int | None) -> None:
    """The maximum node-key age after which ``serve`` asks on its own (None: never)."""
    with store.transaction():
        if seconds is None:
            store.db.execute("DELETE FROM meta WHERE key = ?", (EVERY_META,))
        else:
            store.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (EVERY_META, str(seconds))
            )
        store.audit("node.rekey.policy", details={"every": seconds})


def every(store: Store) -> int | None:
    value = store.get_meta(EVERY_META)
    return int(value) if value else None


def ask_due(store: Store, identity: KdcIdentity | None, *, now: float) -> list[str]:
    """``serve``'s periodic work: ask every node whose keys are older than the maximum age and
    that is not rekeying already. Returns the nodes asked."""
    limit = every(store)
    if limit is None:
        return []
    asked = []
    for node in store.nodes():
        if not node.sig0_pubkey or not node.signing_pubkey:
            continue
        state = state_of(store, node)
        expired = state.state == "requested" and now >= (state.requested_at or 0) + REQUEST_TTL
        if (state.state and not expired) or now - state.keys_since < limit:
            continue
        request(store, identity, node.id, cause=state.request_cause or f"key age over {limit} s",
                now=now)  # fmt: skip
        log.info("node %s: keys older than %d s, asked to rekey", node.id, limit)
        asked.append(node.id)
    return asked


# --- the node's UPDATE --------------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, rcode: dns.rcode.Rcode, text: str) -> None:
        super().__init__(text)
        self.rcode = rcode
        self.text = text


def _unsigned(wire: bytes) -> dns.message.Message:
    """The UPDATE without its SIG(0); one without any is read as it is (refused, saying so, at
    the SIG(0) check)."""
    try:
        unsigned = sig0.strip(wire)
    except SignatureError:
        unsigned = wire
    return dns.message.from_wire(unsigned)


def looks_like_rekey(wire: bytes, control_zone: dns.name.Name) -> bool:
    """An UPDATE whose record is at ``_rekey.<cz>`` (read without its SIG(0))."""
    try:
        message = _unsigned(wire)
    except (dns.exception.DNSException, ValueError, KrsError):
        return False
    return message.opcode() == dns.opcode.UPDATE and is_rekey(message, control_zone)


class RekeyDesk:
    """Answers rekey UPDATEs for ``krs-kdc serve``."""

    def __init__(
        self, store: Store, identity: KdcIdentity, control_zone: dns.name.Name, *, clock_skew: float
    ) -> None:
        self.store = store
        self.identity = identity
        self.control_zone = control_zone
        self.clock_skew = clock_skew
        ensure_table(store)

    def handle(self, wire: bytes, source: str) -> bytes:
        now = time.time()
        try:
            query = _unsigned(wire)
        except (dns.exception.DNSException, ValueError, KrsError) as exc:
            log.info("malformed rekey UPDATE from %s: %s", source, exc)
            return formerr_reply(wire) or b""
        node_id = ""
        try:
            body = read_body(query, self.control_zone)
            node_id = requesting_node(body)
            outcome = self._take(wire, body, node_id, now)
        except Refusal as refusal:
            return self._refused(query, source, node_id, refusal.rcode, refusal.text)
        except KrsError as exc:
            return self._refused(query, source, node_id, dns.rcode.REFUSED, str(exc))
        log.info("rekey of node %s from %s: %s", node_id, source, outcome)
        response = dns.message.make_response(query)
        response.use_edns(0, 0, 1232)
        return bytes(response.to_wire())

    def _refused(
        self,
        query: dns.message.Message,
        source: str,
        node_id: str,
        rcode: dns.rcode.Rcode,
        text: str,
    ) -> bytes:
        log.warning(
            "rekey UPDATE from %s%s refused: %s",
            source,
            f" for node {node_id}" if node_id else "",
            text,
        )
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        code = dns.edns.EDECode.PROHIBITED if rcode == dns.rcode.REFUSED else dns.edns.EDECode.OTHER
        response.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(code, text[:300])])
        return bytes(response.to_wire())

    def _take(self, wire: bytes, body: dict[str, object], node_id: str, now: float) -> str:
        node = self.store.find_node(node_id)
        if node is None:
            raise Refusal(dns.rcode.REFUSED, f"node {node_id} is not enrolled")
        if not node.sig0_pubkey:
            raise Refusal(dns.rcode.REFUSED, f"node {node.id} has no SIG(0) key at the KDC")
        keys = check_body(body, node.id, now=now, clock_skew=self.clock_skew)
        state = state_of(self.store, node)
        try:
            self._verify_sig0(wire, node.sig0_pubkey, node.id, now)
        except SignatureError as current_failed:
            # A repeat of the UPDATE that switched (its answer was lost): signed by the key
            # before, naming exactly the keys recorded. Answered NOERROR, nothing changes.
            old = (state.old_keys or {}).get("sig0")
            if state.state == "switched" and old and keys == _new_of(node):
                self._verify_sig0(wire, old, node.id, now)
                return "already recorded (a repeat); nothing changed"
            raise Refusal(dns.rcode.REFUSED, f"SIG(0): {current_failed}") from current_failed
        if keys == _new_of(node):
            return "these keys are already the node's; nothing changed"
        # A change of backend is a rotation like any other (krs rekey --backend; docs/kdc.md,
        # "Rotating a node's keys"): check_body took only a backend this KDC seals with.
        return self.switch(node, keys, state, now)

    def _verify_sig0(self, wire: bytes, key_text: str, node_id: str, now: float) -> None:
        try:
            key = sig0.parse_key_text(key_text)
            sig0.verify(wire, key, signer=dns.name.from_text(node_id), now=now)
        except SignatureError:
            raise
        except KrsError as exc:
            raise SignatureError(str(exc)) from exc

    def switch(self, node: NodeRow, keys: NewPublicKeys, state: RekeyState, now: float) -> str:
        """Record the new keys, keep the old ones until completion, re-seal what was pending."""
        old = public_of(node)
        if state.state == "switched" and state.old_keys:
            old = state.old_keys  # a second rotation before the first completed: keep the oldest
        column = BACKEND_FIELDS[keys.backend]  # the nodes column has the member's name
        with self.store.transaction():
            self.store.db.execute(
                f"UPDATE nodes SET {column} = ?, signing_pubkey = ?, sig0_pubkey = ? WHERE id = ?",
                (keys.backend_pubkey, keys.signing_pubkey, keys.sig0_pubkey, node.id),
            )
            if keys.backend != node.backend:
                set_backend(self.store, node.id, keys.backend)
            _upsert(
                self.store,
                node,
                state="switched",
                switched_at=int(now),
                keys_since=int(now),
                old_keys=json.dumps(old),
                completed_at=None,
                requested_at=None,
                request_cause=None,
                rekeys=state.rekeys + 1,
            )
            updated = self.store.require_node(node.id)
            resealed = self._reseal(updated, now)
            self.store.audit(
                "node.rekey.switch",
                node=node.id,
                now=now,
                details={
                    "requested": state.state == "requested",
                    "backend": {"old": node.backend, "new": keys.backend},
                    "old": {k: thumbprint(v) for k, v in old.items()},
                    "new": {k: thumbprint(v) for k, v in public_of(updated).items()},
                    "distribution": resealed,
                },
            )
        return f"switched to the new keys; distribution {resealed} sealed to them"

    def _reseal(self, node: NodeRow, now: float) -> str:
        """What was pending for the node was sealed to the old key: one distribution of all its
        zones, sealed to the new key, supersedes it (a higher id); with nothing pending, a ping,
        so that the node opens something sealed to its new key and completes the rotation."""
        pending = [
            d
            for d in self.store.distributions(status="pending", node_id=node.id)
            if d.content == "key_operations"
        ]
        live = {k.zone for k in self.store.keys(states=LIVE_STATES)}
        zones = [z for z in node.zones if z in live]
        if pending and zones:
            return distribute_node(
                self.store, self.identity, node.id, zones=zones, now=now
            ).distribution_id
        return send_ping(self.store, self.identity, node, rekey=False, now=now)


def set_backend(store: Store, node_id: str, backend: str) -> None:
    """The node's backend as docs/kdc.md, "Nodes with the hybrid backend", stores it: hpke-pq in
    ``sealing`` with ``backend`` left at ``hpke`` (its CHECK allows only hpke and jose); hpke or
    jose in ``backend`` with ``sealing`` cleared."""
    if backend == "hpke-pq":
        store.db.execute(
            "UPDATE nodes SET backend = 'hpke', sealing = 'hpke-pq' WHERE id = ?", (node_id,)
        )
    else:
        store.db.execute(
            "UPDATE nodes SET backend = ?, sealing = NULL WHERE id = ?", (backend, node_id)
        )


def _new_of(node: NodeRow) -> NewPublicKeys:
    backend = public_of(node).get(node.backend, "")
    return NewPublicKeys(node.backend, backend, node.signing_pubkey or "", node.sig0_pubkey or "")


def confirmed(store: Store, node_id: str, *, now: float) -> bool:
    """A confirmation verified with the node's (new) signing key was recorded: a switched
    rotation is complete and the old public keys are forgotten. True when it completed one."""
    if not _has_table(store):
        return False  # no rotation ever: nothing to complete, nothing to make
    node = store.find_node(node_id)
    if node is None or not node.signing_pubkey:
        return False
    state = state_of(store, node)
    if state.state != "switched":
        return False
    with store.transaction():
        _upsert(store, node, state="", old_keys=None, completed_at=int(now))
        store.audit(
            "node.rekey.complete",
            node=node.id,
            now=now,
            details={"switched_at": state.switched_at},
        )
    log.info("node %s: key rotation complete; the old public keys are forgotten", node.id)
    return True


def describe(store: Store, node: NodeRow, *, now: float) -> dict[str, object]:
    """``node show``'s part: key thumbprints and ages, and the rotation state."""
    state = state_of(store, node)
    limit = every(store)
    return {
        "keys": {k: key_identity(k, v) for k, v in public_of(node).items()},
        "keys_since": state.keys_since,
        "key_age": int(now - state.keys_since),
        "rekey_state": state.state or "idle",
        "requested_at": state.requested_at,
        "request_cause": state.request_cause,
        "switched_at": state.switched_at,
        "old_keys": {k: key_identity(k, v) for k, v in (state.old_keys or {}).items()} or None,
        "completed_at": state.completed_at,
        "rekeys": state.rekeys,
        "max_key_age": limit,
    }


__all__ = [
    "RekeyDesk",
    "RekeyState",
    "ask_due",
    "cancel",
    "confirmed",
    "describe",
    "every",
    "looks_like_rekey",
    "request",
    "send_ping",
    "set_every",
    "state_of",
]
