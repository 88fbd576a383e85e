"""`krs run` whose NOTIFY port is taken says so in one line and exits 2 (found by
benchmarks/fleet.py: an ephemeral port handed out for one of 100 nodes was taken by an outgoing
connection before its `krs run` started, which died with a traceback)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from krs_lab.deployment import BIN, Deployment


def test_a_taken_notify_port_is_a_configuration_error(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "deploy")
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        taken.bind(("127.0.0.1", deployment.notify_port))
        deployment.write_config()
        result = subprocess.run(
            [str(BIN / "krs"), "run", "-c", str(deployment.config_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        taken.close()
        deployment.close()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"notify.listen 127.0.0.1:{deployment.notify_port}: cannot listen there" in result.stderr
