"""The KRS's state in SQLite (WAL): every distribution and its outcome, installed keys per zone,
the last applied serial per KDC, pending confirmations, and the apply in progress (journal).

The journal row is written before an adapter touches the server and deleted after the outcome is
recorded, so a KRS killed mid-apply finds it at start-up and can finish or roll back.

The database is checked when it opens and refused when damaged; a change that cannot be written
(a full disk) is ``StateWriteError`` and recorded nothing (krs_plugin/sqlitedb.py;
docs/operations.md, "A full disk" and "A damaged state database").
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from krs_plugin.sqlitedb import StateWriteError, open_private_db, transaction

# Which adapter applied each distribution (type and a digest of its settings, reconcile.py):
# created with the first apply of a database made before it existed, and not required at open.
_ADAPTERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied_adapters (
    distribution_id TEXT PRIMARY KEY,
    adapter TEXT NOT NULL,
    applied_at INTEGER NOT NULL
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS distributions (
    id TEXT PRIMARY KEY,
    kdc TEXT NOT NULL,
    serial INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    stage TEXT,
    error TEXT,
    received_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE TABLE IF NOT EXISTS installed_keys (
    zone TEXT NOT NULL,
    key_tag INTEGER NOT NULL,
    algorithm INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    distribution_id TEXT NOT NULL,
    installed_at INTEGER NOT NULL,
    PRIMARY KEY (zone, key_tag, algorithm)
);
CREATE TABLE IF NOT EXISTS kdc_serials (kdc TEXT PRIMARY KEY, last_serial INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS confirmations (
    distribution_id TEXT PRIMARY KEY,
    report TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    acknowledged_at INTEGER
);
CREATE TABLE IF NOT EXISTS journal (
    distribution_id TEXT PRIMARY KEY,
    snapshots TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
"""
_SCHEMA += _ADAPTERS_SCHEMA

_TABLES = ("distributions", "installed_keys", "kdc_serials", "confirmations", "journal")
DAMAGED_ADVICE = (
    "restore it (with its -wal file, if any) from a backup; or move it and its -wal and -shm "
    "files aside and start again as a new node, which forgets the distributions it applied "
    "(a replay is then refused only as stale), its history and any interrupted apply "
    "(docs/operations.md, 'A damaged state database')"
)

OUTCOMES = ("fetching", "applied", "rejected", "failed")


@dataclass(frozen=True)
class DistributionRecord:
    id: str
    kdc: str
    serial: int
    outcome: str
    stage: str | None
    error: str | None
    received_at: int
    finished_at: int | None


@dataclass
class ExpectedZone:
    """What a zone's server should hold: the keys (tag, algorithm, flags) its newest applied
    distribution installed, and the identity of the adapter that installed them (None when
    recorded by a version that did not keep it)."""

    zone: str
    distribution_id: str
    adapter: str | None
    keys: list[tuple[int, int, int]]


class ReceiverStore:
    def __init__(self, path: str | os.PathLike[str], *, any_thread: bool = False) -> None:
        """``any_thread``: for the pipeline's own connection, used from a worker thread."""
        self.path = Path(path)
        self.db = open_private_db(
            self.path, _SCHEMA, tables=_TABLES, advice=DAMAGED_ADVICE, any_thread=any_thread
        )
        self.write_error: str | None = None
        """Why the last change could not be written (``/healthz`` shows it), until one is."""

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic change (``sqlitedb.transaction``); a change that cannot be written is
        StateWriteError, and ``write_error`` says why until a later change is written."""
        try:
            with transaction(self.db, durable=durable) as db:
                yield db
        except StateWriteError as exc:
            self.write_error = str(exc)
            raise
        self.write_error = None

    def seen(self, dist_id: str) -> DistributionRecord | None:
        row = self.db.execute("SELECT * FROM distributions WHERE id = ?", (dist_id,)).fetchone()
        return None if row is None else DistributionRecord(**dict(row))

    def last_serial(self, kdc: str) -> int | None:
        row = self.db.execute(
            "SELECT last_serial FROM kdc_serials WHERE kdc = ?", (kdc,)
        ).fetchone()
        return None if row is None else int(row[0])

    def record_outcome(
        self,
        dist_id: str,
        kdc: str,
        serial: int,
        outcome: str,
        *,
        stage: str | None = None,
        error: str | None = None,
        now: float | None = None,
        report: dict[str, object] | None = None,
    ) -> None:
        """The outcome of a distribution not applied; with ``report`` (a failure report,
        ``confirmation.failure_report``), that report queued for the KDC in the same transaction,
        as ``record_applied`` queues a success. Never over an applied distribution or its
        confirmation; a report equal to the one already queued or sent is not queued again (an
        apply retried at every poll that fails the same way tells the KDC once)."""
        stamp = int(now or time.time())
        with self.transaction():
            self.db.execute(
                "INSERT INTO distributions(id, kdc, serial, outcome, stage, error, received_at, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "outcome = excluded.outcome, stage = excluded.stage, error = excluded.error, "
                "finished_at = excluded.finished_at WHERE distributions.outcome != 'applied'",
                (dist_id, kdc, serial, outcome, stage, error, stamp, stamp),
            )
            if report is not None:
                self.db.execute(
                    "INSERT INTO confirmations(distribution_id, report, attempts, next_at) "
                    "SELECT ?, ?, 0, ? WHERE NOT EXISTS (SELECT 1 FROM distributions "
                    "WHERE id = ? AND outcome = 'applied') "
                    "ON CONFLICT(distribution_id) DO UPDATE SET report = excluded.report, "
                    "attempts = 0, next_at = excluded.next_at, acknowledged_at = NULL "
                    "WHERE confirmations.report != excluded.report",
                    (dist_id, json.dumps(report), stamp, dist_id),
                )

    def record_applied(
        self,
        dist_id: str,
        kdc: str,
        serial: int,
        keys: list[tuple[str, int, int, int]],
        removed: list[tuple[str, int]],
        report: dict[str, object],
        *,
        now: float | None = None,
        adapter: str | None = None,
    ) -> None:
        """Outcome, installed keys, serial, the adapter that installed them (``adapter``,
        ``reconcile.adapter_identity``) and the confirmation to send: one transaction."""
        stamp = int(now or time.time())
        with self.transaction():
            if adapter is not None:
                self.db.execute(_ADAPTERS_SCHEMA.strip().rstrip(";"))
                self.db.execute(
                    "INSERT OR REPLACE INTO applied_adapters VALUES (?, ?, ?)",
                    (dist_id, adapter, stamp),
                )
            self.db.execute(
                "INSERT INTO distributions(id, kdc, serial, outcome, stage, error, received_at, "
                "finished_at) VALUES (?, ?, ?, 'applied', 'done', NULL, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET outcome = 'applied', stage = 'done', error = NULL, "
                "finished_at = excluded.finished_at",
                (dist_id, kdc, serial, stamp, stamp),
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO installed_keys VALUES (?, ?, ?, ?, ?, ?)",
                [(z, t, a, f, dist_id, stamp) for z, t, a, f in keys],
            )
            self.db.executemany(
                "DELETE FROM installed_keys WHERE zone = ? AND key_tag = ?", removed
            )
            self.db.execute(
                "INSERT INTO kdc_serials(kdc, last_serial) VALUES (?, ?) ON CONFLICT(kdc) "
                "DO UPDATE SET last_serial = MAX(last_serial, excluded.last_serial)",
                (kdc, serial),
            )
            self.db.execute(
                "INSERT OR REPLACE INTO confirmations(distribution_id, report, attempts, next_at) "
                "VALUES (?, ?, 0, ?)",
                (dist_id, json.dumps(report), stamp),
            )
            self.db.execute("DELETE FROM journal WHERE distribution_id = ?", (dist_id,))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One process at a time plans, applies and records a distribution (``krs run`` and a
        ``krs fetch`` typed beside it): an flock on ``<krs.db>.lock``, held throughout; the
        other waits. So the crash journal only ever holds the one apply in progress."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def begin_apply(self, dist_id: str, snapshots: dict[str, str]) -> None:
        """Record, before any change, how to put every zone back (zone -> adapter snapshot).
        One apply runs at a time: a row another one left (its end not written, the disk full)
        goes, lest a restart roll the zones back to before what was applied since."""
        with self.transaction():
            self.db.execute("DELETE FROM journal WHERE distribution_id != ?", (dist_id,))
            self.db.execute(
                "INSERT OR REPLACE INTO journal VALUES (?, ?, ?)",
                (dist_id, json.dumps(snapshots), int(time.time())),
            )

    def end_apply(self, dist_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM journal WHERE distribution_id = ?", (dist_id,))

    def interrupted(self) -> list[tuple[str, dict[str, str]]]:
        rows = self.db.execute("SELECT distribution_id, snapshots FROM journal").fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    def distributions(self, limit: int = 50) -> list[DistributionRecord]:
        rows = self.db.execute(
            "SELECT * FROM distributions ORDER BY received_at DESC, id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [DistributionRecord(**dict(r)) for r in rows]

    def installed(self, zone: str | None = None) -> list[sqlite3.Row]:
        if zone is None:
            return self.db.execute("SELECT * FROM installed_keys ORDER BY zone, key_tag").fetchall()
        return self.db.execute(
            "SELECT * FROM installed_keys WHERE zone = ? ORDER BY key_tag", (zone,)
        ).fetchall()

    def due_confirmations(self, now: float) -> list[tuple[str, dict[str, object], int]]:
        rows = self.db.execute(
            "SELECT distribution_id, report, attempts FROM confirmations "
            "WHERE acknowledged_at IS NULL AND next_at <= ?",
            (int(now),),
        ).fetchall()
        return [(r[0], json.loads(r[1]), int(r[2])) for r in rows]

    def confirmation_attempted(self, dist_id: str, *, acknowledged: bool, next_at: float) -> None:
        """Not waited on to disk (``durable=False``): lost to a power cut, the report is sent
        again and the KDC answers that it has it (docs/kdc.md, "Serve")."""
        with self.transaction(durable=False):
            self.db.execute(
                "UPDATE confirmations SET attempts = attempts + 1, next_at = ?, "
                "acknowledged_at = CASE WHEN ? THEN ? ELSE NULL END WHERE distribution_id = ?",
                (int(next_at), acknowledged, int(time.time()), dist_id),
            )

    def expected_keys(self) -> dict[str, ExpectedZone]:
        """Per zone, the keys its newest applied distribution installed and the adapter that
        installed them: what the server should hold (``reconcile.py``). The keys of earlier
        distributions are left out: a later one may have retired them, and the server then
        removes them on its own schedule."""
        rows = self.db.execute(
            "SELECT k.zone, k.key_tag, k.algorithm, k.flags, k.distribution_id, "
            "COALESCE(d.serial, 0) AS serial FROM installed_keys k "
            "LEFT JOIN distributions d ON d.id = k.distribution_id"
        ).fetchall()
        newest: dict[str, tuple[int, str]] = {}
        for r in rows:
            rank = (int(r["serial"]), str(r["distribution_id"]))
            if r["zone"] not in newest or rank > newest[r["zone"]]:
                newest[r["zone"]] = rank
        adapters = self._adapters()
        zones: dict[str, ExpectedZone] = {}
        for r in rows:
            dist_id = newest[r["zone"]][1]
            if r["distribution_id"] != dist_id:
                continue
            if r["zone"] not in zones:
                zones[r["zone"]] = ExpectedZone(r["zone"], dist_id, adapters.get(dist_id), [])
            zones[r["zone"]].keys.append((int(r["key_tag"]), int(r["algorithm"]), int(r["flags"])))
        return zones

    def _adapters(self) -> dict[str, str]:
        found = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'applied_adapters'"
        ).fetchone()
        if found is None:
            return {}
        rows = self.db.execute("SELECT distribution_id, adapter FROM applied_adapters")
        return {str(r[0]): str(r[1]) for r in rows}

    def keys_per_zone(self) -> dict[str, int]:
        rows = self.db.execute("SELECT zone, COUNT(*) FROM installed_keys GROUP BY zone")
        return {str(r[0]): int(r[1]) for r in rows}

    def pending_confirmations(self) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM confirmations WHERE acknowledged_at IS NULL"
        ).fetchone()
        return int(row[0])

    def last_applied_at(self) -> int | None:
        row = self.db.execute(
            "SELECT MAX(finished_at) FROM distributions WHERE outcome = 'applied'"
        ).fetchone()
        return None if row[0] is None else int(row[0])
