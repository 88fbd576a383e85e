"""The KDC's signing-key rollover: ``krs-kdc identity roll`` (docs/security.md, "Rotation").

Three phases, kept in kdc.db (``signing_keys``, ``signing_trust``):

- ``announcing``: a next key exists (same custody as the current one: a 0600 file in ``keys/``
  or a new object in the PKCS#11 token). Every distribution is signed with the current key and
  carries both keys in ``kdc_keys`` (docs/payload.md); nodes trust the next key and say so in
  their confirmations (``kdc_keys``, docs/protocol.md section 6).
- ``retiring``: once every node trusts the next key, it becomes the current one (the switch):
  distributions are signed with it and carry only it, which tells nodes to drop the old key.
- once every node trusts only the new key, the old private key is destroyed (file shredded,
  token objects destroyed) and the roll is over (``idle``).

``krs-kdc serve`` takes each step by itself when its gate passes (``advance``, every engine
pass), and sends a node that has not confirmed another distribution every ``resend_after``;
``krs-kdc identity roll --continue`` takes the step by hand, ``--force`` past nodes that hold it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from krs_plugin.crypto import JoseKey, load_jose_key, write_jose_private, write_jose_public
from krs_plugin.errors import KrsError
from krs_plugin.kdc import custody as cu
from krs_plugin.kdc.identity import SIGNING_FILE, KdcIdentity
from krs_plugin.kdc.store import StateError, Store
from krs_plugin.sqlitedb import transaction

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS signing_keys (
    thumbprint TEXT PRIMARY KEY,
    jwk TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('next', 'current', 'previous', 'retired')),
    custody TEXT NOT NULL,
    locator TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    switched_at INTEGER,
    retired_at INTEGER
)""",
    """CREATE TABLE IF NOT EXISTS signing_trust (
    node_id TEXT PRIMARY KEY,
    thumbprints TEXT NOT NULL,
    distribution_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    reported_at INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS signing_resends (
    node_id TEXT PRIMARY KEY,
    distribution_id TEXT NOT NULL,
    sent_at INTEGER NOT NULL
)""",
)
PUBLIC_FILE = "kdc.signing.pubkey"
META_SIGNING = "signing_key"  # the current key's thumbprint, once a roll switched
PUBLIC_COMMENT = "KDC signing public key: configure it on every KRS as the KDC verification key"


@dataclass(frozen=True)
class KeyRow:
    thumbprint: str
    key: JoseKey  # public
    state: str
    custody: str
    locator: str  # a file name in keys/, or a token label
    created_at: int
    switched_at: int | None
    retired_at: int | None


@dataclass(frozen=True)
class Holding:
    node_id: str
    why: str


@dataclass(frozen=True)
class Gate:
    phase: str  # idle | announcing | retiring
    holding: tuple[Holding, ...]

    @property
    def ready(self) -> bool:
        return self.phase != "idle" and not self.holding


def ensure_schema(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)


def keys(db: sqlite3.Connection) -> list[KeyRow]:
    """Every signing key a roll recorded; none on a KDC that never rolled (or read-only)."""
    try:
        rows = db.execute("SELECT * FROM signing_keys ORDER BY created_at").fetchall()
    except sqlite3.OperationalError:
        return []
    return [
        KeyRow(
            r["thumbprint"],
            JoseKey.from_jwk_text(r["jwk"], where=f"signing key {r['thumbprint']}"),
            r["state"],
            r["custody"],
            r["locator"],
            r["created_at"],
            r["switched_at"],
            r["retired_at"],
        )
        for r in rows
    ]


def _by_state(rows: Sequence[KeyRow], state: str) -> KeyRow | None:
    return next((r for r in rows if r.state == state), None)


def phase_of(rows: Sequence[KeyRow]) -> str:
    if _by_state(rows, "next") is not None:
        return "announcing"
    if _by_state(rows, "previous") is not None:
        return "retiring"
    return "idle"


# --- what a distribution is signed with and carries -------------------------------------------

_LOADED: dict[tuple[str, str], JoseKey] = {}


def signing_state(store: Store, identity: KdcIdentity) -> tuple[JoseKey, tuple[JoseKey, ...]]:
    """The key to sign a distribution with and the ``kdc_keys`` it carries (none when no roll
    is under way). Read from kdc.db at every distribution, so a running ``krs-kdc serve``
    follows a switch made by another process at once."""
    rows = keys(store.db)
    current = _by_state(rows, "current")
    signer = identity.signer
    if current is not None and current.thumbprint != signer.thumbprint:
        signer = _load(store, current)
    following = _by_state(rows, "next")
    if following is not None:
        return signer, (signer.public_only(), following.key)
    if _by_state(rows, "previous") is not None:
        return signer, (signer.public_only(),)
    return signer, ()


def active_signer(store: Store, identity: KdcIdentity) -> JoseKey:
    """The key distributions are signed with now (what a new node's package names)."""
    return signing_state(store, identity)[0]


def _load(store: Store, row: KeyRow) -> JoseKey:
    """The private (or token) key of ``row``; the store's cached custody and audit signer are
    dropped when it changed, so the trail is signed by the key that signs distributions."""
    cache = (str(store.path), row.thumbprint)
    if cache in _LOADED:
        return _LOADED[cache]
    store.forget_custody()
    store.forget_audit_signer()
    if row.custody == "pkcs11":
        settings = replace(store.custody.settings, signing_label=row.locator)
        key = cu.open_custody(store.path.parent, settings).signing_key()
    else:
        key = load_jose_key(store.path.parent / "keys" / row.locator)
    if key.thumbprint != row.thumbprint:
        raise StateError(
            f"signing key {row.locator}: holds {key.thumbprint}, kdc.db records {row.thumbprint}"
        )
    _LOADED[cache] = key
    return key


# --- what nodes report --------------------------------------------------------------------------


def note_report(store: Store, node_id: str, dist_id: str, serial: int, report: object) -> None:
    """Record which KDC keys a node trusts, from its verified report's ``kdc_keys`` (ours,
    docs/protocol.md section 6); only a report of a newer distribution than the one recorded.
    Not waited on to disk (docs/kdc.md, "Serve"): lost, the node's next report says it again."""
    listed = report.get("kdc_keys") if isinstance(report, dict) else None
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        return
    node = store.find_node(node_id)
    if node is None or not node.signing_pubkey:
        return  # an unsigned report: nothing in it can be trusted
    with transaction(store.db, durable=False):
        ensure_schema(store.db)
        store.db.execute(
            "INSERT INTO signing_trust(node_id, thumbprints, distribution_id, serial, "
            "reported_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET "
            "thumbprints = excluded.thumbprints, distribution_id = excluded.distribution_id, "
            "serial = excluded.serial, reported_at = excluded.reported_at "
            "WHERE excluded.serial >= signing_trust.serial",
            (node_id, json.dumps(sorted(listed)[:8]), dist_id, serial, int(time.time())),
        )


def node_trust(db: sqlite3.Connection) -> dict[str, dict[str, object]]:
    try:
        rows = db.execute("SELECT * FROM signing_trust").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {
        r["node_id"]: {
            "kdc_keys": json.loads(r["thumbprints"]),
            "distribution_id": r["distribution_id"],
            "reported_at": r["reported_at"],
        }
        for r in rows
    }


def gate(store: Store) -> Gate:
    """Which nodes hold the next step, and why: every node must report trusting the next key
    (announcing), then trusting the new key and not the old one (retiring)."""
    rows = keys(store.db)
    phase = phase_of(rows)
    if phase == "idle":
        return Gate(phase, ())
    trust = node_trust(store.db)
    holding = []
    for node in store.nodes():
        if not node.signing_pubkey:
            holding.append(Holding(node.id, "no signing key: cannot report the keys it trusts"))
            continue
        listed = set(trust.get(node.id, {}).get("kdc_keys", ()))  # type: ignore[call-overload]
        if phase == "announcing":
            following, current = _by_state(rows, "next"), _by_state(rows, "current")
            assert following is not None and current is not None
            if following.thumbprint not in listed:
                holding.append(Holding(node.id, "has not confirmed trusting the next key"))
                continue
            ours = {following.thumbprint, current.thumbprint}
        else:
            current, previous = _by_state(rows, "current"), _by_state(rows, "previous")
            assert current is not None and previous is not None
            if current.thumbprint not in listed:
                holding.append(Holding(node.id, "has not confirmed trusting the new key"))
                continue
            if previous.thumbprint in listed:
                holding.append(Holding(node.id, "still trusts the old key"))
                continue
            ours = {current.thumbprint}
        foreign = sorted(listed - ours)
        if foreign:  # announced by someone else's key, or trusted by hand: look into it
            holding.append(Holding(node.id, f"trusts a key this KDC does not: {foreign[0]}"))
    return Gate(phase, tuple(holding))


# --- the steps ----------------------------------------------------------------------------------


def start(store: Store, identity: KdcIdentity, *, now: float, to_file: bool = False) -> KeyRow:
    """Make the next signing key in the current key's custody and record it; refused while a
    roll is under way. The caller sends every node a distribution (``resend``). ``to_file``
    (pkcs11 custody): the next key is a 0600 file, the way out of a token (docs/security.md,
    "Leaving a token")."""
    rows = keys(store.db)
    if phase_of(rows) != "idle":
        raise StateError(
            f"a signing-key roll is already under way ({phase_of(rows)}): krs-kdc identity "
            "status; krs-kdc identity roll --continue takes its next step"
        )
    signer = active_signer(store, identity)
    kind = store.custody.kind
    if to_file and kind != "pkcs11":
        raise StateError(f"--to-file is for pkcs11 custody; this KDC's is {kind}")
    stamp = int(now)
    keys_dir = store.path.parent / "keys"
    in_token = kind == "pkcs11" and bool(store.custody.settings.signing_label)
    current_kind, current_locator = ("pkcs11", store.custody.settings.signing_label) if in_token \
        else ("file", SIGNING_FILE)  # fmt: skip
    if kind == "pkcs11" and not to_file:
        settings = store.custody.settings
        base = (settings.signing_label or cu.DEFAULT_SIGNING_LABEL).split("@", 1)[0]
        locator = f"{base}@{stamp}"
        following = cu.provision_token(replace(settings, signing_label=locator), None)
    else:
        following = JoseKey.generate()
        locator = f"kdc.signing.{following.fingerprint}.privatekey"
        write_jose_private(
            keys_dir / locator, following, use="sig", comment="KDC next signing key (ES256)"
        )
    write_jose_public(
        keys_dir / f"kdc.signing.{following.fingerprint}.pubkey",
        following,
        use="sig",
        comment="KDC next signing public key (a signing-key roll: docs/security.md)",
    )
    custody_kind = "pkcs11" if kind == "pkcs11" and not to_file else "file"
    with transaction(store.db):
        ensure_schema(store.db)
        rows = keys(store.db)  # again, under the write lock: another roll may have begun
        if phase_of(rows) != "idle":
            if custody_kind == "pkcs11":
                cu.destroy_signing_key(store.custody.settings, locator)
            else:
                cu.shred(keys_dir / locator)
            raise StateError("a signing-key roll began meanwhile: krs-kdc identity status")
        if not any(r.thumbprint == signer.thumbprint for r in rows):
            _insert(store.db, signer, "current", current_kind, current_locator, stamp)
        _insert(store.db, following, "next", custody_kind, locator, stamp)
        store.db.execute("DELETE FROM signing_resends")
        store.audit(
            "signing.roll",
            details={"current": signer.thumbprint, "next": following.thumbprint,
                     "custody": custody_kind, "locator": locator},
            now=stamp,
        )  # fmt: skip
    return next(r for r in keys(store.db) if r.thumbprint == following.thumbprint)


def _insert(
    db: sqlite3.Connection, key: JoseKey, state: str, custody: str, locator: str, stamp: int
) -> None:
    db.execute(
        "INSERT INTO signing_keys(thumbprint, jwk, state, custody, locator, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key.thumbprint, json.dumps(key.public_jwk, sort_keys=True), state, custody, locator,
         stamp),
    )  # fmt: skip


def switch(store: Store, *, now: float, forced: Sequence[Holding] = ()) -> KeyRow:
    """Make the next key the current one: the files (or the custody's token label) and
    kdc.signing.pubkey name it, and kdc.db records it. One write transaction from the check to
    the audit entry, so ``serve`` and ``identity roll --continue`` never both switch. Safe to run
    again after a crash part-way: each file step checks whether it was done."""
    with transaction(store.db):
        rows = keys(store.db)
        following, current = _by_state(rows, "next"), _by_state(rows, "current")
        if following is None or current is None:
            raise StateError(
                "no signing-key roll is announcing a next key (krs-kdc identity status)"
            )
        keys_dir = store.path.parent / "keys"
        stamp = int(now)
        previous_locator = current.locator
        if following.custody == "file":
            live = keys_dir / SIGNING_FILE
            if current.custody == "file":
                previous_locator = f"kdc.signing.{current.key.fingerprint}.privatekey"
                if not (keys_dir / previous_locator).exists():
                    os.link(live, keys_dir / previous_locator)  # a name until retired
            if not live.exists() or load_jose_key(live).thumbprint != following.thumbprint:
                os.replace(keys_dir / following.locator, live)
            _sync_dir(keys_dir)
        write_jose_public(keys_dir / PUBLIC_FILE, following.key, use="sig", comment=PUBLIC_COMMENT)
        if store.custody.kind == "pkcs11":  # the token's label, or "" once the key is a file
            label = following.locator if following.custody == "pkcs11" else ""
            settings = replace(store.custody.settings, signing_label=label)
            store.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (cu.META_KEY, settings.dumps()),
            )
        store.db.execute(
            "UPDATE signing_keys SET state = 'previous', locator = ? WHERE thumbprint = ?",
            (previous_locator, current.thumbprint),
        )
        store.db.execute(
            "UPDATE signing_keys SET state = 'current', switched_at = ?, locator = ? "
            "WHERE thumbprint = ?",
            (stamp, SIGNING_FILE if following.custody == "file" else following.locator,
             following.thumbprint),
        )  # fmt: skip
        store.db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (META_SIGNING, following.thumbprint),
        )
        store.db.execute("DELETE FROM signing_resends")
        store.forget_custody()
        store.forget_audit_signer()  # the next entry is the new key's audit.key, then its own
        store.audit(
            "signing.switch",
            details={"current": following.thumbprint, "previous": current.thumbprint,
                     "forced_past": [h.node_id for h in forced]},
            now=stamp,
        )  # fmt: skip
    return next(r for r in keys(store.db) if r.thumbprint == following.thumbprint)


def retire(store: Store, *, now: float, forced: Sequence[Holding] = ()) -> KeyRow:
    """Destroy the old key's private half (file shredded, or the token's objects destroyed)
    and end the roll, in one write transaction from the check to the audit entry."""
    stamp = int(now)
    with transaction(store.db):
        previous = _by_state(keys(store.db), "previous")
        if previous is None:
            raise StateError("no old signing key waits to be retired (krs-kdc identity status)")
        if previous.custody == "pkcs11":
            cu.destroy_signing_key(store.custody.settings, previous.locator)
        else:
            cu.shred(store.path.parent / "keys" / previous.locator)
            _sync_dir(store.path.parent / "keys")
        store.db.execute(
            "UPDATE signing_keys SET state = 'retired', retired_at = ? WHERE thumbprint = ?",
            (stamp, previous.thumbprint),
        )
        store.db.execute("DELETE FROM signing_resends")
        store.audit(
            "signing.retire",
            details={"retired": previous.thumbprint, "custody": previous.custody,
                     "destroyed": previous.locator, "forced_past": [h.node_id for h in forced]},
            now=stamp,
        )  # fmt: skip
    return replace(previous, state="retired", retired_at=stamp)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- moving on ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    taken: str | None  # switched | retired | None
    gate: Gate
    resent: tuple[str, ...] = ()


def advance(
    store: Store,
    identity: KdcIdentity,
    *,
    now: float,
    force: bool = False,
    resend_after: float | None = None,
) -> Step:
    """Take the roll's next step when its gate passes (or ``force``); otherwise, with
    ``resend_after``, send a distribution again to each holding node whose last one is no
    longer pending and older than that. After a switch every node gets a distribution signed
    by the new key at once."""
    state = gate(store)
    if state.phase == "idle":
        return Step(None, state)
    if state.ready or force:
        if state.phase == "announcing":
            switch(store, now=now, forced=state.holding)
            resent = resend(store, identity, [n.id for n in store.nodes()], now=now)
            return Step("switched", gate(store), resent)
        retire(store, now=now, forced=state.holding)
        return Step("retired", gate(store))
    if resend_after is None:
        return Step(None, state)
    due = [h.node_id for h in state.holding if _resend_due(store, h.node_id, now, resend_after)]
    return Step(None, state, resend(store, identity, due, now=now) if due else ())


def _resend_due(store: Store, node_id: str, now: float, resend_after: float) -> bool:
    row = store.db.execute(
        "SELECT r.sent_at, d.status FROM signing_resends r LEFT JOIN distributions d "
        "ON d.id = r.distribution_id AND d.node_id = r.node_id WHERE r.node_id = ?",
        (node_id,),
    ).fetchone()
    if row is None:
        return True
    return bool(row["status"] != "pending" and now - row["sent_at"] >= resend_after)


def resend(
    store: Store, identity: KdcIdentity, node_ids: Sequence[str], *, now: float
) -> tuple[str, ...]:
    """A distribution of all its keys to each node (as ``krs-kdc distribute --node N
    --all-zones``), so it learns the roll's keys without waiting for a key event. A node
    without zones gets none (``identity status`` shows it holding). Returns the ids made."""
    from krs_plugin.kdc.distribute import distribute_node

    made = []
    for node_id in node_ids:
        node = store.find_node(node_id)
        if node is None or not node.zones:
            continue
        try:
            summary = distribute_node(store, identity, node_id, now=now)
        except KrsError:
            continue  # a zone without keys: shown by identity status as holding
        with transaction(store.db):
            ensure_schema(store.db)
            store.db.execute(
                "INSERT OR REPLACE INTO signing_resends(node_id, distribution_id, sent_at) "
                "VALUES (?, ?, ?)",
                (node_id, summary.distribution_id, int(now)),
            )
        made.append(summary.distribution_id)
    return tuple(made)


def status(store: Store, identity: KdcIdentity | None) -> dict[str, object]:
    """What ``krs-kdc identity status`` shows: keys, phase, each node's reported trust."""
    rows = keys(store.db)
    state = gate(store)
    current = _by_state(rows, "current")
    current_tp = (
        current.thumbprint if current else (identity.signer.thumbprint if identity else None)
    )
    following = _by_state(rows, "next")
    previous = _by_state(rows, "previous")
    trust = node_trust(store.db)
    holding = {h.node_id: h.why for h in state.holding}
    return {
        "phase": state.phase,
        "current": current_tp,
        "next": following.thumbprint if following else None,
        "previous": previous.thumbprint if previous else None,
        "keys": [
            {
                "thumbprint": r.thumbprint,
                "state": r.state,
                "custody": r.custody,
                "locator": r.locator,
                "created_at": r.created_at,
                "switched_at": r.switched_at,
                "retired_at": r.retired_at,
            }
            for r in rows
        ],
        "nodes": [
            {
                "node": n.id,
                "kdc_keys": trust.get(n.id, {}).get("kdc_keys", []),
                "reported_at": trust.get(n.id, {}).get("reported_at"),
                "holding": holding.get(n.id),
            }
            for n in store.nodes()
        ],
        "ready": state.ready,
    }
