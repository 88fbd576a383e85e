"""``krs-kdc serve --metrics`` (docs/operations.md, "The KDC: metrics and alerts"): a real KDC
running a zone's policy with a real ``krs run`` (directory adapter) on loopback; the engine makes
the zone's first keys and rolls its ZSK, and /metrics says where it stands: keys by state, the
zone's phase, and the node named as lagging while its ``krs run`` is stopped mid-rollover, gone
once it is back. The engine's log lines are JSON, as the KRS's."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import BIN, NODE, ZONE, Deployment, http_get, wait_until
from netutil import free_port
from prometheus_client.parser import text_string_to_metric_families

from tests.fsutil import full_disk

pytestmark = pytest.mark.integration

# Seconds instead of hours, so each step takes seconds: the DNSKEY TTL 2 s, Dsgn 6 - 4 = 2 s,
# and 3 s of publish safety, the window in which the test stops the node mid-rollover.
FAST = (
    "--dnskey-ttl", "2", "--max-zone-ttl", "3", "--negative-ttl", "2",
    "--signatures-validity", "6", "--signatures-refresh", "4", "--publish-safety", "3",
    "--retire-safety", "1", "--parent-ds-ttl", "2", "--parent-propagation-delay", "1",
    "--propagation-margin", "0", "--zsk-lifetime", "0",
)  # fmt: skip

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "d", generate_keys=False)
    yield deployment
    deployment.close()


def start_kdc(deployment: Deployment, metrics_port: int) -> None:
    log = deployment.logs / "kdc.log"
    process = deployment.start(
        "kdc",
        [
            str(BIN / "krs-kdc"), "--state", str(deployment.state), "serve",
            "--listen", f"127.0.0.1:{deployment.kdc_port}", "--notify-retry", "0.3",
            "--notify-retry-max", "1", "--log-format", "json",
            "--metrics", f"127.0.0.1:{metrics_port}",
        ],
    )  # fmt: skip
    wait_until(
        lambda: "krs-kdc serving" in log.read_text() or process.poll() is not None,
        20,
        "krs-kdc serve to start",
    )
    assert process.poll() is None, log.read_text()


def test_metrics_follow_the_engine_and_name_a_node_stopped_mid_rollover(
    deployment: Deployment,
) -> None:
    deployment.kdc("policy", "add", "fast", *FAST)
    deployment.kdc("zone", "set", ZONE, "--policy", "fast")
    port = free_port()
    start_kdc(deployment, port)
    deployment.start_krs()

    def phase(samples: Samples) -> str:
        found = [z["phase"] for z in series(samples, "krs_kdc_zones") if
                 value(samples, "krs_kdc_zones", **z) == 1]  # fmt: skip
        assert len(found) == 1, found
        return found[0]

    # The engine makes the zone's first keys, the node installs and confirms them, and once they
    # are in every cache the zone is idle with a KSK and a ZSK active.
    wait_until(lambda: phase(scrape(port)) == "idle", 60, lambda: deployment.all_logs())
    samples = scrape(port)
    assert value(samples, "krs_kdc_keys", state="active") == 2
    assert value(samples, "krs_kdc_keys", state="created") == 0
    assert value(samples, "krs_kdc_distributions_pending", node=NODE) == 0
    assert value(samples, "krs_kdc_distributions_failed", node=NODE) == 0
    assert not series(samples, "krs_kdc_rollover_step_seconds")
    assert value(samples, "krs_kdc_history_entries_total") == 5  # started, begun, served, done x2
    assert value(samples, "krs_kdc_engine_pass_failing") == 0
    assert value(samples, "krs_kdc_state_failing") == 0
    assert value(samples, "krs_kdc_nodes", state="in-sync") == 1  # the fleet (kdc/fleet.py)
    assert value(samples, "krs_kdc_node_lag_seconds") == 0
    last_pass = value(samples, "krs_kdc_engine_last_pass_timestamp_seconds")
    assert last_pass is not None and last_pass > 0
    status, body = http_get(port, "/healthz")
    assert status == 200 and json.loads(body)["problems"] == [], body

    # A ZSK rollover: step 1 (publish the new ZSK) is served, then waits for time.
    deployment.kdc("rollover", "--zone", ZONE, "--role", "ZSK")

    def step(samples: Samples) -> dict[str, str] | None:
        found = series(samples, "krs_kdc_rollover_step_seconds")
        return found[0] if found else None

    wait_until(
        lambda: (step(scrape(port)) or {}).get("waits_for") == "time",
        30,
        lambda: f"step 1 served:\n{deployment.all_logs()}",
    )
    samples = scrape(port)
    assert step(samples) == {"zone": ZONE, "role": "ZSK", "step": "1", "waits_for": "time"}
    assert phase(samples) == "zsk-rollover"
    assert value(samples, "krs_kdc_keys", state="published") == 1  # the new ZSK
    until = value(samples, "krs_kdc_rollover_next_transition_timestamp_seconds", zone=ZONE)
    assert until is not None and until > 0
    assert not series(samples, "krs_kdc_lagging_node")

    # The node stops; step 2 begins without it and is held, the node named.
    deployment.stop("krs")
    wait_until(
        lambda: series(scrape(port), "krs_kdc_lagging_node"),
        30,
        lambda: f"a lagging node:\n{deployment.all_logs()}",
    )
    samples = scrape(port)
    assert series(samples, "krs_kdc_lagging_node") == [{"zone": ZONE, "node": NODE}]
    assert value(samples, "krs_kdc_lagging_node", zone=ZONE, node=NODE) == 1
    assert step(samples) == {"zone": ZONE, "role": "ZSK", "step": "2", "waits_for": "nodes"}
    assert value(samples, "krs_kdc_distributions_pending", node=NODE) == 1
    oldest = value(samples, "krs_kdc_distribution_pending_oldest_seconds", node=NODE)
    assert oldest is not None and oldest >= 0
    # The fleet says the same: the node is behind on the step's distribution (KdcNodeBehind's
    # gauge), and krs-kdc status --nodes names it with it.
    assert value(samples, "krs_kdc_nodes", state="behind") == 1
    lag = value(samples, "krs_kdc_node_lag_seconds")
    assert lag is not None and lag >= 0
    (node,) = json.loads(deployment.kdc("status", "--nodes", "--json"))["nodes"]
    assert node["node_id"] == NODE and node["state"] == "behind", node
    assert [d["status"] for d in node["lag"]["distributions"]] == ["pending"]
    assert node["served"] and node["served"][0]["zone"] == ZONE  # the directory adapter reports

    # The node is back: it fetches the step, confirms, and is no longer named.
    deployment.start_krs()
    wait_until(
        lambda: not series(scrape(port), "krs_kdc_lagging_node"),
        30,
        lambda: f"the node to catch up:\n{deployment.all_logs()}",
    )
    wait_until(lambda: phase(scrape(port)) == "idle", 60, lambda: deployment.all_logs())
    samples = scrape(port)
    assert value(samples, "krs_kdc_keys", state="active") == 2
    assert value(samples, "krs_kdc_keys", state="removed") == 1  # the old ZSK
    assert value(samples, "krs_kdc_distributions_pending", node=NODE) == 0
    assert not series(samples, "krs_kdc_distribution_pending_oldest_seconds")
    assert value(samples, "krs_kdc_nodes", state="in-sync") == 1
    assert value(samples, "krs_kdc_node_lag_seconds") == 0

    # The engine's lines in serve's log are JSON objects, as krs run's (docs/operations.md, "Logs").
    engine_lines = [
        json.loads(line) for line in deployment.log("kdc").splitlines()
        if line.startswith("{") and '"krs_plugin.kdc.engine"' in line
    ]  # fmt: skip
    assert any("step 2 began" in e["message"] for e in engine_lines), engine_lines
    assert all({"time", "level", "logger", "message", "zone"} <= set(e) for e in engine_lines)


def test_healthz_is_503_while_kdc_db_is_on_a_full_disk_and_200_once_freed(tmp_path: Path) -> None:
    """kdc.db on a full tmpfs: the node's confirmation cannot be recorded (answered SERVFAIL,
    docs/kdc.md "Serve"), and /healthz says so with krs_kdc_state_failing 1, until space is
    freed and the confirmation is recorded."""
    deployment = Deployment(tmp_path / "d")
    saved = deployment.root / "kdc-saved"
    deployment.state.rename(saved)
    with full_disk(deployment.state, size=1024 * 1024) as disk:
        try:
            for item in saved.iterdir():  # the KDC's state, moved onto the small disk
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, deployment.state / item.name)
            port = free_port()
            dist_id = deployment.distribute("--zone", ZONE)
            start_kdc(deployment, port)
            assert http_get(port, "/healthz")[0] == 200
            disk.fill(free_pages=0)
            deployment.start_krs()  # polls at start, applies, confirms: SERVFAIL

            def problems() -> list[str]:
                status, body = http_get(port, "/healthz")
                found: list[str] = json.loads(body)["problems"]
                assert (status == 200) == (not found), body
                return found

            wait_until(
                lambda: any("confirmation not recorded" in p for p in problems()),
                30,
                lambda: f"/healthz naming the confirmation:\n{deployment.all_logs()}",
            )
            assert all(p.startswith("state database: ") for p in problems()), problems()
            assert any("disk full" in p for p in problems()), problems()
            assert value(scrape(port), "krs_kdc_state_failing") == 1

            disk.free()
            deployment.wait_confirmed(dist_id, timeout=60)
            wait_until(lambda: not problems(), 30, lambda: f"/healthz 200 again: {problems()}")
            assert value(scrape(port), "krs_kdc_state_failing") == 0
        finally:
            deployment.close()


def test_a_metrics_address_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "d")
    try:
        port = free_port()
        start_kdc(deployment, port)
        second = subprocess.run(
            [str(BIN / "krs-kdc"), "--state", str(deployment.state), "serve", "--listen",
             f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"krs-kdc: --metrics 127.0.0.1:{port}: cannot listen there" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        deployment.close()


def test_a_listen_address_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "d")
    try:
        deployment.start_kdc()
        taken = deployment.kdc_port
        second = subprocess.run(
            [str(BIN / "krs-kdc"), "--state", str(deployment.state), "serve", "--listen",
             f"127.0.0.1:{taken}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"krs-kdc: --listen 127.0.0.1:{taken}: cannot listen there" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        deployment.close()
