"""Which KDC verification keys this node trusts (docs/security.md, "Rotation").

krs.yaml's ``kdc.verification_key`` is the key the node enrolled with; krs.yaml may be read-only
(the shipped systemd unit), so what a key roll changes lives in krs.db, table ``kdc_trust``:
a key the KDC announced (``kdc_keys`` in a distribution that verified with a trusted key,
docs/payload.md), one the operator added (``krs trust-kdc-key``), and the configured key once a
distribution signed by its successor dropped it. The trusted set is the configured key unless
dropped, plus every key recorded ``trusted``. Nothing else ever adds a key: an announcement is
read only after the KDC's signature verified with a key already trusted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from krs_plugin.crypto import JoseKey
from krs_plugin.errors import PayloadError
from krs_plugin.sqlitedb import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS kdc_trust (
    thumbprint TEXT PRIMARY KEY,
    jwk TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('trusted', 'dropped')),
    source TEXT NOT NULL,
    distribution_id TEXT,
    changed_at INTEGER NOT NULL,
    verified_at INTEGER
);
"""


@dataclass(frozen=True)
class TrustedKey:
    key: JoseKey
    source: str  # configured | announced | operator
    verified_at: int | None = None  # the last distribution it verified

    @property
    def thumbprint(self) -> str:
        return self.key.thumbprint


def _rows(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """The table's rows; none when krs.db predates it (made at the first change)."""
    try:
        cursor = db.execute(
            "SELECT thumbprint, jwk, state, source, verified_at FROM kdc_trust ORDER BY changed_at"
        )
    except sqlite3.OperationalError:
        return []
    return list(cursor.fetchall())


def trusted_keys(db: sqlite3.Connection, configured: JoseKey | None) -> list[TrustedKey]:
    """The keys a distribution's signature may verify with, the one that verified last first
    (the others are tried only when it does not verify: during a roll's overlap)."""
    rows = [tuple(r) for r in _rows(db)]
    dropped = {r[0] for r in rows if r[2] == "dropped"}
    seen: dict[str, TrustedKey] = {}
    verified = {r[0]: r[4] for r in rows}
    if configured is not None and configured.thumbprint not in dropped:
        tp = configured.thumbprint
        seen[tp] = TrustedKey(configured.public_only(), "configured", verified.get(tp))
    for thumbprint, jwk, state, source, verified_at in rows:
        if state == "trusted" and thumbprint not in seen:
            key = JoseKey.from_jwk_text(jwk, where=f"krs.db kdc_trust {thumbprint}")
            seen[thumbprint] = TrustedKey(key, source, verified_at)
    return sorted(seen.values(), key=lambda k: -(k.verified_at or 0))


def thumbprints(db: sqlite3.Connection, configured: JoseKey | None) -> list[str]:
    """The trusted set as a confirmation reports it (``kdc_keys``, docs/protocol.md section 6)."""
    return sorted(k.thumbprint for k in trusted_keys(db, configured))


def accept_announcement(
    db: sqlite3.Connection,
    signer: JoseKey,
    announced: Sequence[JoseKey],
    configured: JoseKey | None,
    dist_id: str,
    *,
    now: float | None = None,
) -> tuple[list[str], list[str]]:
    """Make the trusted set what a distribution verified by ``signer`` (a trusted key) says:
    announced keys become trusted, trusted keys it leaves out are dropped. Returns the
    thumbprints (added, dropped). A set without ``signer`` is refused (``PayloadError``,
    nothing changed): a KDC never tells nodes to distrust the key it signs with."""
    wanted = {k.thumbprint: k for k in announced}
    if signer.thumbprint not in wanted:
        raise PayloadError(
            f"metadata 'kdc_keys' does not list the key that signed the distribution "
            f"({signer.thumbprint}); the set is refused and this node's trust is unchanged"
        )
    stamp = int(time.time() if now is None else now)
    current = {k.thumbprint: k for k in trusted_keys(db, configured)}
    added = [t for t in wanted if t not in current]
    dropped = [t for t in current if t not in wanted]
    with transaction(db):
        db.execute(SCHEMA.strip().rstrip(";"))
        for thumbprint in added:
            _set(db, wanted[thumbprint], "trusted", "announced", dist_id, stamp)
        for thumbprint in dropped:
            _set(db, current[thumbprint].key, "dropped", "announced", dist_id, stamp)
        db.execute(
            "UPDATE kdc_trust SET verified_at = ? WHERE thumbprint = ?", (stamp, signer.thumbprint)
        )
    return added, dropped


def note_verified(db: sqlite3.Connection, signer: JoseKey, *, now: float | None = None) -> None:
    """Remember which key verified last, so it is tried first next time (only when the table
    exists: a node that never saw a roll keeps krs.db as it was)."""
    try:
        db.execute(
            "UPDATE kdc_trust SET verified_at = ? WHERE thumbprint = ?",
            (int(time.time() if now is None else now), signer.thumbprint),
        )
    except sqlite3.OperationalError:
        return


def trust_key(db: sqlite3.Connection, key: JoseKey, *, now: float | None = None) -> None:
    """The operator's ``krs trust-kdc-key``: trust ``key`` (checked against its fingerprint
    by the caller), also when a roll dropped it before."""
    stamp = int(time.time() if now is None else now)
    with transaction(db):
        db.execute(SCHEMA.strip().rstrip(";"))
        _set(db, key, "trusted", "operator", None, stamp)


def _set(
    db: sqlite3.Connection,
    key: JoseKey,
    state: str,
    source: str,
    dist_id: str | None,
    stamp: int,
) -> None:
    db.execute(
        "INSERT INTO kdc_trust(thumbprint, jwk, state, source, distribution_id, changed_at, "
        "verified_at) VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT(thumbprint) DO UPDATE SET "
        "state = excluded.state, source = excluded.source, "
        "distribution_id = excluded.distribution_id, changed_at = excluded.changed_at",
        (
            key.thumbprint,
            json.dumps(key.public_jwk, sort_keys=True),
            state,
            source,
            dist_id,
            stamp,
        ),
    )
