"""The fleet (krs_plugin/kdc/fleet.py, docs/kdc.md "The fleet"): each node's lag, state word and
served key set, read from a real kdc.db (a Store in a temporary directory) that holds the
distributions and confirmations as the KDC records them; ``krs-kdc status --nodes`` on it; the
``krs_kdc_nodes`` metrics and the KdcNodeBehind alert's expression; serve's log line."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from krs_plugin.kdc.cli import main
from krs_plugin.kdc.fleet import (
    FLEET_STATES,
    LOG_LAG_SECONDS,
    LagWatch,
    NodeLag,
    counts,
    key_role,
    node_lags,
)
from krs_plugin.kdc.metrics import KdcMetrics
from krs_plugin.kdc.store import Store

A, B = "a.example.", "b.example."
T = 1_900_000_000
KSK, ZSK = [30872, 13, 257], [63667, 13, 256]


class Kdc:
    """A kdc.db with nodes and zones, to which distributions are sent and confirmed as
    ``distribute`` and ``serve`` record them."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.serial = T
        for zone in (A, B):
            self.store.add_zone(zone, now=T)

    def node(self, name: str, zones: tuple[str, ...] = (A, B)) -> str:
        self.store.add_node(name, notify_address="127.0.0.1:5399", backend="hpke",
                            hpke_pubkey="00" * 32, jose_pubkey=None, signing_pubkey=None,
                            zones=list(zones), now=T)  # fmt: skip
        return name

    def send(
        self, node: str, zones: tuple[str, ...], at: int, *, legacy: bool = False, ttl: int = 300
    ) -> str:
        """One distribution of ``zones``' keys to ``node`` made at ``at``; ``legacy``: one from
        before the KDC recorded keys (its one zone only)."""
        self.serial += 1
        dist_id = f"{self.serial:x}"
        keys = [] if legacy else [(z, str(t)) for z in zones for t in (KSK[0], ZSK[0])]
        with self.store.transaction():
            self.store.add_distribution(
                dist_id, self.serial, node, zone=zones[0] if len(zones) == 1 else None,
                content="{}", created_at=at, expires_at=at + ttl, records=[b"m"], keys=keys,
            )  # fmt: skip
        return dist_id

    def confirm(self, node: str, dist_id: str, at: int, served: list[object] | None = None) -> None:
        reports = [
            {"zone": z, "read_at": at, "dnskey": served, "soa_signers": [ZSK[0]],
             "dnskey_signers": [KSK[0]]}
            for z in self._zones(node, dist_id)
        ] if served is not None else []  # fmt: skip
        self.store.set_distribution_status(dist_id, node, "confirmed", now=at, served=reports)

    def fail(self, node: str, dist_id: str, at: int) -> None:
        self.store.set_distribution_status(dist_id, node, "failed", now=at,
                                           error="bind9: cannot sign", stage="apply")  # fmt: skip

    def _zones(self, node: str, dist_id: str) -> list[str]:
        rows = self.store.db.execute(
            "SELECT DISTINCT zone FROM distribution_keys WHERE distribution_id = ? AND node_id = ?",
            (dist_id, node),
        )
        return sorted(r[0] for r in rows)


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Kdc]:
    k = Kdc(tmp_path / "kdc.db")
    yield k
    k.store.close()


def by_node(kdc: Kdc, now: int) -> dict[str, NodeLag]:
    return {n.node_id: n for n in node_lags(kdc.store.db, now)}


def test_in_sync_behind_and_never(kdc: Kdc) -> None:
    ok, late, new, idle = (kdc.node(f"{n}.nodes.test.") for n in ("ok", "late", "new", "idle"))
    first = {n: kdc.send(n, (A, B), T + 10) for n in (ok, late, new)}
    for n in (ok, late):
        kdc.confirm(n, first[n], T + 11)
    pending = {n: kdc.send(n, (A,), T + 100) for n in (ok, late)}
    kdc.confirm(ok, pending[ok], T + 101)
    nodes = by_node(kdc, T + 700)
    assert {n: v.state for n, v in nodes.items()} == {
        ok: "in-sync",
        late: "behind",
        new: "never",
        idle: "never",
    }
    assert nodes[ok].lagging == () and nodes[ok].confirmed_id == pending[ok]
    lag = nodes[late]
    assert lag.confirmed_id == first[late] and lag.confirmed_at == T + 11
    assert lag.since == T + 100 and lag.lag_seconds(T + 700) == 600
    assert lag.zones_behind == (A,) and lag.newest is not None
    assert lag.newest.status == "pending"
    # A node that never confirmed lags from its first distribution; one sent nothing does not.
    assert nodes[new].since == T + 10 and nodes[idle].since is None


def test_a_confirmation_of_one_zone_does_not_hide_a_failure_of_another(kdc: Kdc) -> None:
    """The lag is per zone, as node list's status: the newest distribution of B failed, and a
    later confirmed one of A says nothing about B."""
    n = kdc.node("n.nodes.test.")
    kdc.confirm(n, kdc.send(n, (A, B), T), T + 1)
    failed = kdc.send(n, (B,), T + 50)
    kdc.fail(n, failed, T + 51)
    kdc.confirm(n, kdc.send(n, (A,), T + 60), T + 61)
    (node,) = node_lags(kdc.store.db, T + 100)
    assert node.state == "failed" and node.failed_zones == (B,) and node.zones_behind == (B,)
    assert [d.distribution_id for d in node.lagging] == [failed] and node.since == T + 50
    assert node.newest is not None and node.newest.error == "bind9: cannot sign"
    # Sent again and confirmed: in sync, the failure no longer counts.
    kdc.confirm(n, kdc.send(n, (B,), T + 120), T + 121)
    (node,) = node_lags(kdc.store.db, T + 130)
    assert node.state == "in-sync" and node.lagging == ()


def test_a_failure_sent_again_lags_from_the_first_until_confirmed(kdc: Kdc) -> None:
    n = kdc.node("n.nodes.test.")
    kdc.confirm(n, kdc.send(n, (A,), T), T + 1)
    kdc.fail(n, kdc.send(n, (A,), T + 10), T + 11)
    again = kdc.send(n, (A,), T + 40)  # the engine's resend: pending, newer than the failure
    (node,) = node_lags(kdc.store.db, T + 100)
    assert node.state == "behind" and node.since == T + 10 and node.newest is not None
    assert node.newest.distribution_id == again and len(node.lagging) == 2


def test_what_no_longer_matters_does_not_lag(kdc: Kdc) -> None:
    """An expired distribution followed by a confirmed one of its zones, and one of a zone the
    node no longer serves, are not lags; a legacy distribution (its zone, no keys) counts."""
    n = kdc.node("n.nodes.test.")
    old = kdc.send(n, (A, B), T)
    kdc.store.expire_distributions(now=T + 1000)
    assert kdc.store.distributions(dist_id=old)[0].status == "expired"
    kdc.confirm(n, kdc.send(n, (A, B), T + 1100), T + 1101)
    kdc.send(n, (B,), T + 1200, ttl=10)
    kdc.store.expire_distributions(now=T + 1300)
    (node,) = node_lags(kdc.store.db, T + 1300)
    assert node.state == "behind" and node.zones_behind == (B,)
    kdc.store.change_node_zones(n, add=(), remove=(B,))
    (node,) = node_lags(kdc.store.db, T + 1300)
    assert node.state == "in-sync"
    legacy = kdc.send(n, (A,), T + 1400, legacy=True)
    (node,) = node_lags(kdc.store.db, T + 1500)
    assert node.state == "behind" and [d.distribution_id for d in node.lagging] == [legacy]
    kdc.confirm(n, kdc.send(n, (A,), T + 1600, legacy=True), T + 1601)
    (node,) = node_lags(kdc.store.db, T + 1700)
    assert node.state == "in-sync"


def test_the_worst_first_and_the_longest_lag_first(kdc: Kdc) -> None:
    names = {w: kdc.node(f"{w}.nodes.test.") for w in ("sync", "never", "short", "long", "fail")}
    for w in ("sync", "short", "long", "fail"):
        kdc.confirm(names[w], kdc.send(names[w], (A, B), T), T + 1)
    kdc.send(names["never"], (A, B), T + 500)
    kdc.send(names["short"], (A,), T + 300)
    kdc.send(names["long"], (B,), T + 100)
    kdc.fail(names["fail"], kdc.send(names["fail"], (A,), T + 400), T + 401)
    nodes = node_lags(kdc.store.db, T + 1000)
    assert [n.node_id.split(".")[0] for n in nodes] == ["fail", "long", "short", "never", "sync"]
    assert [n.state for n in nodes] == ["failed", "behind", "behind", "never", "in-sync"]
    assert counts(nodes) == {"failed": 1, "behind": 2, "never": 1, "in-sync": 1}
    assert tuple(counts([])) == FLEET_STATES
    # --zone: only the nodes of the zone, lagging on it only.
    only_b = {n.node_id.split(".")[0]: n.state for n in node_lags(kdc.store.db, T + 1000,
                                                                  zones=[B])}  # fmt: skip
    assert only_b == {"long": "behind", "never": "never", "short": "in-sync", "fail": "in-sync",
                      "sync": "in-sync"}  # fmt: skip


def test_the_served_key_set_per_zone(kdc: Kdc) -> None:
    n = kdc.node("n.nodes.test.")
    kdc.confirm(n, kdc.send(n, (A, B), T), T + 1, served=[KSK, ZSK])
    kdc.confirm(n, kdc.send(n, (A,), T + 10), T + 11, served=[KSK, ZSK, [12345, 13, 256]])
    (node,) = node_lags(kdc.store.db, T + 20, served=True)
    assert [(s.zone, s.read_at, s.keys) for s in node.served] == [
        (A, T + 11, ((30872, 13, "KSK"), (12345, 13, "ZSK"), (63667, 13, "ZSK"))),
        (B, T + 1, ((30872, 13, "KSK"), (63667, 13, "ZSK"))),
    ]
    assert key_role(257, 5, [5]) == "CSK" and key_role(385, 5, []) == "KSK-REVOKED"


def test_the_queries_seek_through_indexes(kdc: Kdc) -> None:
    """No full scan of distributions or served_state per node: 1,000 nodes stay fast."""
    from krs_plugin.kdc.fleet import _LAGGING_SQL, _LAST_CONFIRMED_SQL, _SERVED_SQL

    for sql in (_LAST_CONFIRMED_SQL.format(where="1"), _SERVED_SQL.format(where="1"),
                _LAGGING_SQL.format(where="1", zones="1")):  # fmt: skip
        plan = [r[3] for r in kdc.store.db.execute("EXPLAIN QUERY PLAN " + sql)]
        scanned = {line.split()[1] for line in plan if line.startswith("SCAN ")}
        assert scanned <= {"n", "nz", "o", "c"}, plan  # nodes, node_zones and the CTEs only


def test_a_thousand_nodes_in_a_few_queries(kdc: Kdc) -> None:
    with kdc.store.transaction():  # one commit: each write's own nests in it
        nodes = [kdc.node(f"n{i:04d}.nodes.test.") for i in range(1000)]
        for i, n in enumerate(nodes):
            for j in range(3):
                dist = kdc.send(n, (A, B), T + 10 * j)
                if not (i % 10 == 0 and j == 2):
                    kdc.confirm(n, dist, T + 10 * j + 1, served=[KSK, ZSK])
    queries: list[str] = []
    kdc.store.db.set_trace_callback(queries.append)
    started = time.monotonic()
    found = node_lags(kdc.store.db, T + 1000, served=True)
    took = time.monotonic() - started
    kdc.store.db.set_trace_callback(None)
    assert len(queries) == 3 and took < 2.0, (len(queries), took)
    assert counts(found) == {"failed": 0, "behind": 100, "never": 0, "in-sync": 900}


# --- krs-kdc status --nodes ---------------------------------------------------------------------


def kdc_cli(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str]:
    code = main(["--state", str(state), *args])
    return code, capsys.readouterr().out


def test_status_nodes_text_and_json(kdc: Kdc, capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time())
    ok, late, bad = (kdc.node(f"{n}.nodes.test.") for n in ("ok", "late", "bad"))
    for n in (ok, late, bad):
        kdc.confirm(n, kdc.send(n, (A, B), now - 9000), now - 8990, served=[KSK, ZSK])
    pending = kdc.send(late, (A,), now - 7200, ttl=86400)
    failed = kdc.send(bad, (B,), now - 3600, ttl=86400)
    kdc.fail(bad, failed, now - 3590)
    state = kdc.store.path.parent

    code, out = kdc_cli(capsys, state, "status", "--nodes")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "3 node(s): 1 failed, 1 behind, 0 never, 1 in-sync"
    assert lines[1] == (f"{bad} failed: lags 1h, newest {failed} failed at apply: bind9: cannot "
                        f"sign (1 unconfirmed, zone {B})")  # fmt: skip
    assert lines[4] == f"{late} behind: lags 2h, newest {pending} pending (1 unconfirmed, zone {A})"
    assert lines[5].startswith("  last confirmed  ") and "(2h30m ago)" in lines[5]
    assert lines[6] == f"  serves          {A} KSK 30872, ZSK 63667; {B} KSK 30872, ZSK 63667"
    assert lines[7] == f"{ok} in-sync"

    code, out = kdc_cli(capsys, state, "status", "--behind")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1::3]] == [bad, late]

    for args in (("--json", "status", "--nodes"), ("status", "--nodes", "--json")):
        code, out = kdc_cli(capsys, state, *args)
        data = json.loads(out)
        assert code == 0 and data["counts"] == {"failed": 1, "behind": 1, "never": 0,
                                                "in-sync": 1}  # fmt: skip
        assert [n["node_id"] for n in data["nodes"]] == [bad, late, ok]
        behind = data["nodes"][1]
        assert behind["state"] == "behind" and behind["lag"]["since"] == now - 7200
        assert behind["lag"]["distributions"][0]["distribution_id"] == pending
        assert behind["last_confirmation"]["confirmed_at"] == now - 8990
        assert behind["served"][0]["keys"] == [
            {"key_tag": 30872, "algorithm": 13, "role": "KSK"},
            {"key_tag": 63667, "algorithm": 13, "role": "ZSK"},
        ]
        assert data["nodes"][2]["lag"] is None

    kdc.confirm(late, pending, now)
    kdc.confirm(bad, kdc.send(bad, (B,), now), now)
    code, out = kdc_cli(capsys, state, "status", "--behind")
    assert code == 0 and out.splitlines() == [
        "3 node(s): 0 failed, 0 behind, 0 never, 3 in-sync",
        "no node lags",
    ]
    kdc.fail(bad, kdc.send(bad, (B,), now - 1), now)
    kdc.send(late, (A,), now - 7200, ttl=86400)
    code, out = kdc_cli(capsys, state, "status", "--nodes", "--zone", A)
    assert [line.split()[:2] for line in out.splitlines()[1::3]] == [
        [late, "behind:"],
        [bad, "in-sync"],
        [ok, "in-sync"],
    ]


# --- the metrics, the alert, the log ------------------------------------------------------------


def samples(kdc: Kdc, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = KdcMetrics(kdc.store.path, clock=lambda: now).exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_node_behind_shows_in_the_metrics_and_fires_the_alert(kdc: Kdc) -> None:
    ok, late = kdc.node("ok.nodes.test."), kdc.node("late.nodes.test.")
    for n in (ok, late):
        kdc.confirm(n, kdc.send(n, (A, B), T), T + 1)
    kdc.send(late, (A,), T + 100)
    now = T + 100 + 3600
    got = samples(kdc, now)
    assert {s[1][0][1]: v for s, v in got.items() if s[0] == "krs_kdc_nodes"} == {
        "failed": 0,
        "behind": 1,
        "never": 0,
        "in-sync": 1,
    }
    assert got[("krs_kdc_node_lag_seconds", ())] == 3600
    named = {s[1]: v for s, v in got.items() if s[0] == "krs_kdc_node_behind_seconds"}
    assert named == {(("node", late), ("state", "behind")): 3600}
    # The alert's expression, as Prometheus would evaluate it on these samples.
    path = Path(__file__).resolve().parents[2] / "integrations/kdc/prometheus-alerts.yaml"
    rules = {r["alert"]: r for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]}
    name, _, threshold = rules["KdcNodeBehind"]["expr"].partition(" > ")
    assert got[(name, ())] > float(threshold)
    # In sync again: nothing lags, no node is named.
    kdc.confirm(late, kdc.send(late, (A,), now), now + 1)
    got = samples(kdc, now + 2)
    assert got[("krs_kdc_node_lag_seconds", ())] == 0
    assert not [s for s in got if s[0] == "krs_kdc_node_behind_seconds"]


def test_serve_logs_a_node_once_when_it_falls_behind_and_when_it_catches_up(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    n = kdc.node("late.nodes.test.")
    kdc.confirm(n, kdc.send(n, (A,), T), T + 1)
    pending = kdc.send(n, (A,), T + 10)
    watch = LagWatch()
    caplog.set_level(logging.INFO, logger="krs_plugin.kdc.fleet")
    watch.tick(kdc.store.db, T + 10 + LOG_LAG_SECONDS - 1)
    assert not caplog.records
    watch.tick(kdc.store.db, T + 10 + LOG_LAG_SECONDS)  # not due yet: the interval
    assert not caplog.records
    watch.tick(kdc.store.db, T + 10 + LOG_LAG_SECONDS + watch.interval)
    watch.tick(kdc.store.db, T + 10 + LOG_LAG_SECONDS + 2 * watch.interval)
    (line,) = caplog.records
    assert line.levelname == "WARNING" and line.getMessage() == (
        f"node {n} behind: lags 10m30s, newest {pending} pending (1 unconfirmed, zone {A}) "
        "(krs-kdc status --nodes --behind)"
    )
    assert line.__dict__["distribution_id"] == pending  # the JSON log's field
    kdc.confirm(n, pending, T + 2000)
    watch.tick(kdc.store.db, T + 3000)
    assert (
        caplog.records[-1].getMessage() == f"node {n} caught up: it no longer lags by 10m or more"
    )
