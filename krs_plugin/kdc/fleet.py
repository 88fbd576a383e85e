"""The fleet: per node, its last confirmation, the keys it reports serving, and how far it lags
behind what the KDC sent it (``krs-kdc status --nodes``, the ``krs_kdc_nodes`` metrics and the
log line of a node falling behind; docs/kdc.md, "The fleet").

A node lags on a zone while a distribution covering the zone is unconfirmed (pending, failed or
expired) and no newer distribution of that zone was confirmed by it: per zone, as ``node list``
judges, so a confirmation of one zone never hides another zone's failure. The lag runs from the
oldest such distribution. Everything is read in three queries whatever the number of nodes (the
index ``distributions_by_node`` keeps them to index seeks), so 1,000 nodes cost milliseconds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from krs_plugin.confirmation import clip
from krs_plugin.errors import KrsError
from krs_plugin.humantime import format_duration
from krs_plugin.logs import context

log = logging.getLogger(__name__)

FLEET_STATES = ("failed", "behind", "never", "in-sync")
"""A node's one word, the worst first (the listing's order): the newest distribution of one of
its zones failed; one of its zones lags; it never confirmed anything; every zone confirmed."""

LOG_LAG_SECONDS = 600
"""A node lagging this long is logged once (and named by ``krs_kdc_node_behind_seconds``): twice
a distribution's default ttl, so a node that merely takes its time is not."""
LAG_CHECK_INTERVAL = 30.0  # seconds between serve's looks at the fleet for the log
NAMED_NODES = 10  # at most this many nodes get a krs_kdc_node_behind_seconds series

_NODE_FILTER = "n.id IN (SELECT node_id FROM node_zones WHERE zone IN ({marks}))"

# The newest distribution each node confirmed: one index seek per node (distributions_by_node).
_LAST_CONFIRMED_SQL = """
SELECT n.id AS node_id, d.id AS distribution_id, d.confirmed_at
FROM nodes n LEFT JOIN distributions d ON d.rowid = (
    SELECT rowid FROM distributions WHERE node_id = n.id AND status = 'confirmed'
    ORDER BY serial DESC LIMIT 1)
WHERE {where}
"""

# Every (node, zone, distribution) that lags: unconfirmed, of a zone the node still serves, and
# not followed by a confirmed distribution of the same zone. A distribution covers the zones of
# the keys it carried, or its one zone (one made before the KDC recorded keys): as
# Store._NEWEST_PER_ZONE.
_LAGGING_SQL = """
WITH open AS (
    SELECT d.id, d.node_id, d.serial, d.zone, d.status, d.created_at, d.stage, d.error
    FROM nodes n CROSS JOIN distributions d  -- CROSS: per node, through distributions_by_node
        ON d.node_id = n.id AND d.status IN ('pending', 'failed', 'expired')
    WHERE {where}
), covered AS (
    SELECT o.node_id, k.zone, o.id, o.serial, o.status, o.created_at, o.stage, o.error
    FROM open o CROSS JOIN distribution_keys k  -- CROSS: per open one, by its primary key
        ON k.distribution_id = o.id AND k.node_id = o.node_id  -- (SQLite 3.46 scanned k)
    UNION
    SELECT o.node_id, o.zone, o.id, o.serial, o.status, o.created_at, o.stage, o.error
    FROM open o WHERE o.zone IS NOT NULL
)
SELECT c.* FROM covered c
JOIN node_zones nz ON nz.node_id = c.node_id AND nz.zone = c.zone
WHERE {zones} AND NOT EXISTS (
    SELECT 1 FROM distributions later
    WHERE later.node_id = c.node_id AND later.status = 'confirmed' AND later.serial > c.serial
    AND (later.zone = c.zone OR EXISTS (
        SELECT 1 FROM distribution_keys lk WHERE lk.distribution_id = later.id
        AND lk.node_id = later.node_id AND lk.zone = c.zone)))
"""

# What each node last reported its server serves, per zone it serves: one index seek per pair
# (served_state_by_node), the newest read as Store.served_state(latest=True) picks it.
_SERVED_SQL = """
SELECT nz.node_id, nz.zone, s.distribution_id, s.read_at, s.state
FROM node_zones nz JOIN served_state s ON s.rowid = (
    SELECT rowid FROM served_state WHERE node_id = nz.node_id AND zone = nz.zone
    ORDER BY read_at DESC, recorded_at DESC LIMIT 1)
WHERE {where}
ORDER BY nz.node_id, nz.zone
"""


@dataclass(frozen=True)
class Lagging:
    """One unconfirmed distribution a node lags on, with the zones it lags on through it."""

    distribution_id: str
    serial: int
    status: str  # pending | failed | expired
    created_at: int
    stage: str | None
    error: str | None
    zones: tuple[str, ...]


@dataclass(frozen=True)
class ServedKeys:
    """The DNSKEYs a node last read back from its server for one zone (its confirmation's
    ``served``), each as (key tag, algorithm, role); ``error`` when the node could not read."""

    zone: str
    distribution_id: str
    read_at: int | None
    keys: tuple[tuple[int, int, str], ...]
    error: str | None = None


@dataclass(frozen=True)
class NodeLag:
    """One node of the fleet: its state word, last confirmation, what it lags on, what it
    serves (``served`` only when asked for)."""

    node_id: str
    state: str
    confirmed_id: str | None
    confirmed_at: int | None
    lagging: tuple[Lagging, ...] = ()  # oldest first
    failed_zones: tuple[str, ...] = ()  # zones whose newest distribution failed
    served: tuple[ServedKeys, ...] = field(default=())

    @property
    def since(self) -> int | None:
        """When the oldest distribution it has not caught up with was made."""
        return self.lagging[0].created_at if self.lagging else None

    @property
    def newest(self) -> Lagging | None:
        return self.lagging[-1] if self.lagging else None

    def lag_seconds(self, now: float) -> float:
        """How long it has lagged (0 when it does not)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)

    @property
    def zones_behind(self) -> tuple[str, ...]:
        return tuple(sorted({z for lag in self.lagging for z in lag.zones}))


def key_role(flags: int, tag: int, soa_signers: Iterable[object]) -> str:
    """KSK for a SEP key, CSK when it also signs the SOA, ZSK otherwise; ``REVOKED`` marks a key
    with the RFC 5011 revoke bit."""
    role = ("CSK" if tag in set(soa_signers) else "KSK") if flags & 1 else "ZSK"
    return role + ("-REVOKED" if flags & 0x80 else "")


def served_keys(zone: str, distribution_id: str, read_at: int | None, text: str) -> ServedKeys:
    """A served_state row's report, reduced to the key set: the rest is ``node show``'s."""
    state = json.loads(text)
    if "error" in state:
        return ServedKeys(zone, distribution_id, read_at, (), str(state["error"]))
    signers = state.get("soa_signers") or []
    keys = [
        (int(k[0]), int(k[1]), key_role(int(k[2]), int(k[0]), signers))
        for k in state.get("dnskey") or []
        if isinstance(k, list) and len(k) == 3
    ]
    return ServedKeys(zone, distribution_id, read_at, tuple(sorted(keys, key=_by_role)))


def _by_role(key: tuple[int, int, str]) -> tuple[str, int]:
    return key[2], key[0]


def _filters(zones: Sequence[str] | None) -> tuple[str, str, list[str]]:
    """SQL for ``zones`` (None: all): which nodes (those serving one of them) and which zones."""
    if not zones:
        return "1", "1", []
    marks = ", ".join("?" * len(zones))
    return _NODE_FILTER.format(marks=marks), f"c.zone IN ({marks})", list(zones)


def _last_confirmed(
    db: sqlite3.Connection, where: str, args: list[str]
) -> dict[str, tuple[str | None, int | None]]:
    sql = _LAST_CONFIRMED_SQL.format(where=where)
    return {r[0]: (r[1], r[2]) for r in db.execute(sql, args)}


def _lagging(
    db: sqlite3.Connection, where: str, zones: str, args: list[str]
) -> dict[str, list[sqlite3.Row]]:
    sql = _LAGGING_SQL.format(where=where, zones=zones)
    rows: dict[str, list[sqlite3.Row]] = {}
    for r in db.execute(sql, args * 2):
        rows.setdefault(r["node_id"], []).append(r)
    return rows


def _served(db: sqlite3.Connection, zones: Sequence[str] | None) -> dict[str, list[ServedKeys]]:
    where, args = ("1", []) if not zones else (f"nz.zone IN ({', '.join('?' * len(zones))})",
                                               list(zones))  # fmt: skip
    out: dict[str, list[ServedKeys]] = {}
    for r in db.execute(_SERVED_SQL.format(where=where), args):
        out.setdefault(r[0], []).append(served_keys(r[1], r[2], r[3], r[4]))
    return out


def _lags_of(rows: list[sqlite3.Row]) -> tuple[tuple[Lagging, ...], tuple[str, ...]]:
    """The node's lagging distributions, oldest first, and the zones whose newest one failed."""
    by_id: dict[str, list[sqlite3.Row]] = {}
    newest: dict[str, sqlite3.Row] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
        if r["zone"] not in newest or r["serial"] > newest[r["zone"]]["serial"]:
            newest[r["zone"]] = r
    lags = [
        Lagging(g[0]["id"], g[0]["serial"], g[0]["status"], g[0]["created_at"], g[0]["stage"],
                g[0]["error"], tuple(sorted(r["zone"] for r in g)))
        for g in by_id.values()
    ]  # fmt: skip
    failed = sorted(z for z, r in newest.items() if r["status"] == "failed")
    return tuple(sorted(lags, key=lambda lag: lag.serial)), tuple(failed)


def state_word(confirmed: bool, lagging: bool, failed: bool) -> str:
    """One of FLEET_STATES: a failure first, then a node that never confirmed anything."""
    if failed:
        return "failed"
    if not confirmed:
        return "never"
    return "behind" if lagging else "in-sync"


def sort_key(node: NodeLag, now: float) -> tuple[int, float, str]:
    """The worst first: failed, behind, never, in-sync; the longest lag first within each."""
    return FLEET_STATES.index(node.state), -node.lag_seconds(now), node.node_id


def node_lags(
    db: sqlite3.Connection,
    now: float,
    *,
    zones: Sequence[str] | None = None,
    served: bool = False,
) -> list[NodeLag]:
    """Every node (or those serving one of ``zones``, lagging only on those), the worst first;
    ``served`` adds the key set each reported serving. Run it inside one read transaction for
    one consistent view (the metrics do)."""
    where, zone_sql, args = _filters(zones)
    confirmed = _last_confirmed(db, where, args)
    lagging = _lagging(db, where, zone_sql, args)
    keys = _served(db, zones) if served else {}
    nodes = []
    for node_id, (dist_id, at) in confirmed.items():
        lags, failed = _lags_of(lagging.get(node_id, []))
        word = state_word(dist_id is not None, bool(lags), bool(failed))
        nodes.append(NodeLag(node_id, word, dist_id, at, lags, failed,
                             tuple(keys.get(node_id, ()))))  # fmt: skip
    return sorted(nodes, key=lambda n: sort_key(n, now))


def counts(nodes: Iterable[NodeLag]) -> dict[str, int]:
    """Nodes per state, every state from 0 (the ``krs_kdc_nodes`` gauge)."""
    out = dict.fromkeys(FLEET_STATES, 0)
    for node in nodes:
        out[node.state] += 1
    return out


def lag_text(node: NodeLag, now: float) -> str:
    """``failed: lags 12m, newest 6b1a20f3 failed at apply: <error> (2 unconfirmed, zones a.,
    b.)``; the state word alone for a node that does not lag."""
    newest = node.newest
    if newest is None:
        return node.state
    what = f"{newest.distribution_id} {newest.status}"
    if newest.status == "failed":
        what += f" at {newest.stage or 'an unnamed stage'}: {clip(newest.error or '', 100)}"
    zones = node.zones_behind
    where = ", ".join(zones[:3]) + (f" and {len(zones) - 3} more" if len(zones) > 3 else "")
    return (
        f"{node.state}: lags {format_duration(node.lag_seconds(now))}, newest {what} "
        f"({len(node.lagging)} unconfirmed, zone{'s' if len(zones) != 1 else ''} {where})"
    )


class LagWatch:
    """``krs-kdc serve``'s log of the fleet: one warning when a node has lagged for
    ``threshold`` seconds, one line when it is in sync again. Looks every ``interval`` seconds
    (not every tick: it reads every node); remembers in memory only, so a restart logs the nodes
    still behind once more."""

    def __init__(
        self, threshold: float = LOG_LAG_SECONDS, interval: float = LAG_CHECK_INTERVAL
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.due = 0.0
        self.behind: set[str] = set()

    def tick(self, db: sqlite3.Connection, now: float) -> None:
        """Look at the fleet when due; kdc.db failing is the state failures' to report."""
        if now < self.due:
            return
        self.due = now + self.interval
        try:
            nodes = node_lags(db, now)
        except (sqlite3.Error, KrsError) as exc:
            log.debug("the fleet's lag could not be read: %s", exc)
            return
        self.check(nodes, now)

    def check(self, nodes: Sequence[NodeLag], now: float) -> None:
        """Log the nodes that crossed the threshold, and those that caught up, once each (a
        node removed meanwhile is just forgotten)."""
        late = {n.node_id: n for n in nodes if n.lag_seconds(now) >= self.threshold}
        for node_id in sorted(late.keys() - self.behind):
            node = late[node_id]
            newest = node.newest
            log.warning(
                "node %s %s (krs-kdc status --nodes --behind)",
                node_id, lag_text(node, now),
                extra=context(distribution_id=newest and newest.distribution_id,
                              stage=newest and newest.stage),
            )  # fmt: skip
        present = {n.node_id for n in nodes}
        for node_id in sorted((self.behind - late.keys()) & present):
            log.info("node %s caught up: it no longer lags by %s or more", node_id,
                     format_duration(self.threshold))  # fmt: skip
        self.behind = set(late)
