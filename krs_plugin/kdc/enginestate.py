"""What the lifecycle engine keeps in kdc.db (docs/lifecycle.md, "What kdc.db keeps"): each
key's record states, each zone's rollover with its current step, and the append-only history.

Every change the engine makes is one transaction together with its history entry, so a KDC
stopped at any moment starts again exactly where it was (the tables are in store._SCHEMA).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from krs_plugin.kdc.records import RECORDS_OF_ROLE, KeyRecords, State
from krs_plugin.kdc.store import KeyRow, StateError, Store, canonical


@dataclass(frozen=True)
class Rollover:
    """One rollover of one zone (or a zone's first keys, role ``initial``)."""

    id: int
    zone: str
    role: str  # ZSK, KSK, CSK, or initial
    method: str
    keys: dict[str, int]  # "old"/"new" (or "new:ROLE") -> keys.id
    step: int  # index into the method's steps
    step_started_at: int | None  # None: requested, not begun
    distribution_id: str | None  # the step's distribution (None: nothing the nodes serve changed)
    nodes: tuple[str, ...]  # the step's frozen node set
    reached_at: int | None  # the gate: the last node's confirmation of the step
    largest_dnskey_ttl: int | None
    resent_at: int | None
    ds_seen_at: int | None
    ds_gone_at: int | None
    requested_at: int
    finished_at: int | None
    cause: str
    parent_ds_ttl: int | None = None  # the DS TTL the parent served, when the KDC looked


@dataclass(frozen=True)
class PassSnapshot:
    """kdc.db as one engine pass found it, read once for every zone (``EngineState.snapshot``):
    enough to see that a zone has nothing due; a zone that may have something due is run from
    kdc.db itself (``Engine.run_zone``)."""

    running: dict[str, Rollover]  # zone -> its running rollover
    keys: dict[str, list[KeyRow]]  # zone -> its live keys and its rollover's (no private_pem)
    states: dict[int, dict[str, State]]  # keys.id -> the record states recorded
    latest_read: dict[str, int | None]  # zone at a begun, unreached step -> newest read_at served
    moving_ds: set[str] = field(default_factory=set)  # zones with a DS rumoured or unretentive
    requested: set[str] = field(default_factory=set)  # zones with an emergency rollover queued

    def key_records(self, zone: str, rows: list[KeyRow] | None = None) -> list[KeyRecords]:
        """As ``EngineState.key_records``, for the keys of the snapshot."""
        return records_of(self.keys.get(zone, []) if rows is None else rows, self.states)

    def has_records(self, zone: str) -> bool:
        """Whether the snapshot's keys of ``zone`` have records (False: perhaps only its removed
        keys have, which ``EngineState.has_records`` also counts)."""
        return any(row.id in self.states for row in self.keys.get(zone, []))


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    at: int
    zone: str
    event: str
    detail: dict[str, Any] = field(default_factory=dict)
    cause: str = ""


class EngineState:
    """Reads and writes of the engine's tables, on the Store's connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # --- record states ----------------------------------------------------------------------

    def key_records(self, zone: str, rows: list[KeyRow] | None = None) -> list[KeyRecords]:
        """Every key of ``zone`` with its record states (hidden when never recorded)."""
        rows = self.store.keys(zone) if rows is None else rows
        states: dict[int, dict[str, State]] = {}
        for r in self.db.execute(
            "SELECT key_id, record, state FROM key_records WHERE key_id IN "
            "(SELECT id FROM keys WHERE zone = ?)",
            (canonical(zone),),
        ):
            states.setdefault(r["key_id"], {})[r["record"]] = State(r["state"])
        return records_of(rows, states)

    def ds_leaving(self, zone: str) -> set[int]:
        """keys.id of the zone's keys whose DS a rollover is withdrawing from the parent: not in
        the set the parent is to serve (``zone ds``)."""
        return {
            r["key_id"]
            for r in self.db.execute(
                "SELECT key_id FROM key_records WHERE record = 'ds' AND state = 'unretentive' "
                "AND key_id IN (SELECT id FROM keys WHERE zone = ?)",
                (canonical(zone),),
            )
        }

    def has_records(self, zone: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM key_records WHERE key_id IN (SELECT id FROM keys WHERE zone = ?) "
                "LIMIT 1",
                (canonical(zone),),
            ).fetchone()
            is not None
        )

    def set_record(self, key_id: int, record: str, state: State, now: int) -> None:
        self.db.execute(
            "INSERT INTO key_records(key_id, record, state, changed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key_id, record) DO UPDATE SET state = excluded.state, "
            "changed_at = excluded.changed_at",
            (key_id, record, str(state), now),
        )

    def record_changed_at(self, key_id: int, record: str) -> int | None:
        row = self.db.execute(
            "SELECT changed_at FROM key_records WHERE key_id = ? AND record = ?", (key_id, record)
        ).fetchone()
        return None if row is None else int(row["changed_at"])

    def zone_nodes(self, zone: str) -> list[str]:
        """The ids of the nodes serving ``zone``, in order (``Store.nodes(zone)`` also reads
        every zone of each node: 10,000 rows per node on a large KDC)."""
        rows = self.db.execute(  # per node a lookup in node_zones' key, as Store.nodes does
            "SELECT n.id AS node_id FROM nodes n JOIN node_zones z ON z.node_id = n.id "
            "AND z.zone = ? ORDER BY n.id",
            (canonical(zone),),
        )
        return [r["node_id"] for r in rows]

    def snapshot(self) -> PassSnapshot:
        """What a pass needs to tell the zones with nothing due from the rest, in a few queries
        for every zone instead of several per zone (``Engine.nothing_due``). The keys are the
        live ones and those of running rollovers: a removed key counts only when one of its
        records still moves (its DS), so the pass does not grow with every rollover done."""
        keys: dict[str, list[KeyRow]] = {}
        states: dict[int, dict[str, State]] = {}
        wanted = (
            "k.state != 'removed' OR k.id IN (SELECT j.value FROM rollovers r, json_each(r.keys) j "
            "WHERE r.finished_at IS NULL)"
        )
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples: 20,000 keys and 50,000 records on a large KDC
        for row in cursor.execute(
            "SELECT id, zone, key_tag, role, algorithm, flags, state, created_at, publish_at, "
            f"activate_at, inactive_at, delete_at FROM keys k WHERE {wanted} ORDER BY id"
        ):
            key_id, zone, tag, role, algorithm, flags, state, created, pub, act, off, gone = row
            keys.setdefault(zone, []).append(
                KeyRow(key_id, zone, tag, role, algorithm, flags, state, created, pub, act, off,
                       gone, b"")
            )  # fmt: skip
        by_value = {str(s): s for s in State}
        for key_id, record, state in cursor.execute(
            "SELECT r.key_id, r.record, r.state FROM key_records r JOIN keys k ON k.id = r.key_id "
            f"WHERE {wanted}"
        ):
            states.setdefault(key_id, {})[record] = by_value[state]
        moving_ds = {
            zone
            for (zone,) in cursor.execute(
                "SELECT DISTINCT k.zone FROM key_records r JOIN keys k ON k.id = r.key_id "
                "WHERE r.record = 'ds' AND r.state IN ('rumoured', 'unretentive')"
            )
        }
        running = {r.zone: r for r in self.rollovers(running=True)}
        latest = {
            r["zone"]: r["latest"]
            for r in self.db.execute(
                "SELECT r.zone, (SELECT MAX(s.read_at) FROM served_state s WHERE s.zone = r.zone) "
                "AS latest FROM rollovers r WHERE r.finished_at IS NULL "
                "AND r.step_started_at IS NOT NULL AND r.reached_at IS NULL"
            )
        }
        requested = {
            zone for (zone,) in cursor.execute("SELECT DISTINCT zone FROM rollover_requests")
        }
        return PassSnapshot(running, keys, states, latest, moving_ds, requested)

    # --- rollovers ----------------------------------------------------------------------------

    def current(self, zone: str) -> Rollover | None:
        row = self.db.execute(
            "SELECT * FROM rollovers WHERE zone = ? AND finished_at IS NULL", (canonical(zone),)
        ).fetchone()
        return None if row is None else _rollover(row)

    def rollovers(self, zone: str | None = None, *, running: bool = False) -> list[Rollover]:
        clauses, args = [], []
        if zone is not None:
            clauses.append("zone = ?")
            args.append(canonical(zone))
        if running:
            clauses.append("finished_at IS NULL")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.execute(f"SELECT * FROM rollovers{where} ORDER BY id", args)
        return [_rollover(r) for r in rows]

    def add_rollover(
        self,
        zone: str,
        role: str,
        method: str,
        keys: dict[str, int],
        *,
        cause: str,
        now: int,
        step: int = 0,
    ) -> Rollover:
        """A new rollover, not begun (the engine begins it at its next pass). Refused while the
        zone has one running: one rollover per zone at a time."""
        running = self.current(zone)
        if running is not None:
            raise StateError(
                f"zone {zone} has a {running.role} rollover running (step {running.step + 1}); "
                "one rollover per zone at a time: see krs-kdc status"
            )
        cursor = self.db.execute(
            "INSERT INTO rollovers(zone, role, method, keys, step, requested_at, cause) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (canonical(zone), role, method, json.dumps(keys), step, now, cause),
        )
        return _rollover(
            self.db.execute("SELECT * FROM rollovers WHERE id = ?", (cursor.lastrowid,)).fetchone()
        )

    def update_rollover(self, rollover_id: int, **values: Any) -> None:
        allowed = {
            "keys", "step", "step_started_at", "distribution_id", "nodes", "reached_at",
            "largest_dnskey_ttl", "resent_at", "ds_seen_at", "ds_gone_at", "finished_at",
            "parent_ds_ttl",
        }  # fmt: skip
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"not a rollover column: {sorted(unknown)}")
        encoded = {k: (json.dumps(v) if k in ("keys", "nodes") else v) for k, v in values.items()}
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        self.db.execute(
            f"UPDATE rollovers SET {assignments} WHERE id = ?", [*encoded.values(), rollover_id]
        )

    def request_rollover(self, zone: str, key_id: int, *, cause: str, now: int) -> None:
        """An emergency rollover of ``key_id`` to start once the zone's running one is done."""
        self.db.execute(
            "INSERT INTO rollover_requests(zone, key_id, cause, requested_at) VALUES (?, ?, ?, ?)",
            (canonical(zone), key_id, cause, now),
        )

    def next_request(self, zone: str) -> tuple[int, int, str] | None:
        """(request id, key id, cause) of the zone's oldest requested rollover."""
        row = self.db.execute(
            "SELECT id, key_id, cause FROM rollover_requests WHERE zone = ? ORDER BY id LIMIT 1",
            (canonical(zone),),
        ).fetchone()
        return None if row is None else (row["id"], row["key_id"], row["cause"])

    def drop_request(self, request_id: int) -> None:
        self.db.execute("DELETE FROM rollover_requests WHERE id = ?", (request_id,))

    def observed_ds_ttl(self, zone: str) -> int | None:
        """The largest DS TTL the parent served while the KDC watched it for the zone's
        current DS change (kdc/parentwatch.py); None when it did not look."""
        row = self.db.execute(
            "SELECT ds_ttl FROM parent_watch WHERE zone = ?", (canonical(zone),)
        ).fetchone()
        return None if row is None else row["ds_ttl"]

    # --- history --------------------------------------------------------------------------------

    def log(self, zone: str, event: str, detail: dict[str, Any], *, cause: str, now: int) -> None:
        """Append one entry: ``cause`` is "time", "confirmations", "command: ..." or "engine"."""
        self.db.execute(
            "INSERT INTO history(at, zone, event, detail, cause) VALUES (?, ?, ?, ?, ?)",
            (now, canonical(zone), event, json.dumps(detail, sort_keys=True), cause),
        )
        self.store.audit(
            f"engine.{event}",
            zone=canonical(zone),
            now=now,
            details={"detail": detail, "cause": cause},
        )

    def history(
        self, zone: str | None = None, *, since: int | None = None, limit: int | None = None
    ) -> list[HistoryEntry]:
        clauses: list[str] = []
        args: list[object] = []
        if zone is not None:
            clauses.append("zone = ?")
            args.append(canonical(zone))
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        query = f"SELECT * FROM history{where} ORDER BY id"
        if limit is not None:
            query = f"SELECT * FROM ({query} DESC LIMIT {int(limit)}) ORDER BY id"
        rows = self.db.execute(query, args)
        return [
            HistoryEntry(
                r["id"], r["at"], r["zone"], r["event"], json.loads(r["detail"]), r["cause"]
            )
            for r in rows
        ]


def _rollover(row: sqlite3.Row) -> Rollover:
    return Rollover(
        id=row["id"],
        zone=row["zone"],
        role=row["role"],
        method=row["method"],
        keys={str(k): int(v) for k, v in json.loads(row["keys"]).items()},
        step=row["step"],
        step_started_at=row["step_started_at"],
        distribution_id=row["distribution_id"],
        nodes=tuple(json.loads(row["nodes"])),
        reached_at=row["reached_at"],
        largest_dnskey_ttl=row["largest_dnskey_ttl"],
        resent_at=row["resent_at"],
        ds_seen_at=row["ds_seen_at"],
        ds_gone_at=row["ds_gone_at"],
        requested_at=row["requested_at"],
        finished_at=row["finished_at"],
        cause=row["cause"],
        parent_ds_ttl=row["parent_ds_ttl"],
    )


def records_of(rows: list[KeyRow], states: dict[int, dict[str, State]]) -> list[KeyRecords]:
    """Each key with its record states (hidden when never recorded)."""
    return [
        KeyRecords(
            key_tag=row.key_tag,
            algorithm=row.algorithm,
            flags=row.flags,
            role=row.role,
            states={
                rec: states.get(row.id, {}).get(rec, State.HIDDEN)
                for rec in RECORDS_OF_ROLE[row.role]
            },
            key_id=row.id,
        )
        for row in rows
    ]
