"""/healthz and the metrics say what an operator must act on (issue 21, item 6): the nameserver
stopped, the last apply failed (until one succeeds), the KDC unreachable. Real krs run, knotd and
krs-kdc serve on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonkit import ZONE, Deployment, http_get, wait_until
from netutil import free_port

from krs_lab.knot import KnotLab

pytestmark = pytest.mark.integration


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/healthz")
    detail: dict[str, Any] = json.loads(body)
    return status, detail


def metric(port: int, name: str) -> float | None:
    for line in http_get(port, "/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def problems_with(port: int, fragment: str) -> bool:
    status, detail = health(port)
    return status == 503 and any(fragment in p for p in detail["problems"])


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "d")
    yield deployment
    deployment.close()


def test_healthz_reflects_knotd_stopped_and_a_failed_apply_until_one_succeeds(
    deployment: Deployment, tmp_path: Path
) -> None:
    lab = KnotLab(tmp_path / "knot", [ZONE])
    lab.start()
    port = free_port()
    try:
        deployment.write_config(
            metrics=f"127.0.0.1:{port}",
            adapter={"type": "knot", "settings": {**lab.adapter_settings(), "verify_timeout": 5}},
        )
        deployment.start_kdc()
        deployment.start_krs(env={"KRS_SERVER_CHECK_INTERVAL": "0.5"})
        first = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(first)
        wait_until(lambda: health(port)[0] == 200, 10, lambda: str(health(port)))
        assert health(port)[1]["server"] == "ok"
        assert metric(port, 'krs_server_up{adapter="knot"}') == 1

        lab.stop()
        wait_until(
            lambda: problems_with(port, "nameserver: knotd does not answer its control socket"),
            10,
            lambda: str(health(port)),
        )
        assert metric(port, 'krs_server_up{adapter="knot"}') == 0

        failed = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: problems_with(port, f"the last apply failed: distribution {failed}"),
            30,
            lambda: f"{health(port)}\n{deployment.all_logs()}",
        )
        assert metric(port, "krs_apply_failing") == 1

        lab.start()
        wait_until(lambda: health(port)[1]["server"] == "ok", 10, lambda: str(health(port)))
        assert problems_with(port, "the last apply failed")  # knotd back is not an apply
        again = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(again)
        wait_until(lambda: health(port)[0] == 200, 10, lambda: str(health(port)))
        assert health(port)[1]["last_apply_error"] is None
        assert metric(port, "krs_apply_failing") == 0
    finally:
        lab.stop()


def test_healthz_says_the_kdc_is_unreachable_after_three_failed_polls_and_counts_them(
    deployment: Deployment,
) -> None:
    port = free_port()
    deployment.write_config(
        metrics=f"127.0.0.1:{port}",
        poll_interval=1,
        fetch={"timeout": 1, "retries": 1, "backoff": 0.1},
    )
    deployment.start_krs()  # no krs-kdc serve: connection refused at every poll
    wait_until(
        lambda: problems_with(port, "KDC unreachable: "),
        30,
        lambda: f"{health(port)}\n{deployment.log('krs')}",
    )
    failed = metric(port, 'krs_polls_total{result="failed"}')
    assert failed is not None and failed >= 3
    assert (metric(port, "krs_poll_failures_consecutive") or 0) >= 3
    assert health(port)[1]["polls_failed_in_a_row"] >= 3

    deployment.start_kdc()
    wait_until(lambda: health(port)[0] == 200, 30, lambda: str(health(port)))
    assert (metric(port, 'krs_polls_total{result="ok"}') or 0) >= 1
    assert metric(port, "krs_poll_failures_consecutive") == 0


def test_a_reload_naming_a_knot_conf_that_does_not_exist_is_refused_and_the_old_config_runs(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    deployment.write_config(metrics=f"127.0.0.1:{port}")
    deployment.start_kdc()
    deployment.start_krs()
    missing = tmp_path / "etc-knot" / "knot.conf"
    deployment.write_config(adapter={"type": "knot", "settings": {"config": str(missing)}})
    wait_until(
        lambda: health(port)[1]["last_reload"].get("result") == "refused",
        15,
        lambda: str(health(port)),
    )
    error = health(port)[1]["last_reload"]["error"]
    assert f"adapter.settings.config: {missing} does not exist" in error, error
    dist_id = deployment.distribute("--zone", ZONE)  # still the directory adapter
    deployment.wait_confirmed(dist_id)
    assert list((deployment.node_dir / "keys").glob("K*.private"))
