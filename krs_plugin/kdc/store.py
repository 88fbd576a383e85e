"""The KDC's state in SQLite (WAL): zones, DNSSEC keys, nodes, distributions and their records.

The database holds the DNSSEC private keys, sealed under the KDC's key-encryption key (in the clear
only in a legacy kdc.db not migrated yet: kdc/custody.py); it is created 0600 and never logged.
Every change runs in one transaction: a command that fails leaves the state exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name

from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.kdc import audit as trail
from krs_plugin.kdc import custody
from krs_plugin.kdc.policy import Policy, check_policy_name, unsafe_changes, validate
from krs_plugin.sqlitedb import StateConnection, open_private_db, transaction, write_error

SCHEMA_VERSION = 1
KEY_STATES = ("created", "published", "active", "retired", "removed")
SIGNING_ROLES = ("ZSK", "CSK")  # sign the zone's RRsets
SEP_ROLES = ("KSK", "CSK")  # sign the DNSKEY RRset; the parent's DS points at them
DISTRIBUTION_STATES = ("pending", "confirmed", "failed", "expired")
BACKENDS = ("hpke", "jose", "hpke-pq")
# The backend column's CHECK (first release) holds only hpke and jose, and the schema only grows:
# an hpke-pq node or token keeps "hpke" (its family) there and "hpke-pq" in the added column
# ``sealing``, which wins when set (docs/kdc.md, "Nodes with the hybrid backend").
_CHECKED_BACKEND = {"hpke-pq": "hpke"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS zones (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(name),
    key_tag INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('KSK', 'ZSK', 'CSK')),
    algorithm INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('created','published','active','retired','removed')),
    private_pem BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    publish_at INTEGER,
    activate_at INTEGER,
    inactive_at INTEGER,
    delete_at INTEGER,
    UNIQUE (zone, key_tag, algorithm)
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    notify_address TEXT NOT NULL,
    backend TEXT NOT NULL CHECK (backend IN ('hpke', 'jose')),
    hpke_pubkey TEXT,
    jose_pubkey TEXT,
    signing_pubkey TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS node_zones (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    zone TEXT NOT NULL REFERENCES zones(name),
    PRIMARY KEY (node_id, zone)
);
CREATE TABLE IF NOT EXISTS distributions (
    id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    serial INTEGER NOT NULL,
    zone TEXT,
    content TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending','confirmed','failed','expired')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    notified_at INTEGER,
    notify_attempts INTEGER NOT NULL DEFAULT 0,
    notify_acked_at INTEGER,
    confirmed_at INTEGER,
    error TEXT,
    report TEXT,
    PRIMARY KEY (id, node_id)
);
-- A node's distributions by status, newest last: krs-kdc status --nodes and the fleet metrics
-- (kdc/fleet.py) seek each node's last confirmation and its unconfirmed ones through it.
CREATE INDEX IF NOT EXISTS distributions_by_node ON distributions(node_id, status, serial);
CREATE TABLE IF NOT EXISTS records (
    distribution_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    rdata BLOB NOT NULL,
    PRIMARY KEY (distribution_id, node_id, sequence)
);
CREATE TABLE IF NOT EXISTS distribution_keys (
    distribution_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (distribution_id, node_id, zone, key_id)
);
CREATE TABLE IF NOT EXISTS served_state (
    distribution_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    read_at INTEGER,
    recorded_at INTEGER NOT NULL,
    soa_serial INTEGER,
    state TEXT NOT NULL,
    PRIMARY KEY (distribution_id, node_id, zone)
);
CREATE INDEX IF NOT EXISTS served_state_by_node ON served_state(node_id, zone, read_at);
CREATE INDEX IF NOT EXISTS served_state_by_zone ON served_state(zone, read_at);
CREATE TABLE IF NOT EXISTS distribution_sequence (id INTEGER PRIMARY KEY CHECK (id = 1),
                                                  next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    backend TEXT NOT NULL CHECK (backend IN ('hpke', 'jose')),
    zones TEXT NOT NULL,
    package_digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_records (
    key_id INTEGER NOT NULL REFERENCES keys(id),
    record TEXT NOT NULL CHECK (record IN ('dnskey', 'krrsig', 'zrrsig', 'ds', 'cds')),
    state TEXT NOT NULL CHECK (state IN ('hidden', 'rumoured', 'omnipresent', 'unretentive')),
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, record)
);
CREATE TABLE IF NOT EXISTS rollovers (
    id INTEGER PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(name),
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    keys TEXT NOT NULL,
    step INTEGER NOT NULL,
    step_started_at INTEGER,
    distribution_id TEXT,
    nodes TEXT NOT NULL DEFAULT '[]',
    reached_at INTEGER,
    largest_dnskey_ttl INTEGER,
    resent_at INTEGER,
    ds_seen_at INTEGER,
    ds_gone_at INTEGER,
    requested_at INTEGER NOT NULL,
    finished_at INTEGER,
    cause TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_rollover_per_zone ON rollovers(zone)
    WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    zone TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_zone ON history(zone, id);
CREATE TABLE IF NOT EXISTS rollover_requests (
    id INTEGER PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(name),
    key_id INTEGER NOT NULL REFERENCES keys(id),
    cause TEXT NOT NULL,
    requested_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS zone_parents (
    zone TEXT PRIMARY KEY REFERENCES zones(name),
    settings TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS parent_watch (
    zone TEXT PRIMARY KEY REFERENCES zones(name),
    purpose TEXT NOT NULL,
    next_at INTEGER NOT NULL,
    checks INTEGER NOT NULL DEFAULT 0,
    checked_at INTEGER,
    why TEXT,
    view TEXT,
    ds_ttl INTEGER,
    pushed_at INTEGER,
    push_ok INTEGER,
    push_detail TEXT
);
-- The control zone's change counter (kdc/zoneversions.py): every write that can change what
-- the zone serves bumps it, whichever process makes it (krs-kdc distribute, serve, a restore),
-- so serve rebuilds the zone and raises its SOA serial only when something changed. A
-- confirmation (pending -> confirmed or failed) changes nothing the zone serves.
CREATE TABLE IF NOT EXISTS control_zone_changes (id INTEGER PRIMARY KEY CHECK (id = 1),
    counter INTEGER NOT NULL);
INSERT OR IGNORE INTO control_zone_changes(id, counter) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS control_zone_record_added AFTER INSERT ON records
    BEGIN UPDATE control_zone_changes SET counter = counter + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS control_zone_record_removed AFTER DELETE ON records
    BEGIN UPDATE control_zone_changes SET counter = counter + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS control_zone_distribution_changed
    AFTER UPDATE OF status, expires_at ON distributions
    WHEN (OLD.status = 'expired') IS NOT (NEW.status = 'expired')
        OR OLD.expires_at IS NOT NEW.expires_at
    BEGIN UPDATE control_zone_changes SET counter = counter + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS control_zone_distribution_removed AFTER DELETE ON distributions
    BEGIN UPDATE control_zone_changes SET counter = counter + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS history_no_update BEFORE UPDATE ON history
    BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS history_no_delete BEFORE DELETE ON history
    BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
"""
_SCHEMA += trail.SCHEMA  # the audit trail (kdc/audit.py): entries, the keys that signed them
# The tables of the first release: a database without them is not a KDC's (sqlitedb.py).
_TABLES = ("meta", "zones", "keys", "nodes", "node_zones", "distributions", "records")
DAMAGED_ADVICE = (
    "restore kdc.db (with its -wal file, if any) from a backup; it holds the zones' private "
    "keys, so there is no starting afresh without new keys for every zone "
    "(docs/kdc.md, 'A damaged state database')"
)
# Columns added after the first release: (table, column, declaration), added when missing.
_ADDED_COLUMNS = (
    ("nodes", "sig0_pubkey", "TEXT"),
    ("distributions", "stage", "TEXT"),  # where the node's failure report says it stopped
    ("distributions", "failed_at", "INTEGER"),  # when the failure was recorded
    ("distribution_keys", "operation", "TEXT"),  # roll | delete (NULL: made before it was kept)
    ("zones", "policy", "TEXT"),  # a key policy's name (kdc/policy.py); NULL: keys by hand
    ("rollovers", "parent_ds_ttl", "INTEGER"),  # the DS TTL the parent served (kdc/parentwatch.py)
    ("keys", "dnskey", "TEXT"),  # the public DNSKEY rdata text: what needs no private key reads it
    ("keys", "private_sealed", "BLOB"),  # the PEM sealed under the KEK (kdc/custody.py)
    ("nodes", "sealing", "TEXT"),  # hpke-pq, where the backend column's CHECK cannot hold it
    ("nodes", "hpke_pq_pubkey", "TEXT"),  # hex, ML-KEM-768 + X25519 (crypto/hybrid.py)
    ("enrollment_tokens", "sealing", "TEXT"),  # hpke-pq, as for nodes
)


class StateError(KrsError):
    """A KDC command refers to something that does not exist, or would duplicate something."""


@dataclass(frozen=True)
class NodeRow:
    id: str
    notify_address: str
    backend: str
    hpke_pubkey: str | None
    jose_pubkey: str | None
    signing_pubkey: str | None
    created_at: int
    zones: tuple[str, ...] = ()
    sig0_pubkey: str | None = None  # the KEY RR text the node enrolled with
    hpke_pq_pubkey: str | None = None  # hex, for the hpke-pq backend


@dataclass(frozen=True)
class TokenRow:
    token_hash: str = field(repr=False)
    node_id: str
    backend: str
    zones: tuple[str, ...]
    package_digest: str
    created_at: int
    expires_at: int
    used_at: int | None
    revoked_at: int | None

    @property
    def token_id(self) -> str:
        """A short public name for the token (the start of its hash), for list and revoke."""
        return self.token_hash[:12]

    def status(self, now: float) -> str:
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at < now else "open"


@dataclass(frozen=True)
class KeyRow:
    id: int
    zone: str
    key_tag: int
    role: str
    algorithm: int
    flags: int
    state: str
    created_at: int
    publish_at: int | None
    activate_at: int | None
    inactive_at: int | None
    delete_at: int | None
    private_pem: bytes = field(repr=False)  # legacy custody: PKCS#8 PEM; sealed: empty
    dnskey: str | None = None  # the public DNSKEY rdata (text); None: not known yet
    sealed: bytes = field(default=b"", repr=False)  # PEM sealed under the KEK (Store.private_pem)


@dataclass(frozen=True)
class DistributionRow:
    id: str
    node_id: str
    serial: int
    zone: str | None
    content: str
    status: str
    created_at: int
    expires_at: int
    notified_at: int | None
    notify_attempts: int
    notify_acked_at: int | None
    confirmed_at: int | None
    error: str | None
    report: str | None
    stage: str | None = None  # of a failure (errors.STAGES), from the node's report
    failed_at: int | None = None


@dataclass(frozen=True)
class ServedRow:
    """What a node read back from its server for one zone after applying one distribution
    (the confirmation's ``served``, docs/protocol.md section 6)."""

    distribution_id: str
    node_id: str
    zone: str
    read_at: int | None  # when the node read it (its clock, Unix seconds)
    recorded_at: int  # when the KDC recorded the confirmation
    soa_serial: int | None
    state: dict[str, object]  # the report's entry as sent: dnskey, signers, TTLs, RRSIG times


@dataclass(frozen=True)
class ZoneState:
    """A node's zone and the newest distribution of it sent to the node (None: none yet)."""

    zone: str
    distribution: DistributionRow | None


@dataclass(frozen=True)
class HeldKey:
    """A key the node confirmed for a zone, in the newest distribution of the zone it confirmed:
    installed (``deleted`` False) or deleted at the KDC's word. ``role`` and ``algorithm`` are
    None when the KDC no longer has the key."""

    zone: str
    key_tag: int
    role: str | None
    algorithm: int | None
    deleted: bool
    distribution_id: str
    confirmed_at: int | None


NODE_STATES = ("failed", "expired", "pending", "ok", "none")
"""``node list``'s status, the worst first: the newest distribution of one of its zones failed,
expired unconfirmed, or waits; every zone's newest is confirmed; no distribution yet."""


def node_state(zones: Sequence[ZoneState]) -> str:
    statuses = {z.distribution.status for z in zones if z.distribution is not None}
    for status, state in (("failed", "failed"), ("expired", "expired"), ("pending", "pending")):
        if status in statuses:
            return state
    return "ok" if statuses else "none"


def _signs(row: KeyRow, now: float) -> bool:
    """The key signs now: active, or published with its activate time passed (``serve`` makes it
    active on its next round; the nodes already sign by the timing)."""
    if row.state == "active":
        return True
    return (
        row.state == "published"
        and row.activate_at is not None
        and row.activate_at <= now
        and (row.inactive_at is None or row.inactive_at > now)
    )


def _dnskey_text(pem: bytes, zone: str, algorithm: int, flags: int, *, strict: bool) -> str | None:
    """The public DNSKEY rdata of a PKCS#8 PEM key; None for one that does not load when not
    ``strict`` (a legacy kdc.db keeps what it was given; a sealed key must be a key)."""
    from krs_plugin.dnssec import load_pkcs8_pem
    from krs_plugin.errors import KeyFileError

    try:
        return load_pkcs8_pem(pem, zone, algorithm, flags).dnskey.to_text()
    except KeyFileError:
        if strict:
            raise
        return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(name: str) -> str:
    """Zone and node names are stored lower-case and absolute."""
    text = name.strip().lower()
    if not text.endswith("."):
        raise StateError(f"name {name!r} must be fully qualified (end with '.')")
    try:
        return dns.name.from_text(text).to_text()
    except dns.exception.DNSException as exc:
        raise StateError(f"name {name!r} is not a valid domain name: {exc}") from exc


@dataclass(frozen=True)
class PublishedRecord:
    """One CHUNK record of the control zone (sequence 0: the manifest)."""

    distribution_id: str
    node_id: str
    sequence: int
    rdata: bytes
    expires_at: int


class Store:
    """All reads and writes of the KDC's state."""

    _custody: custody.Custody | None = None

    def __init__(
        self, path: str | os.PathLike[str], *, audit_signer: trail.AuditSigner | None = None
    ) -> None:
        self.path = Path(path)
        self.actor = "krs-kdc"  # who the audit trail names: "operator NAME" or "serve"
        self._audit_signer = audit_signer
        self._audit_signer_given = audit_signer
        if not self.path.exists() and not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: state directory does not exist (run init)")
        self.db = open_private_db(self.path, _SCHEMA, tables=_TABLES, advice=DAMAGED_ADVICE)
        try:
            self.db.executescript(_SCHEMA)  # tables added since; executescript commits itself
            for table, column, declaration in _ADDED_COLUMNS:
                present = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            self._widen_key_records()
            self._fill_dnskeys()
        except sqlite3.Error as exc:
            self.db.close()
            raise write_error(self.path, exc) from exc
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _widen_key_records(self) -> None:
        """A kdc.db from before the ``cds`` record (issue 23) has a CHECK that refuses it;
        SQLite cannot change a CHECK, so the table is copied into one that allows it."""
        row = self.db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'key_records'"
        ).fetchone()
        if row is None or "'cds'" in row["sql"]:
            return
        create = _SCHEMA.split("CREATE TABLE IF NOT EXISTS key_records", 1)[1].split(";", 1)[0]
        self.db.executescript(
            "BEGIN IMMEDIATE;"
            f"CREATE TABLE key_records_widened{create};"
            "INSERT INTO key_records_widened SELECT key_id, record, state, changed_at "
            "FROM key_records;"
            "DROP TABLE key_records;"
            "ALTER TABLE key_records_widened RENAME TO key_records;"
            "COMMIT;"
        )

    def _fill_dnskeys(self) -> None:
        """The public DNSKEY of keys stored before the column (plain PEM rows): from then on,
        what needs only the public key never reads a private one."""
        rows = self.db.execute(
            "SELECT id, zone, algorithm, flags, private_pem FROM keys "
            "WHERE dnskey IS NULL AND length(private_pem) > 0"
        ).fetchall()
        if not rows:
            return
        with self.transaction():
            for r in rows:
                text = _dnskey_text(
                    bytes(r["private_pem"]), r["zone"], r["algorithm"], r["flags"], strict=False
                )
                if text is not None:
                    self.db.execute("UPDATE keys SET dnskey = ? WHERE id = ?", (text, r["id"]))

    # --- custody of the DNSSEC private keys (kdc/custody.py) ----------------------------------

    @property
    def custody(self) -> custody.Custody:
        """Where the KEK and the signing key are (meta ``custody``); opened, not yet used."""
        if self._custody is None:
            settings = custody.CustodySettings.loads(self.get_meta(custody.META_KEY))
            self._custody = custody.open_custody(self.path.parent, settings)
            self._custody.rolled_signers = self._rolled_signers
        assert self._custody is not None
        return self._custody

    def _rolled_signers(self) -> frozenset[str]:
        """The signing keys kdc.db names current or next (none before a first roll). Asked
        only when kdc.signing.pubkey names another key, from any thread that shares the
        custody: a connection of its own, read-only."""
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
            ) as db:
                rows = db.execute(
                    "SELECT thumbprint FROM signing_keys WHERE state IN ('current', 'next')"
                ).fetchall()
        except sqlite3.Error:  # no roll table in this kdc.db
            return frozenset()
        return frozenset(str(r[0]) for r in rows)

    def forget_custody(self) -> None:
        """Read meta ``custody`` again at the next use (after a migration changed it)."""
        self._custody = None

    def forget_audit_signer(self) -> None:
        """Load the trail's signer again at the next entry (a signing-key roll switched it:
        kdc/signroll.py); a signer given to the constructor is kept."""
        if getattr(self, "_audit_signer_given", None) is None:
            self._audit_signer = None

    def private_pem(self, row: KeyRow) -> bytes:
        """The key's PKCS#8 PEM: opened under the KEK (a sealed row), or as stored (legacy).
        Only what needs the private key calls this: sealing a distribution."""
        if row.private_pem:
            return row.private_pem
        if not row.sealed:
            raise custody.CustodyError(f"key {row.key_tag} of {row.zone}: no private key stored")
        return self.custody.open(
            row.sealed,
            custody.key_aad(row.zone, row.key_tag, row.algorithm, row.role),
            what=f"the private key of {row.zone} tag {row.key_tag}",
        )

    @classmethod
    def reader(cls, path: str | os.PathLike[str]) -> Store:
        """A Store that only reads ``path``, on a connection of its own that may be used from
        another thread (the metrics' scrape, docs/operations.md): opened read-only and with
        ``PRAGMA query_only``, without the checks and schema changes of a Store that writes
        (``krs-kdc serve`` opened the file with those already)."""
        store = cls.__new__(cls)
        store.path = Path(path)
        uri = "file:" + urllib.parse.quote(str(store.path.resolve())) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None,
                             check_same_thread=False, factory=StateConnection)  # fmt: skip
        assert isinstance(db, StateConnection)
        db.path = store.path
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error:
            db.close()
            raise
        store.db = db
        return store

    def close(self) -> None:
        self.db.close()

    # --- the audit trail (kdc/audit.py) ------------------------------------------------------

    def audit_signer(self) -> trail.AuditSigner | None:
        """What signs the trail: the signer given, else the KDC's signing key in ``keys/``
        beside kdc.db. None, and no trail, for a kdc.db without one that has none yet (a bare
        database in tests); refused once the trail has begun: an event must not go unrecorded."""
        if self._audit_signer is not None:
            return self._audit_signer
        from krs_plugin.crypto import load_jose_key
        from krs_plugin.kdc.identity import SIGNING_FILE

        path = self.path.parent / "keys" / SIGNING_FILE
        if self.custody.kind == "pkcs11":  # the signing key is in the token (kdc/custody.py)
            self._audit_signer = trail.JoseSigner(self.custody.signing_key())
            return self._audit_signer
        if path.exists():
            self._audit_signer = trail.JoseSigner(load_jose_key(path))
            return self._audit_signer
        if self.db.execute("SELECT 1 FROM audit LIMIT 1").fetchone() is not None:
            raise ConfigError(
                f"{path}: the KDC's signing key is missing, and kdc.db's audit trail is signed "
                "with it: no change is made without its entry (restore keys/ from the backup)"
            )
        return None

    def audit(
        self,
        kind: str,
        *,
        zone: str | None = None,
        zones: Collection[str] = (),
        node: str | None = None,
        details: Mapping[str, object] | None = None,
        per_zone: Mapping[str, Mapping[str, object]] | None = None,
        now: float | None = None,
    ) -> None:
        """Append an audit entry in the current transaction (the event's own). An event of
        several ``zones`` is one entry per zone, each naming only its own (``per_zone``: what
        each adds to ``details``), so a zone's evidence pack discloses no other zone."""
        signer = self.audit_signer()
        if signer is None:
            return
        targets: list[str | None] = [zone] if zone is not None else [*sorted(set(zones))]
        events = []
        for target in targets or [None]:
            data = dict(details or {})
            if per_zone and target is not None and target in per_zone:
                data.update(per_zone[target])
            events.append(trail.Event(kind, target, node, data))
        trail.append_many(self.db, signer, events, actor=self.actor, now=now)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic change: everything inside commits together or not at all."""
        return transaction(self.db)

    # --- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- zones ----------------------------------------------------------------------------

    def add_zone(self, name: str, *, now: float | None = None, policy: str | None = None) -> str:
        zone = canonical(name)
        with self.transaction():
            if self._zone_exists(zone):
                raise StateError(f"zone {zone} already exists")
            if policy is not None:
                self.require_policy(policy)
            self.db.execute(
                "INSERT INTO zones(name, created_at, policy) VALUES (?, ?, ?)",
                (zone, int(now or time.time()), policy),
            )
            self.audit("zone.add", zone=zone, details={"policy": policy}, now=now)
        return zone

    def zones(self) -> list[str]:
        return [r["name"] for r in self.db.execute("SELECT name FROM zones ORDER BY name")]

    def require_zone(self, name: str) -> str:
        zone = canonical(name)
        if not self._zone_exists(zone):
            raise StateError(f"zone {zone} not found (add it with: krs-kdc zone add {zone})")
        return zone

    def _zone_exists(self, zone: str) -> bool:
        return self.db.execute("SELECT 1 FROM zones WHERE name = ?", (zone,)).fetchone() is not None

    # --- key policies (kdc/policy.py) -----------------------------------------------------

    def add_policy(self, name: str, policy: Policy, *, now: float | None = None) -> None:
        check_policy_name(name)
        validate(policy, name=f"policy {name}")
        stamp = int(now or time.time())
        with self.transaction():
            if self.find_policy(name) is not None:
                raise StateError(f"policy {name} already exists (change it with: krs-kdc policy "
                                 f"set {name} ...)")  # fmt: skip
            self.db.execute(
                "INSERT INTO policies(name, settings, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (name, policy.dumps(), stamp, stamp),
            )
            self.audit(
                "policy.add",
                details={"policy": name, "settings": json.loads(policy.dumps())},
                now=stamp,
            )

    def find_policy(self, name: str) -> Policy | None:
        row = self.db.execute("SELECT settings FROM policies WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Policy.loads(row["settings"], where=f"{self.path}: policy {name}")

    def require_policy(self, name: str) -> Policy:
        policy = self.find_policy(name)
        if policy is None:
            raise StateError(f"policy {name} not found (add it with: krs-kdc policy add {name})")
        return policy

    def policies(self) -> list[tuple[str, Policy]]:
        rows = self.db.execute("SELECT name, settings FROM policies ORDER BY name").fetchall()
        return [
            (r["name"], Policy.loads(r["settings"], where=f"{self.path}: policy {r['name']}"))
            for r in rows
        ]

    def policy_zones(self, name: str) -> list[str]:
        """The zones that use policy ``name``."""
        rows = self.db.execute("SELECT name FROM zones WHERE policy = ? ORDER BY name", (name,))
        return [r["name"] for r in rows]

    def check_policy_change(self, name: str, new: Policy) -> Policy:
        """The stored policy ``name`` (old), after checking that ``new`` may replace it: valid, and
        without a change that starts a rollover the engine does not run while zones use it."""
        old = self.require_policy(name)
        validate(new, name=f"policy {name}")
        zones = self.policy_zones(name)
        unsafe = unsafe_changes(old, new)
        if zones and unsafe:
            raise StateError(
                f"refused to change policy {name}, which zone(s) {', '.join(zones)} use: "
                + "; ".join(unsafe)
                + ". Nothing was changed; make a new policy for new keys instead"
            )
        return old

    def set_policy(self, name: str, new: Policy, *, now: float | None = None) -> Policy:
        """Replace policy ``name`` with ``new`` in one transaction; returns the old one."""
        with self.transaction():
            old = self.check_policy_change(name, new)
            self.db.execute(
                "UPDATE policies SET settings = ?, updated_at = ? WHERE name = ?",
                (new.dumps(), int(now or time.time()), name),
            )
            self.audit(
                "policy.set",
                zones=self.policy_zones(name),
                now=now,
                details={
                    "policy": name,
                    "old": json.loads(old.dumps()),
                    "new": json.loads(new.dumps()),
                },
            )
        return old

    def remove_policy(self, name: str) -> None:
        with self.transaction():
            self.require_policy(name)
            zones = self.policy_zones(name)
            if zones:
                raise StateError(
                    f"refused to remove policy {name}: zone(s) {', '.join(zones)} use it (give "
                    "them another policy or none first: krs-kdc zone set ZONE --policy NAME | "
                    "--no-policy)"
                )
            self.db.execute("DELETE FROM policies WHERE name = ?", (name,))
            self.audit("policy.remove", details={"policy": name})

    def policy_of(self, zone: str) -> tuple[str, Policy] | None:
        """The zone's policy as (name, Policy), what the rollover engine reads; None: manual."""
        name = self.zone_policy(zone)
        return None if name is None else (name, self.require_policy(name))

    def zone_policy(self, zone: str) -> str | None:
        """The name of the zone's policy; None: its keys are managed by hand."""
        name = self.require_zone(zone)
        row = self.db.execute("SELECT policy FROM zones WHERE name = ?", (name,)).fetchone()
        return None if row is None else row["policy"]

    def check_zone_policy(self, zone: str, policy_name: str | None) -> str:
        """The canonical zone, after checking that it may take ``policy_name`` (None: manual):
        the policy exists and matches the algorithm and layout of the zone's live keys."""
        name = self.require_zone(zone)
        if policy_name is None:
            return name
        policy = self.require_policy(policy_name)
        live = [k for k in self.keys(name) if k.state in ("created", "published", "active")]
        algorithms = sorted({k.algorithm for k in live} - {policy.algorithm})
        if algorithms:
            raise StateError(
                f"refused to give {name} policy {policy_name}: the zone has live keys of "
                f"algorithm {', '.join(map(str, algorithms))} and the policy uses algorithm "
                f"{policy.algorithm}. Nothing was changed; give it a policy of its algorithm, "
                "then change that policy's algorithm: the engine runs an algorithm rollover"
            )
        roles = sorted({k.role for k in live} - set(policy.roles))
        if roles:
            raise StateError(
                f"refused to give {name} policy {policy_name}: the zone has live "
                f"{'/'.join(roles)} keys and the policy's layout is {policy.layout}; a CSK <-> "
                "KSK+ZSK rollover is not supported yet. Nothing was changed"
            )
        return name

    def set_zone_policy(self, zone: str, policy_name: str | None) -> str:
        """Give the zone a policy (None: none, keys by hand) in one transaction."""
        with self.transaction():
            name = self.check_zone_policy(zone, policy_name)
            self.db.execute("UPDATE zones SET policy = ? WHERE name = ?", (policy_name, name))
            self.audit("zone.policy", zone=name, details={"policy": policy_name})
        return name

    # --- nodes ----------------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        *,
        notify_address: str,
        backend: str,
        hpke_pubkey: str | None,
        jose_pubkey: str | None,
        signing_pubkey: str | None,
        zones: Sequence[str],
        sig0_pubkey: str | None = None,
        used_token: str | None = None,
        now: float | None = None,
        hpke_pq_pubkey: str | None = None,
    ) -> NodeRow:
        """Add a node; with ``used_token`` (enrollment), the token is marked used in the same
        transaction, and refused if something used it in the meantime."""
        node = canonical(node_id)
        if backend not in BACKENDS:
            raise StateError(f"backend {backend!r} is not one of {BACKENDS}")
        with self.transaction():
            if self.find_node(node) is not None:
                raise StateError(f"node {node} already exists (remove it first to re-add)")
            wanted = [self.require_zone(z) for z in zones]
            created = int(now or time.time())
            if used_token is not None:
                marked = self.db.execute(
                    "UPDATE enrollment_tokens SET used_at = ? WHERE token_hash = ? "
                    "AND used_at IS NULL AND revoked_at IS NULL",
                    (created, used_token),
                )
                if marked.rowcount != 1:
                    raise StateError("enrollment token already used or revoked")
            self.db.execute(
                "INSERT INTO nodes(id, notify_address, backend, hpke_pubkey, jose_pubkey, "
                "signing_pubkey, sig0_pubkey, created_at, sealing, hpke_pq_pubkey) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node,
                    notify_address,
                    _CHECKED_BACKEND.get(backend, backend),
                    hpke_pubkey,
                    jose_pubkey,
                    signing_pubkey,
                    sig0_pubkey,
                    created,
                    backend if backend in _CHECKED_BACKEND else None,
                    hpke_pq_pubkey,
                ),
            )
            self.db.executemany(
                "INSERT INTO node_zones(node_id, zone) VALUES (?, ?)", [(node, z) for z in wanted]
            )
            public = {
                "hpke": hpke_pubkey,
                "jose": jose_pubkey,
                "hpke-pq": hpke_pq_pubkey,
                "signing": signing_pubkey,
                "sig0": sig0_pubkey,
            }
            self.audit(
                "node.add" if used_token is None else "node.enroll",
                node=node,
                zones=wanted,
                now=created,
                details={
                    "backend": backend,
                    "notify": notify_address,
                    # the public keys' SHA-256 (never a private key: the node keeps those)
                    "public_keys": {k: _digest(v) for k, v in public.items() if v},
                    **({} if used_token is None else {"token_id": used_token[:12]}),
                },
            )
        found = self.find_node(node)
        assert found is not None
        return found

    def remove_node(self, node_id: str) -> None:
        node = canonical(node_id)
        with self.transaction():
            found = self.find_node(node)
            if found is None:
                raise StateError(f"node {node} not found")
            self.db.execute("DELETE FROM nodes WHERE id = ?", (node,))
            # Sealed to the removed node's keys: a node enrolled again under the id could not
            # open them, so they are withdrawn with it.
            withdrawn = self.db.execute(
                "UPDATE distributions SET status = 'expired', error = 'node removed' "
                "WHERE node_id = ? AND status = 'pending'",
                (node,),
            )
            self.audit(
                "node.remove",
                node=node,
                zones=found.zones,
                details={"withdrawn": withdrawn.rowcount},
            )

    def change_node_zones(
        self, node_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> NodeRow:
        """``node set``: the node serves ``add`` too and no longer ``remove``, in one transaction.
        Refused, changing nothing, for an unknown node or zone, a zone it already serves (add) or
        does not serve (remove), or one zone in both."""
        node = canonical(node_id)
        with self.transaction():
            found = self.require_node(node)
            adding = [self.require_zone(z) for z in add]
            removing = [canonical(z) for z in remove]
            both = sorted(set(adding) & set(removing))
            if both:
                raise StateError(f"node {node}: zone {both[0]} is both added and removed")
            served = set(found.zones)
            already = [z for z in adding if z in served]
            if already:
                raise StateError(f"node {node} already serves zone {already[0]}")
            foreign = [z for z in removing if z not in served]
            if foreign:
                raise StateError(
                    f"node {node} does not serve zone {foreign[0]} "
                    f"(it serves: {', '.join(found.zones) or 'none'})"
                )
            self.db.executemany(
                "INSERT INTO node_zones(node_id, zone) VALUES (?, ?)",
                [(node, z) for z in dict.fromkeys(adding)],
            )
            self.db.executemany(
                "DELETE FROM node_zones WHERE node_id = ? AND zone = ?",
                [(node, z) for z in removing],
            )
            self.audit(
                "node.set",
                node=node,
                zones=[*adding, *removing],
                details={"add": sorted(set(adding)), "remove": sorted(set(removing))},
            )
        return self.require_node(node)

    def find_node(self, node_id: str) -> NodeRow | None:
        row = self.db.execute("SELECT * FROM nodes WHERE id = ?", (canonical(node_id),)).fetchone()
        return None if row is None else self._node(row)

    def require_node(self, node_id: str) -> NodeRow:
        found = self.find_node(node_id)
        if found is None:
            raise StateError(f"node {canonical(node_id)} not found (see: krs-kdc node list)")
        return found

    def nodes(self, zone: str | None = None) -> list[NodeRow]:
        if zone is None:
            rows = self.db.execute("SELECT * FROM nodes ORDER BY id").fetchall()
        else:
            rows = self.db.execute(
                "SELECT n.* FROM nodes n JOIN node_zones z ON z.node_id = n.id "
                "WHERE z.zone = ? ORDER BY n.id",
                (canonical(zone),),
            ).fetchall()
        return [self._node(r) for r in rows]

    def zone_nodes(self, zone: str) -> list[NodeRow]:
        """The nodes serving ``zone``, each with ``zones`` = (zone,) only: what a distribution
        of the zone needs (ids and public keys) without reading every node's full list of zones,
        which made distributing 10,000 zones cost 10,000 squared reads."""
        zone = canonical(zone)
        rows = self.db.execute(
            "SELECT n.* FROM nodes n JOIN node_zones z ON z.node_id = n.id "
            "WHERE z.zone = ? ORDER BY n.id",
            (zone,),
        ).fetchall()
        return [self._node(r, (zone,)) for r in rows]

    def _node(self, row: sqlite3.Row, zones: tuple[str, ...] | None = None) -> NodeRow:
        if zones is None:
            zones = tuple(
                r["zone"]
                for r in self.db.execute(
                    "SELECT zone FROM node_zones WHERE node_id = ? ORDER BY zone", (row["id"],)
                )
            )
        return NodeRow(
            row["id"],
            row["notify_address"],
            row["sealing"] or row["backend"],
            row["hpke_pubkey"],
            row["jose_pubkey"],
            row["signing_pubkey"],
            row["created_at"],
            zones,
            row["sig0_pubkey"],
            row["hpke_pq_pubkey"],
        )

    # --- enrollment tokens ------------------------------------------------------------------

    def add_token(
        self,
        token_hash: str,
        node_id: str,
        *,
        backend: str,
        zones: Sequence[str],
        package_digest: str,
        expires_at: int,
        now: float,
    ) -> TokenRow:
        node = canonical(node_id)
        if backend not in BACKENDS:
            raise StateError(f"backend {backend!r} is not one of {BACKENDS}")
        with self.transaction():
            if self.find_node(node) is not None:
                raise StateError(
                    f"node {node} already exists: remove it first (krs-kdc node remove {node}) "
                    "to enrol it again"
                )
            wanted = [self.require_zone(z) for z in zones]
            self.db.execute(
                "INSERT INTO enrollment_tokens(token_hash, node_id, backend, zones, "
                "package_digest, created_at, expires_at, sealing) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_hash,
                    node,
                    _CHECKED_BACKEND.get(backend, backend),
                    json.dumps(wanted),
                    package_digest,
                    int(now),
                    expires_at,
                    backend if backend in _CHECKED_BACKEND else None,
                ),
            )
            self.audit(
                "enroll.create",
                node=node,
                zones=wanted,
                now=now,
                details={
                    "token_id": token_hash[:12],
                    "backend": backend,
                    "expires_at": expires_at,
                    "package_digest": package_digest,
                },
            )
        found = self.find_token(token_hash)
        assert found is not None
        return found

    def find_token(self, token_hash: str) -> TokenRow | None:
        row = self.db.execute(
            "SELECT * FROM enrollment_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else self._token(row)

    def tokens(self, node_id: str | None = None) -> list[TokenRow]:
        if node_id is None:
            rows = self.db.execute("SELECT * FROM enrollment_tokens ORDER BY created_at")
        else:
            rows = self.db.execute(
                "SELECT * FROM enrollment_tokens WHERE node_id = ? ORDER BY created_at",
                (canonical(node_id),),
            )
        return [self._token(r) for r in rows.fetchall()]

    def revoke_tokens(self, *, node_id: str | None = None, token_id: str | None = None,
                      now: float) -> list[TokenRow]:  # fmt: skip
        """Revoke the open tokens of a node, or one token by its id; returns those revoked."""
        open_ = [
            t
            for t in self.tokens(node_id)
            if t.used_at is None and t.revoked_at is None
            and (token_id is None or t.token_id == token_id)
        ]  # fmt: skip
        with self.transaction():
            for token in open_:
                self.db.execute(
                    "UPDATE enrollment_tokens SET revoked_at = ? WHERE token_hash = ?",
                    (int(now), token.token_hash),
                )
                self.audit(
                    "enroll.revoke",
                    node=token.node_id,
                    zones=token.zones,
                    now=now,
                    details={"token_id": token.token_id},
                )
        return open_

    @staticmethod
    def _token(row: sqlite3.Row) -> TokenRow:
        data = dict(row)
        data["backend"] = data.pop("sealing", None) or data["backend"]
        return TokenRow(**{**data, "zones": tuple(json.loads(row["zones"]))})

    # --- keys -----------------------------------------------------------------------------

    def add_key(
        self,
        zone: str,
        *,
        key_tag: int,
        role: str,
        algorithm: int,
        flags: int,
        private_pem: bytes,
        state: str = "created",
        publish_at: int | None = None,
        activate_at: int | None = None,
        inactive_at: int | None = None,
        delete_at: int | None = None,
        now: float | None = None,
        origin: str = "generate",
        audit_details: Mapping[str, object] | None = None,
    ) -> KeyRow:
        """A new key (``origin``: generate or import, the audit entry's kind; ``audit_details``:
        what else it records, e.g. the DS digest)."""
        with self.transaction():
            zone = self.require_zone(zone)
            exists = self.db.execute(
                "SELECT 1 FROM keys WHERE zone = ? AND key_tag = ? AND algorithm = ?",
                (zone, key_tag, algorithm),
            ).fetchone()
            if exists:
                raise StateError(f"zone {zone} already has a key with tag {key_tag}")
            dnskey = _dnskey_text(private_pem, zone, algorithm, flags, strict=self.custody.seals)
            sealed = None
            if self.custody.seals:  # never in the clear in kdc.db (docs/security.md)
                aad = custody.key_aad(zone, key_tag, algorithm, role)
                sealed, private_pem = self.custody.seal(private_pem, aad), b""
            cursor = self.db.execute(
                "INSERT INTO keys(zone, key_tag, role, algorithm, flags, state, private_pem, "
                "created_at, publish_at, activate_at, inactive_at, delete_at, dnskey, "
                "private_sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    zone,
                    key_tag,
                    role,
                    algorithm,
                    flags,
                    state,
                    private_pem,
                    int(now or time.time()),
                    publish_at,
                    activate_at,
                    inactive_at,
                    delete_at,
                    dnskey,
                    sealed,
                ),
            )
            key_id = cursor.lastrowid
            self.audit(
                f"key.{origin}",
                zone=zone,
                now=now,
                details={
                    "key_tag": key_tag,
                    "role": role,
                    "algorithm": algorithm,
                    "flags": flags,
                    "state": state,
                    "publish_at": publish_at,
                    "activate_at": activate_at,
                    "inactive_at": inactive_at,
                    "delete_at": delete_at,
                    **(audit_details or {}),
                },
            )
        return self.key_by_id(int(key_id or 0))

    def key_by_id(self, key_id: int) -> KeyRow:
        row = self.db.execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise StateError(f"key {key_id} not found")
        return self._key(row)

    def require_key(self, zone: str, key_tag: int) -> KeyRow:
        zone = self.require_zone(zone)
        rows = self.db.execute(
            "SELECT * FROM keys WHERE zone = ? AND key_tag = ?", (zone, key_tag)
        ).fetchall()
        if not rows:
            raise StateError(f"zone {zone} has no key with tag {key_tag} (see: krs-kdc key list)")
        if len(rows) > 1:
            raise StateError(f"zone {zone} has several keys with tag {key_tag}; use --algorithm")
        return self._key(rows[0])

    def keys(self, zone: str | None = None, states: Sequence[str] | None = None) -> list[KeyRow]:
        query = "SELECT * FROM keys"
        clauses, args = [], []
        if zone is not None:
            clauses.append("zone = ?")
            args.append(canonical(zone))
        if states:
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self.db.execute(query + " ORDER BY zone, id", args).fetchall()
        return [self._key(r) for r in rows]

    def set_key_state(self, key_id: int, state: str, *, now: float | None = None) -> None:
        if state not in KEY_STATES:
            raise StateError(f"key state {state!r} is not one of {KEY_STATES}")
        column = {"retired": "inactive_at", "removed": "delete_at"}.get(state)
        with self.transaction():
            row = self.key_by_id(key_id)
            self.db.execute("UPDATE keys SET state = ? WHERE id = ?", (state, key_id))
            self.audit_key_state(row, state, "set", now=now)
            if column:
                self.db.execute(
                    f"UPDATE keys SET {column} = COALESCE({column}, ?) WHERE id = ?",
                    (int(now or time.time()), key_id),
                )

    def retire_key(self, zone: str, key_tag: int, *, force: bool, now: float) -> KeyRow:
        """``key retire``: the key stops signing and stays published. Refused (nothing changed)
        when it would leave the zone without a key signing in its role, or when it is a KSK/CSK
        that was published (its DS may be at the parent), unless ``force``."""
        with self.transaction():
            row = self.require_key(zone, key_tag)
            if row.state in ("retired", "removed"):
                raise StateError(f"key {row.key_tag} of {row.zone} is already {row.state}")
            if not force:
                self._guard(row, "retire", now)
            # Not before its activate time (a key retired before it ever signed): the times
            # stay in order, publish <= activate <= inactive, as the payload requires.
            stamp = max(int(now), row.activate_at or 0)
            self.db.execute(
                "UPDATE keys SET state = 'retired', inactive_at = MIN(COALESCE(inactive_at, ?), ?)"
                " WHERE id = ?",
                (stamp, stamp, row.id),
            )
            self.audit_key_state(row, "retired", "retire", now=now, force=force)
        return self.key_by_id(row.id)

    def remove_key(self, zone: str, key_tag: int, *, force: bool, now: float) -> KeyRow:
        """``key remove``: the next distribution tells the nodes to delete the key. Guarded as
        ``retire_key``."""
        with self.transaction():
            row = self.require_key(zone, key_tag)
            if row.state == "removed":
                raise StateError(f"key {row.key_tag} of {row.zone} is already removed")
            if not force:
                self._guard(row, "remove", now)
            self.db.execute(
                "UPDATE keys SET state = 'removed', delete_at = MIN(COALESCE(delete_at, ?), ?) "
                "WHERE id = ?",
                (int(now), int(now), row.id),
            )
            self.audit_key_state(row, "removed", "remove", now=now, force=force)
        return self.key_by_id(row.id)

    def restore_key(self, zone: str, key_tag: int, *, now: float) -> KeyRow:
        """``key restore``: a removed key comes back (kdc.db still holds its private key), its
        removal time cleared. ``retired`` (published, not signing) when its retire time has
        passed; else ``published``, so it signs again from its activate time. The next
        distribution sends it to the nodes again."""
        with self.transaction():
            row = self.require_key(zone, key_tag)
            if row.state != "removed":
                raise StateError(
                    f"key {row.key_tag} of {row.zone} is {row.state}, not removed: nothing to "
                    "restore"
                )
            retired = row.inactive_at is not None and row.inactive_at <= int(now)
            self.db.execute(
                "UPDATE keys SET state = ?, delete_at = NULL WHERE id = ?",
                ("retired" if retired else "published", row.id),
            )
            self.audit_key_state(row, "retired" if retired else "published", "restore", now=now)
        return self.key_by_id(row.id)

    def audit_key_state(
        self, row: KeyRow, state: str, cause: str, *, now: float | None = None, **more: object
    ) -> None:
        """A key's state change in the audit trail (``cause``: the command, time, or the
        lifecycle engine)."""
        self.audit(
            "key.state",
            zone=row.zone,
            now=now,
            details={
                "key_tag": row.key_tag,
                "role": row.role,
                "algorithm": row.algorithm,
                "from": row.state,
                "to": state,
                "cause": cause,
                **more,
            },
        )

    def _guard(self, row: KeyRow, action: str, now: float) -> None:
        """Refuse ``action`` on ``row`` with every reason at once (StateError), or return."""
        others = [k for k in self.keys(row.zone) if k.id != row.id]
        problems = []
        what = "removing" if action == "remove" else "retiring"
        for roles, duty, missing in (
            (SIGNING_ROLES, "signs the zone", "its RRsets unsigned (bogus)"),
            (SEP_ROLES, "signs the DNSKEY RRset (secure entry point)", "no signed DNSKEY RRset"),
        ):
            if row.role not in roles or not _signs(row, now):
                continue
            if not any(k.role in roles and _signs(k, now) for k in others):
                names = "/".join(roles)
                problems.append(
                    f"it is the only {names} of {row.zone} that {duty} now: {what} it leaves the "
                    f"zone with {missing}. First generate a new {row.role} (krs-kdc key generate "
                    f"--zone {row.zone} --role {row.role}), distribute it and wait until it is "
                    "active and in the caches (docs/kdc.md, 'A ZSK rollover by hand')"
                )
        if row.role in SEP_ROLES and row.state != "created":
            problems.append(
                f"its DS may be at the parent of {row.zone} (a published {row.role}; the KDC "
                f"does not query the parent): check with dig +short DS {row.zone} @<a parent "
                f"nameserver>; a record starting '{row.key_tag} {row.algorithm} ' is this key's. "
                f"While the parent lists it, {what} it makes the zone bogus for validating "
                "resolvers: first have the parent list the new key's DS (krs-kdc zone ds "
                f"{row.zone}) and wait out the DS TTL"
            )
        if problems:
            raise StateError(
                f"refused to {action} {row.role} {row.key_tag} of {row.zone}: "
                + "; and ".join(problems)
                + ". Nothing was changed; to do it all the same: add --force"
            )

    def advance_key_states(self, *, now: float) -> list[tuple[str, int, str]]:
        """Move keys along by their timing: published -> active at ``activate_at`` (once
        distributed), active/published -> retired at ``inactive_at``, retired -> removed at
        ``delete_at``. Returns (zone, tag, new state) for each move."""
        stamp = int(now)
        moves: list[tuple[str, int, str]] = []
        rules = (
            ("active", "state = 'published' AND activate_at IS NOT NULL AND activate_at <= ?"),
            (
                "retired",
                "state IN ('published', 'active') AND inactive_at IS NOT NULL AND inactive_at <= ?",
            ),
            ("removed", "state = 'retired' AND delete_at IS NOT NULL AND delete_at <= ?"),
        )
        with self.transaction():
            for state, condition in rules:
                rows = self.db.execute(f"SELECT * FROM keys WHERE {condition}", (stamp,)).fetchall()
                self.db.execute(f"UPDATE keys SET state = ? WHERE {condition}", (state, stamp))
                moves += [(r["zone"], r["key_tag"], state) for r in rows]
                for r in rows:
                    self.audit_key_state(self._key(r), state, "time", now=stamp)
        return moves

    @staticmethod
    def _key(row: sqlite3.Row) -> KeyRow:
        return KeyRow(
            row["id"],
            row["zone"],
            row["key_tag"],
            row["role"],
            row["algorithm"],
            row["flags"],
            row["state"],
            row["created_at"],
            row["publish_at"],
            row["activate_at"],
            row["inactive_at"],
            row["delete_at"],
            bytes(row["private_pem"]),
            row["dnskey"],
            bytes(row["private_sealed"] or b""),
        )

    # --- distributions --------------------------------------------------------------------

    def next_distribution_id(self, now: float | None = None) -> tuple[str, int]:
        """tdns's counter: starts at the current Unix time, then +1; rendered as lowercase hex.

        Must run inside a transaction so that two distributions never share an id.
        """
        row = self.db.execute("SELECT next FROM distribution_sequence WHERE id = 1").fetchone()
        start = int(now or time.time())
        serial = start if row is None else max(int(row["next"]), start)
        self.db.execute(
            "INSERT OR REPLACE INTO distribution_sequence(id, next) VALUES (1, ?)", (serial + 1,)
        )
        return f"{serial:x}", serial

    def add_distribution(
        self,
        dist_id: str,
        serial: int,
        node_id: str,
        *,
        zone: str | None,
        content: str,
        created_at: int,
        expires_at: int,
        records: Sequence[bytes],
        keys: Sequence[tuple[str, str]] = (),
        deleted: Collection[tuple[str, str]] = (),
    ) -> None:
        """Store one node's distribution and its CHUNK records (index 0 = manifest), with the
        keys it carries as (zone, key tag text): what a confirmation may name (``sent_keys``);
        those in ``deleted`` it tells the node to delete (``node show``)."""
        gone = set(deleted)
        self.db.execute(
            "INSERT INTO distributions(id, node_id, serial, zone, content, status, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (dist_id, node_id, serial, zone, content, created_at, expires_at),
        )
        self.db.executemany(
            "INSERT INTO records(distribution_id, node_id, sequence, rdata) VALUES (?, ?, ?, ?)",
            [(dist_id, node_id, i, rdata) for i, rdata in enumerate(records)],
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO distribution_keys(distribution_id, node_id, zone, key_id, "
            "operation) VALUES (?, ?, ?, ?, ?)",
            [(dist_id, node_id, z, k, "delete" if (z, k) in gone else "roll") for z, k in keys],
        )

    def sent_keys(self, dist_id: str, node_id: str) -> set[tuple[str, str]] | None:
        """The (zone, key tag text) pairs distribution ``dist_id`` carried to ``node_id``; None
        when none were recorded (a distribution stored before keys were, or one without keys)."""
        rows = self.db.execute(
            "SELECT zone, key_id FROM distribution_keys WHERE distribution_id = ? AND node_id = ?",
            (dist_id, node_id),
        ).fetchall()
        return {(r[0], r[1]) for r in rows} if rows else None

    def distributions(
        self, *, status: str | None = None, dist_id: str | None = None, node_id: str | None = None
    ) -> list[DistributionRow]:
        """The distributions' rows (one per target node), filtered; ``node_id`` with ``dist_id``
        reads one row by the primary key: a confirmation must not read a whole fleet's rows."""
        query = "SELECT * FROM distributions"
        clauses, args = [], []
        for column, value in (("status", status), ("id", dist_id), ("node_id", node_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self.db.execute(query + " ORDER BY serial, node_id", args).fetchall()
        return [DistributionRow(**dict(r)) for r in rows]

    def published_ids(self, node_id: str) -> list[str]:
        """Distribution ids currently served for ``node_id``, oldest first (the poller's index).
        A failed one stays until it expires: the node tries an apply that failed again."""
        rows = self.db.execute(
            "SELECT id FROM distributions WHERE node_id = ? AND status IN "
            "('pending', 'confirmed', 'failed') "
            "AND expires_at >= ? ORDER BY serial",
            (node_id, int(time.time())),
        ).fetchall()
        return [r[0] for r in rows]

    def record(self, dist_id: str, node_id: str, sequence: int) -> bytes | None:
        """Wire RDATA of one published record, or None (expired, unknown, withdrawn)."""
        row = self.db.execute(
            "SELECT r.rdata FROM records r JOIN distributions d "
            "ON d.id = r.distribution_id AND d.node_id = r.node_id "
            "WHERE r.distribution_id = ? AND r.node_id = ? AND r.sequence = ? "
            "AND d.status IN ('pending', 'confirmed', 'failed') AND d.expires_at >= ?",
            (dist_id, node_id, sequence, int(time.time())),
        ).fetchone()
        return None if row is None else bytes(row["rdata"])

    def mark_notified(self, dist_id: str, node_id: str, *, now: float) -> None:
        """Not waited on to disk (``transaction(durable=False)``): a NOTIFY's time lost to a
        power cut costs one NOTIFY sent again (docs/kdc.md, "Serve")."""
        with transaction(self.db, durable=False):
            self.db.execute(
                "UPDATE distributions SET notified_at = ?, notify_attempts = notify_attempts + 1 "
                "WHERE id = ? AND node_id = ?",
                (int(now), dist_id, node_id),
            )

    def mark_notify_acked(self, dist_id: str, node_id: str, *, now: float) -> None:
        """Not waited on to disk, as ``mark_notified``."""
        with transaction(self.db, durable=False):
            self.db.execute(
                "UPDATE distributions SET notify_acked_at = ? WHERE id = ? AND node_id = ?",
                (int(now), dist_id, node_id),
            )

    def published_records(self, *, now: float) -> list[PublishedRecord]:
        """Every record the control zone serves at ``now``, by distribution serial: those of
        distributions not expired (what ``record`` answers and ``published_ids`` lists)."""
        rows = self.db.execute(
            "SELECT r.distribution_id, r.node_id, r.sequence, r.rdata, d.expires_at "
            "FROM records r JOIN distributions d "
            "ON d.id = r.distribution_id AND d.node_id = r.node_id "
            "WHERE d.status IN ('pending', 'confirmed', 'failed') AND d.expires_at >= ? "
            "ORDER BY d.serial, r.node_id, r.sequence",
            (int(now),),
        ).fetchall()
        return [PublishedRecord(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def control_zone_changes(self) -> int:
        """The change counter the triggers on records and distributions raise (schema)."""
        row = self.db.execute("SELECT counter FROM control_zone_changes WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def set_distribution_status(
        self,
        dist_id: str,
        node_id: str,
        status: str,
        *,
        now: float,
        error: str | None = None,
        report: str | None = None,
        stage: str | None = None,
        served: Sequence[Mapping[str, object]] = (),
    ) -> None:
        """Record a node's report: ``confirmed``, or ``failed`` with the ``stage`` and ``error``
        it names (cleared again by a later confirmation); and, in the same transaction, what
        the node read back from its server per zone (``served``: the report's checked
        ``served.zones``, see ``served_state``)."""
        if status not in DISTRIBUTION_STATES:
            raise StateError(f"distribution status {status!r} is not one of {DISTRIBUTION_STATES}")
        with self.transaction():
            zones = [
                r[0]
                for r in self.db.execute(
                    "SELECT DISTINCT zone FROM distribution_keys WHERE distribution_id = ? AND "
                    "node_id = ? UNION SELECT zone FROM distributions WHERE id = ? AND node_id = ? "
                    "AND zone IS NOT NULL",
                    (dist_id, node_id, dist_id, node_id),
                )
            ]
            outcome: dict[str, object] = {"distribution": dist_id, "status": status}
            if status == "failed":
                outcome |= {"stage": stage, "error": (error or "")[:500]}
            serials = {
                canonical(str(z["zone"])): {"soa_serial": z.get("soa_serial")} for z in served
            }
            self.audit(
                f"distribution.{status}",
                node=node_id,
                zones=zones,
                details=outcome,
                per_zone=serials,
                now=now,
            )
            self.db.execute(
                "UPDATE distributions SET status = ?, error = ?, stage = ?, "
                "report = COALESCE(?, report), "
                "confirmed_at = CASE WHEN ? = 'confirmed' THEN ? ELSE confirmed_at END, "
                "failed_at = CASE WHEN ? = 'failed' THEN ? END "
                "WHERE id = ? AND node_id = ?",
                (status, error, stage, report, status, int(now), status, int(now), dist_id,
                 node_id),
            )  # fmt: skip
            self.db.executemany(
                "INSERT OR REPLACE INTO served_state(distribution_id, node_id, zone, read_at, "
                "recorded_at, soa_serial, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dist_id, node_id, canonical(str(z["zone"])), z.get("read_at"), int(now),
                  z.get("soa_serial"), json.dumps(dict(z), sort_keys=True)) for z in served],
            )  # fmt: skip

    def served_state(
        self,
        *,
        node_id: str | None = None,
        zone: str | None = None,
        dist_id: str | None = None,
        latest: bool = False,
    ) -> list[ServedRow]:
        """What nodes reported their servers serve (docs/kdc.md, "What nodes serve"), per
        (distribution, node, zone), oldest read first; ``latest``: only the newest read per
        (node, zone), i.e. what node N serves for zone Z as of ``read_at``."""
        clauses, args = [], []
        for column, value in (("node_id", node_id), ("zone", zone), ("distribution_id", dist_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(canonical(value) if column != "distribution_id" else value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        query = f"SELECT * FROM served_state{where}"
        if latest:
            query = (
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY node_id, zone "
                f"ORDER BY read_at DESC, recorded_at DESC) AS rank FROM served_state{where}) "
                "WHERE rank = 1"
            )
        rows = self.db.execute(query + " ORDER BY read_at, node_id, zone", args).fetchall()
        return [
            ServedRow(
                r["distribution_id"],
                r["node_id"],
                r["zone"],
                r["read_at"],
                r["recorded_at"],
                r["soa_serial"],
                json.loads(r["state"]),
            )
            for r in rows
        ]

    # --- what each node holds (node show, node list) -------------------------------------------

    _NEWEST_PER_ZONE = """
        WITH covered AS (
            SELECT d.node_id, k.zone, d.id, d.serial FROM distributions d
            JOIN distribution_keys k ON k.distribution_id = d.id AND k.node_id = d.node_id
            WHERE {where}
            UNION
            SELECT d.node_id, d.zone, d.id, d.serial FROM distributions d
            WHERE d.zone IS NOT NULL AND {where}
        ), newest AS (
            SELECT node_id, zone, id, ROW_NUMBER() OVER (
                PARTITION BY node_id, zone ORDER BY serial DESC) AS rank FROM covered
        )
        SELECT newest.zone AS covered_zone, d.* FROM newest
        JOIN distributions d ON d.id = newest.id AND d.node_id = newest.node_id
        WHERE newest.rank = 1
    """
    """The newest distribution per (node, zone) among those ``where`` selects (of ``d``): a
    distribution covers the zones of the keys it carried, or its one zone (one made before the
    KDC recorded the keys)."""

    def zone_states(self, node_id: str | None = None) -> dict[str, list[ZoneState]]:
        """Per node (all, or ``node_id``), each zone it serves with the newest distribution of
        that zone sent to it."""
        where, args = ("d.node_id = ?", [canonical(node_id)] * 2) if node_id else ("1", [])
        newest: dict[tuple[str, str], DistributionRow] = {}
        for r in self.db.execute(self._NEWEST_PER_ZONE.format(where=where), args).fetchall():
            row = dict(r)
            zone = row.pop("covered_zone")
            newest[(row["node_id"], zone)] = DistributionRow(**row)
        nodes = [self.require_node(node_id)] if node_id else self.nodes()
        return {
            n.id: [ZoneState(z, newest.get((n.id, z))) for z in n.zones] for n in nodes
        }  # fmt: skip

    def held_keys(self, node_id: str) -> list[HeldKey]:
        """The keys ``node_id`` confirmed, per zone: those of the newest distribution of the zone
        that it confirmed (which carries the zone's whole key set), deletions included."""
        node = canonical(node_id)
        query = self._NEWEST_PER_ZONE.format(where="d.node_id = ? AND d.status = 'confirmed'")
        rows = self.db.execute(
            f"WITH held AS ({query}) "
            "SELECT held.covered_zone AS zone, held.id, held.confirmed_at, k.key_id, k.operation, "
            "keys.role, keys.algorithm FROM held "
            "JOIN distribution_keys k ON k.distribution_id = held.id AND k.node_id = held.node_id "
            "AND k.zone = held.covered_zone "
            "LEFT JOIN keys ON keys.zone = k.zone AND keys.key_tag = CAST(k.key_id AS INTEGER) "
            "ORDER BY zone, k.operation DESC, CAST(k.key_id AS INTEGER)",
            (node, node),
        ).fetchall()
        return [
            HeldKey(
                r["zone"], int(r["key_id"]), r["role"], r["algorithm"], r["operation"] == "delete",
                r["id"], r["confirmed_at"],
            )
            for r in rows
            if str(r["key_id"]).isdigit()
        ]  # fmt: skip

    def last_contact(self, node_id: str) -> int | None:
        """When the node was last heard from: a report recorded or a NOTIFY answered."""
        row = self.db.execute(
            "SELECT MAX(MAX(COALESCE(confirmed_at, 0), COALESCE(failed_at, 0), "
            "COALESCE(notify_acked_at, 0))) FROM distributions WHERE node_id = ?",
            (canonical(node_id),),
        ).fetchone()
        return int(row[0]) if row is not None and row[0] else None

    def last_failure(self, node_id: str) -> DistributionRow | None:
        """The node's most recent distribution that is ``failed`` now."""
        row = self.db.execute(
            "SELECT * FROM distributions WHERE node_id = ? AND status = 'failed' "
            "ORDER BY failed_at DESC, serial DESC LIMIT 1",
            (canonical(node_id),),
        ).fetchone()
        return None if row is None else DistributionRow(**dict(row))

    def expire_distributions(self, *, now: float) -> list[tuple[str, str]]:
        """Withdraw pending distributions past their expiry; returns (id, node) pairs expired."""
        with self.transaction():
            rows = self.db.execute(
                "SELECT id, node_id FROM distributions WHERE status = 'pending' AND expires_at < ?",
                (int(now),),
            ).fetchall()
            self.db.execute(
                "UPDATE distributions SET status = 'expired', error = 'expired before it was "
                "confirmed' WHERE status = 'pending' AND expires_at < ?",
                (int(now),),
            )
            nodes: dict[str, list[str]] = {}
            for r in rows:
                nodes.setdefault(r["id"], []).append(r["node_id"])
            for dist_id, expired in nodes.items():
                zones = [
                    z[0]
                    for z in self.db.execute(
                        "SELECT DISTINCT zone FROM distribution_keys WHERE distribution_id = ? "
                        "UNION SELECT zone FROM distributions WHERE id = ? AND zone IS NOT NULL",
                        (dist_id, dist_id),
                    )
                ]
                self.audit(
                    "distribution.expired",
                    zones=zones,
                    now=now,
                    details={"distribution": dist_id, "nodes": expired},
                )
        return [(r["id"], r["node_id"]) for r in rows]
