"""``krs-kdc serve --metrics``: the KDC's Prometheus metrics and ``/healthz`` (docs/operations.md,
"The KDC: metrics and alerts"), served by the KRS's listener (``krs_plugin.metrics.serve_http``).

Everything about keys, zones, rollovers and distributions is read from kdc.db when Prometheus
scrapes, in a worker thread, on a read-only connection of its own (``Store.reader``), in one read
transaction: a handful of aggregate queries, plus the engine's own ``Engine.view`` for each zone
with a running rollover. Only those zones get series of their own, so 10,000 idle zones cost no
more series than one. What only the running server knows (the engine's last pass, kdc.db
failing to take a write) comes from ``ServerHealth``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from krs_plugin.kdc.engine import Engine, ZoneView
from krs_plugin.kdc.fleet import LOG_LAG_SECONDS, NAMED_NODES, NodeLag, counts, node_lags
from krs_plugin.kdc.store import KEY_STATES, StateError, Store
from krs_plugin.sqlitedb import FailureLog

log = logging.getLogger(__name__)

PHASES = ("manual", "no-keys", "idle", "first-keys", "zsk-rollover", "ksk-rollover", "csk-rollover")
# No engine pass for this long (and at least this many intervals) is unhealthy.
ENGINE_STALE_SECONDS = 30.0
ENGINE_STALE_PASSES = 10


def phase_label(view: ZoneView) -> str:
    """``ZoneView.phase`` as a label value: ``ZSK rollover`` -> ``zsk-rollover``."""
    return view.phase.lower().replace(" ", "-")


# The phase of every zone in one query, as Engine.view names it (phase_label): manual without a
# policy, then the running rollover's role, then no keys (none but removed ones), else idle.
_PHASES_SQL = """
SELECT CASE
    WHEN z.policy IS NULL THEN 'manual'
    WHEN r.role = 'initial' THEN 'first-keys'
    WHEN r.role IS NOT NULL THEN lower(r.role) || '-rollover'
    WHEN NOT EXISTS (SELECT 1 FROM keys k WHERE k.zone = z.name AND k.state != 'removed')
        THEN 'no-keys'
    ELSE 'idle' END AS phase, COUNT(*) AS n
FROM zones z LEFT JOIN rollovers r ON r.zone = z.name AND r.finished_at IS NULL
GROUP BY phase
"""


@dataclass
class ServerHealth:
    """What ``krs-kdc serve`` knows beyond kdc.db: the engine's passes, and the state database's
    failures (``server.state_failures``, one kind per thing that could not be written or read)."""

    failures: FailureLog
    engine: bool = False  # the server runs the lifecycle engine
    engine_interval: float = 1.0
    started_at: float = field(default_factory=time.time)
    last_pass_at: float | None = None
    last_pass_seconds: float | None = None
    pass_error: str | None = None  # the last pass's, None when it went through

    def passed(self, at: float, seconds: float, error: str | None) -> None:
        self.last_pass_at, self.last_pass_seconds, self.pass_error = at, seconds, error

    def problems(self, now: float) -> list[str]:
        found = [f"state database: {m}" for _, m in sorted(self.failures.failing().items())]
        if self.pass_error is not None:
            found.append(f"lifecycle engine: the last pass failed: {self.pass_error}")
        stale = max(ENGINE_STALE_SECONDS, ENGINE_STALE_PASSES * self.engine_interval)
        last = self.last_pass_at if self.last_pass_at is not None else self.started_at
        if self.engine and now - last > stale:
            found.append(f"lifecycle engine: no pass for {int(now - last)} s")
        return found


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read from kdc.db."""

    keys: dict[str, int]
    zones: dict[str, int]
    views: list[ZoneView]
    nodes: list[str]
    pending: dict[str, tuple[int, int]]  # node -> (count, oldest created_at)
    failed: dict[str, int]  # node -> failed distributions that are the newest of a zone
    history: int
    fleet: tuple[NodeLag, ...] = ()  # every node, the worst first (kdc/fleet.py)


def read_snapshot(store: Store, now: int) -> Snapshot:
    """Everything the metrics need from kdc.db, in one read transaction (one consistent view)."""
    db = store.db
    db.execute("BEGIN")
    try:
        keys = dict.fromkeys(KEY_STATES, 0)
        for r in db.execute("SELECT state, COUNT(*) AS n FROM keys GROUP BY state"):
            keys[r["state"]] = r["n"]
        zones = dict.fromkeys(PHASES, 0)
        for r in db.execute(_PHASES_SQL):
            zones[r["phase"]] = r["n"]
        engine = Engine(store)
        views = []
        for r in db.execute(
            "SELECT zone FROM rollovers WHERE finished_at IS NULL ORDER BY zone"
        ).fetchall():
            try:
                views.append(engine.view(r["zone"], now))
            except StateError:  # the zone's policy is gone: status says so, no series here
                continue
        nodes = [r["id"] for r in db.execute("SELECT id FROM nodes ORDER BY id")]
        pending: dict[str, tuple[int, int]] = {}
        failing: list[str] = []  # nodes with a failed distribution at all
        for r in db.execute(
            "SELECT node_id, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM "
            "distributions WHERE status IN ('pending', 'failed') GROUP BY node_id, status"
        ):
            if r["status"] == "pending":
                pending[r["node_id"]] = (r["n"], r["oldest"])
            else:
                failing.append(r["node_id"])
        # Of those, the failed distributions still the newest of a zone (Store._NEWEST_PER_ZONE,
        # as node list's "failed"): a fleet without failures costs no more than the scan above.
        failed: dict[str, int] = {}
        if failing:
            marks = ", ".join("?" * len(failing))
            newest = store._NEWEST_PER_ZONE.format(where=f"d.node_id IN ({marks})")
            for r in db.execute(
                f"SELECT node_id, COUNT(DISTINCT id) AS n FROM ({newest}) "
                "WHERE status = 'failed' GROUP BY node_id",
                failing * 2,
            ):
                failed[r["node_id"]] = r["n"]
        history = int(db.execute("SELECT COUNT(*) FROM history").fetchone()[0])
        fleet = tuple(node_lags(db, now))
    finally:
        db.execute("COMMIT")
    return Snapshot(keys, zones, views, nodes, pending, failed, history, fleet)


def families(snap: Snapshot, health: ServerHealth | None, now: float) -> Iterator[Any]:
    """The metric families of one scrape (docs/operations.md lists each)."""
    keys = GaugeMetricFamily("krs_kdc_keys", "DNSSEC keys in kdc.db, by state", labels=["state"])
    for state, n in snap.keys.items():
        keys.add_metric([state], n)
    yield keys
    zones = GaugeMetricFamily(
        "krs_kdc_zones", "zones by lifecycle phase (manual: no policy)", labels=["phase"]
    )
    for phase, n in snap.zones.items():
        zones.add_metric([phase], n)
    yield zones
    step = GaugeMetricFamily(
        "krs_kdc_rollover_step_seconds",
        "per zone with a running rollover: seconds in its current step (since it was asked for, "
        "while not begun), and what the step waits for (nodes, time, parent, operator, engine)",
        labels=["zone", "role", "step", "waits_for"],
    )
    until = GaugeMetricFamily(
        "krs_kdc_rollover_next_transition_timestamp_seconds",
        "per zone with a running rollover whose step waits for time: when it ends at the earliest",
        labels=["zone"],
    )
    lagging = GaugeMetricFamily(
        "krs_kdc_lagging_node",
        "1 per node holding its zone's rollover step (not confirmed, or serving something else)",
        labels=["zone", "node"],
    )
    for view in snap.views:
        rollover = view.rollover
        if rollover is None:
            continue
        began = rollover.step_started_at or rollover.requested_at
        role = rollover.role if rollover.role != "initial" else "first-keys"
        step.add_metric(
            [view.zone, role, str(rollover.step + 1), view.waits_for or "engine"],
            max(0.0, now - began),
        )
        if view.until is not None:
            until.add_metric([view.zone], view.until)
        for node in sorted(view.lagging):
            if node:  # "" is the zone without nodes: nothing to name
                lagging.add_metric([view.zone, node], 1)
    yield step
    yield until
    yield lagging
    pending = GaugeMetricFamily(
        "krs_kdc_distributions_pending",
        "distributions sent to the node and neither confirmed, failed nor expired yet",
        labels=["node"],
    )
    oldest = GaugeMetricFamily(
        "krs_kdc_distribution_pending_oldest_seconds",
        "age of the node's oldest pending distribution (no sample when none is pending)",
        labels=["node"],
    )
    failed = GaugeMetricFamily(
        "krs_kdc_distributions_failed",
        "failed distributions that are still the newest of one of the node's zones (node list's "
        "failed); 0 once a newer one of those zones is sent",
        labels=["node"],
    )
    for node in snap.nodes:
        count, first = snap.pending.get(node, (0, None))
        pending.add_metric([node], count)
        if first is not None:
            oldest.add_metric([node], max(0.0, now - first))
        failed.add_metric([node], snap.failed.get(node, 0))
    yield pending
    yield oldest
    yield failed
    yield from fleet_families(snap.fleet, now)
    yield CounterMetricFamily(
        "krs_kdc_history_entries", "entries in the lifecycle history", value=snap.history
    )
    if health is None:
        return
    if health.last_pass_at is not None:
        yield GaugeMetricFamily(
            "krs_kdc_engine_last_pass_timestamp_seconds",
            "when the lifecycle engine's last pass ran (Unix seconds)",
            value=health.last_pass_at,
        )
        yield GaugeMetricFamily(
            "krs_kdc_engine_last_pass_duration_seconds",
            "how long the lifecycle engine's last pass took",
            value=health.last_pass_seconds or 0.0,
        )
    yield GaugeMetricFamily(
        "krs_kdc_engine_pass_failing",
        "1 when the lifecycle engine's last pass could not record its change, else 0",
        value=1 if health.pass_error is not None else 0,
    )
    yield GaugeMetricFamily(
        "krs_kdc_state_failing",
        "1 while kdc.db fails to take a write (or answer a read) of krs-kdc serve, else 0",
        value=1 if health.failures.failing() else 0,
    )
    yield GaugeMetricFamily(
        "krs_kdc_start_time_seconds", "when this krs-kdc serve started", value=health.started_at
    )


def fleet_families(fleet: tuple[NodeLag, ...], now: float) -> Iterator[Any]:
    """The fleet with bounded labels: counts per state, the largest lag, and the worst
    ``NAMED_NODES`` nodes lagging ``LOG_LAG_SECONDS`` or more by name (the alert's names)."""
    nodes = GaugeMetricFamily(
        "krs_kdc_nodes",
        "nodes by state (krs-kdc status --nodes): failed, behind, never (confirmed nothing yet), "
        "in-sync",
        labels=["state"],
    )
    for state, n in counts(fleet).items():
        nodes.add_metric([state], n)
    yield nodes
    yield GaugeMetricFamily(
        "krs_kdc_node_lag_seconds",
        "the largest lag of any node: seconds since the oldest distribution it has not caught up "
        "with was made (0 when every node is in sync)",
        value=max((n.lag_seconds(now) for n in fleet), default=0.0),
    )
    named = GaugeMetricFamily(
        "krs_kdc_node_behind_seconds",
        f"the lag of each node lagging {LOG_LAG_SECONDS} s or more, the worst {NAMED_NODES} only",
        labels=["node", "state"],
    )
    late = sorted((n for n in fleet if n.lag_seconds(now) >= LOG_LAG_SECONDS),
                  key=lambda n: (-n.lag_seconds(now), n.node_id))  # fmt: skip
    for node in late[:NAMED_NODES]:
        named.add_metric([node.node_id, node.state], node.lag_seconds(now))
    yield named


class _Collector(Collector):
    def __init__(self, read: Callable[[], Iterator[Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        try:
            yield from list(self.read())
        except Exception:  # a scrape must not kill the server; the gap shows in Prometheus
            log.exception("metrics: reading kdc.db failed")


class KdcMetrics:
    """The KDC's ``/metrics`` (``krs_plugin.metrics.Exposition``), read from kdc.db at ``path``."""

    def __init__(
        self,
        path: Path,
        health: ServerHealth | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.health = health
        self.clock = clock
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self._families))

    def _families(self) -> Iterator[Any]:
        now = self.clock()
        store = Store.reader(self.path)
        try:
            snap = read_snapshot(store, int(now))
        finally:
            store.close()
        return families(snap, self.health, now)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def health_of(
    health: ServerHealth, path: Path, clock: Callable[[], float] = time.time
) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """``/healthz`` of ``krs-kdc serve``: unhealthy while kdc.db fails or the engine does."""

    def answer() -> tuple[bool, dict[str, Any]]:
        now = clock()
        problems = health.problems(now)
        return not problems, {
            "state": str(path),
            "engine_last_pass": health.last_pass_at,
            "engine_last_pass_seconds": health.last_pass_seconds,
            "problems": problems,
        }

    return answer
