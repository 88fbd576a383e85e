"""`krs doctor` next to a real `krs-kdc serve` and a real `krs run`, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
from daemonkit import BIN, CZ, Deployment, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    deployment.write_config()
    deployment.start_kdc()
    wait_until(lambda: answers(deployment.kdc_port), 20, "krs-kdc serve to answer")
    yield deployment
    deployment.close()


def answers(port: int) -> bool:
    try:
        query = dns.message.make_query(CZ, dns.rdatatype.SOA)
        dns.query.tcp(query, "127.0.0.1", port=port, timeout=1)
    except (OSError, EOFError, dns.exception.DNSException):
        return False
    return True


def doctor(deployment: Deployment) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run(
        [str(BIN / "krs"), "doctor", "-c", str(deployment.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def test_doctor_passes_next_to_a_running_kdc(deployment: Deployment) -> None:
    code, checks = doctor(deployment)
    assert [c for c in checks if c["status"] != "ok"] == []
    assert code == 0
    server = next(c for c in checks if c["name"] == "control_servers[0]")
    assert server["message"].startswith(
        f"127.0.0.1:{deployment.kdc_port}: authoritative for {CZ}, serial "
    )
    assert {c["name"] for c in checks} >= {
        "config",
        "keys.hpke",
        "keys.signing",
        "kdc.verification_key",
        "state",
        "zones",
        "adapter",
        "notify.listen",
    }


def test_doctor_beside_a_running_krs_warns_that_its_ports_are_taken(
    deployment: Deployment,
) -> None:
    deployment.start_krs()
    code, checks = doctor(deployment)
    warnings = [c for c in checks if c["status"] == "warning"]
    address = f"127.0.0.1:{deployment.notify_port}"
    assert [c["message"] for c in warnings] == [
        f"{address} (UDP) in use (is `krs run` already running?)",
        f"{address} (TCP) in use (is `krs run` already running?)",
    ]
    assert code == 0  # warnings alone pass: the state database is shared safely (WAL)


def test_doctor_fails_and_names_the_server_when_the_kdc_is_down(deployment: Deployment) -> None:
    deployment.stop("kdc")
    code, checks = doctor(deployment)
    assert code == 1
    assert [(c["name"], c["message"]) for c in checks if c["status"] == "error"] == [
        (
            "control_servers[0]",
            f"127.0.0.1:{deployment.kdc_port}: connection refused (nothing listens on TCP)",
        )
    ]
