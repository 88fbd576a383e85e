"""The KDC's /metrics (krs_plugin/kdc/metrics.py, docs/operations.md "The KDC: metrics and
alerts"), read from a kdc.db the real lifecycle engine prepared: the fleet of
tests/unit/test_lifecycle_engine.py, whose nodes confirm as the KDC records it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from krs_plugin.kdc.engine import Engine
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.metrics import (
    PHASES,
    KdcMetrics,
    ServerHealth,
    health_of,
    phase_label,
    read_snapshot,
)
from krs_plugin.kdc.server import state_failures
from krs_plugin.kdc.store import Store
from krs_plugin.sqlitedb import FailureLog
from tests.unit.test_lifecycle_engine import NODES, ZONE, Fleet, fleet, signed

__all__ = ["fleet"]  # the fixture, imported for pytest

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(fleet: Fleet, health: ServerHealth | None = None) -> Sample:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    text = KdcMetrics(fleet.store.path, health, clock=lambda: fleet.now).exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def named(samples: Sample, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def test_keys_zones_and_history_of_a_signed_zone(fleet: Fleet) -> None:
    signed(fleet)
    fleet.store.add_zone("manual.test.", now=fleet.now)
    fleet.store.add_zone("new.test.", now=fleet.now, policy="fast")  # no pass since: no keys
    samples = scrape(fleet)
    keys = named(samples, "krs_kdc_keys")
    assert keys == {
        (("state", "created"),): 0, (("state", "published"),): 0, (("state", "active"),): 2,
        (("state", "retired"),): 0, (("state", "removed"),): 0,
    }  # fmt: skip
    zones = {labels[0][1]: v for labels, v in named(samples, "krs_kdc_zones").items()}
    assert zones == {**dict.fromkeys(PHASES, 0), "idle": 1, "manual": 1, "no-keys": 1}
    history = EngineState(fleet.store).history()
    assert samples[("krs_kdc_history_entries_total", ())] == len(history) == 5
    # Idle zones have no series of their own, whatever their number.
    assert not named(samples, "krs_kdc_rollover_step_seconds")
    assert not named(samples, "krs_kdc_lagging_node")
    # Every node has a pending count (0 here: all confirmed) and a failed count.
    pending = named(samples, "krs_kdc_distributions_pending")
    assert pending == {(("node", n),): 0 for n in NODES}
    assert not named(samples, "krs_kdc_distribution_pending_oldest_seconds")
    assert named(samples, "krs_kdc_distributions_failed") == {(("node", n),): 0 for n in NODES}


def test_the_phase_query_names_every_zone_as_the_engines_view_does(fleet: Fleet) -> None:
    signed(fleet)
    fleet.store.add_zone("manual.test.", now=fleet.now)
    fleet.store.add_zone("new.test.", now=fleet.now, policy="fast")
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    engine = Engine(fleet.store)
    wanted = dict.fromkeys(PHASES, 0)
    for zone in fleet.store.zones():
        wanted[phase_label(engine.view(zone, fleet.now))] += 1
    snap = read_snapshot(fleet.store, fleet.now)
    assert snap.zones == wanted
    assert wanted["zsk-rollover"] == wanted["manual"] == wanted["no-keys"] == 1


def test_a_rollover_held_by_a_node_names_it_until_it_confirms(fleet: Fleet) -> None:
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[2]}
    began = fleet.now
    fleet.run(30)
    samples = scrape(fleet)
    step = named(samples, "krs_kdc_rollover_step_seconds")
    labels = (("role", "ZSK"), ("step", "1"), ("waits_for", "nodes"), ("zone", ZONE))
    assert step == {labels: fleet.now - began}
    assert named(samples, "krs_kdc_lagging_node") == {(("node", NODES[2]), ("zone", ZONE)): 1}
    # The step's distribution waits at the node that is down, since the step began.
    assert named(samples, "krs_kdc_distributions_pending") == {
        (("node", NODES[0]),): 0, (("node", NODES[1]),): 0, (("node", NODES[2]),): 1,
    }  # fmt: skip
    oldest = named(samples, "krs_kdc_distribution_pending_oldest_seconds")
    assert oldest == {(("node", NODES[2]),): fleet.now - began}
    assert not named(samples, "krs_kdc_rollover_next_transition_timestamp_seconds")
    zones = {labels[0][1]: v for labels, v in named(samples, "krs_kdc_zones").items()}
    assert zones["zsk-rollover"] == 1 and zones["idle"] == 0
    keys = named(samples, "krs_kdc_keys")
    assert keys[(("state", "published"),)] == 1 and keys[(("state", "active"),)] == 2

    fleet.down = set()
    fleet.run(2)  # it confirms: the step waits for time now, until a time the metric gives
    samples = scrape(fleet)
    assert not named(samples, "krs_kdc_lagging_node")
    step = named(samples, "krs_kdc_rollover_step_seconds")
    assert [dict(labels)["waits_for"] for labels in step] == ["time"]
    view = Engine(fleet.store).view(ZONE, fleet.now)
    assert view.until is not None and view.until > fleet.now
    assert named(samples, "krs_kdc_rollover_next_transition_timestamp_seconds") == {
        (("zone", ZONE),): view.until
    }


def test_a_failed_distribution_counts_until_a_newer_one_of_its_zone(fleet: Fleet) -> None:
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.engine.run_pass(fleet.now)  # step 1 sent to every node
    dist = next(d for d in fleet.store.distributions(status="pending") if d.node_id == NODES[1])
    fleet.store.set_distribution_status(
        dist.id, NODES[1], "failed", now=fleet.now, error="disk full", stage="apply"
    )
    failed = named(scrape(fleet), "krs_kdc_distributions_failed")
    assert failed == {(("node", NODES[0]),): 0, (("node", NODES[1]),): 1, (("node", NODES[2]),): 0}
    fleet.store.set_distribution_status(dist.id, NODES[1], "confirmed", now=fleet.now)
    failed = named(scrape(fleet), "krs_kdc_distributions_failed")
    assert failed[(("node", NODES[1]),)] == 0


def test_the_scrape_only_reads_kdc_db(fleet: Fleet) -> None:
    signed(fleet)
    reader = Store.reader(fleet.store.path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("UPDATE zones SET policy = NULL")
    finally:
        reader.close()
    files = [fleet.store.path, Path(f"{fleet.store.path}-wal")]
    before = [p.read_bytes() for p in files]
    version = fleet.store.db.execute("PRAGMA data_version").fetchone()[0]
    scrape(fleet)
    assert [p.read_bytes() for p in files] == before
    assert fleet.store.db.execute("PRAGMA data_version").fetchone()[0] == version


def test_health_and_engine_gauges(fleet: Fleet) -> None:
    failures = FailureLog(state_failures.logger)
    health = ServerHealth(failures, engine=True, engine_interval=1.0, started_at=fleet.now)
    health.passed(fleet.now, 0.25, None)
    answer = health_of(health, fleet.store.path, clock=lambda: fleet.now)
    samples = scrape(fleet, health)
    assert samples[("krs_kdc_engine_last_pass_timestamp_seconds", ())] == fleet.now
    assert samples[("krs_kdc_engine_last_pass_duration_seconds", ())] == 0.25
    assert samples[("krs_kdc_engine_pass_failing", ())] == 0
    assert samples[("krs_kdc_state_failing", ())] == 0
    assert health.problems(fleet.now) == []
    assert answer() == (
        True,
        {
            "state": str(fleet.store.path),
            "engine_last_pass": fleet.now,
            "engine_last_pass_seconds": 0.25,
            "problems": [],
        },
    )
    health.passed(fleet.now, 0.5, "disk full")
    samples = scrape(fleet, health)
    assert samples[("krs_kdc_engine_pass_failing", ())] == 1
    assert answer()[0] is False


def test_health_is_bad_while_kdc_db_fails_or_the_engine_does() -> None:
    failures = FailureLog(state_failures.logger)
    health = ServerHealth(failures, engine=True, engine_interval=1.0, started_at=1000.0)
    health.passed(1000.0, 0.01, None)
    assert health.problems(1001.0) == []
    failures.error("confirmation", "confirmation not recorded: disk full")
    assert health.problems(1001.0) == ["state database: confirmation not recorded: disk full"]
    failures.recovered("confirmation", "confirmations are recorded again")
    health.passed(1002.0, 0.01, "state database kdc.db: disk full")
    assert health.problems(1002.0) == [
        "lifecycle engine: the last pass failed: state database kdc.db: disk full"
    ]
    health.passed(1003.0, 0.01, None)
    assert health.problems(1003.0) == []
    assert health.problems(1034.0) == ["lifecycle engine: no pass for 31 s"]


def test_every_metric_the_kdc_alerts_use_is_one_the_kdc_exports(fleet: Fleet) -> None:
    """A renamed metric would leave an alert that never fires: each krs_kdc_* name in
    integrations/kdc/prometheus-alerts.yaml must be in the exposition, and the rules must be
    well-formed (a name, an expression, a summary)."""
    import re

    import yaml

    signed(fleet)
    health = ServerHealth(FailureLog(state_failures.logger), engine=True)
    health.passed(fleet.now, 0.1, None)
    text = KdcMetrics(fleet.store.path, health, clock=lambda: fleet.now).exposition().decode()
    exported = set(re.findall(r"^# TYPE (krs_kdc_\w+) (\w+)", text, re.M))
    names = {name for name, _ in exported} | {
        f"{name}_total" for name, kind in exported if kind == "counter"
    }
    path = Path(__file__).resolve().parents[2] / "integrations/kdc/prometheus-alerts.yaml"
    rules = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in re.findall(r"\bkrs_kdc_\w+", rule["expr"])}
    assert used and used <= names, used - names
    assert {
        "krs_kdc_rollover_step_seconds", "krs_kdc_lagging_node", "krs_kdc_distributions_failed",
        "krs_kdc_distribution_pending_oldest_seconds", "krs_kdc_engine_last_pass_timestamp_seconds",
    } <= used  # fmt: skip
    for rule in rules:
        assert rule["alert"].startswith("Kdc") and rule["annotations"]["summary"], rule


def test_the_kdc_unit_logs_json_and_shows_metrics_on_loopback() -> None:
    import shlex

    from krs_plugin.kdc.cli import build_parser

    unit = Path(__file__).resolve().parents[2] / "integrations/kdc/krs-kdc.service"
    lines = unit.read_text().splitlines()
    (start,) = [line for line in lines if line.startswith("ExecStart=")]
    args = build_parser().parse_args(shlex.split(start.partition("=")[2])[1:])
    assert args.log_format == "json" and args.metrics is None  # metrics: off unless asked for
    (commented,) = [line for line in lines if line.startswith("#ExecStart=")]
    args = build_parser().parse_args(shlex.split(commented.partition("=")[2])[1:])
    assert args.log_format == "json" and args.metrics == "127.0.0.1:9154"


def test_a_write_failure_nothing_tries_again_stops_counting_after_a_while() -> None:
    failures = FailureLog(state_failures.logger)
    failures.error("notify", "NOTIFY answer not recorded: disk full")
    assert failures.failing() == {"notify": "NOTIFY answer not recorded: disk full"}
    assert failures.failing(within=-1.0) == {}  # as 5 minutes later, nothing tried again
