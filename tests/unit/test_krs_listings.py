"""``krs status`` and ``krs keys`` show times as people read them (UTC, 'in 1h'/'2h ago'); their
--json keeps Unix seconds, and takes --json before or after the command (issue 21)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from krs_plugin import cli
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.receiver.store import ReceiverStore

UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_hpke_private(tmp_path / "node.hpke", HpkeKey.generate())
    write_jose_public(tmp_path / "kdc.pub", JoseKey.generate(), use="sig")
    path = tmp_path / "krs.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "node_id": "ns1.edge.example.",
                "keys": {"hpke": "node.hpke"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": "kdc.example.",
                "control_servers": ["127.0.0.1:5354"],
                "adapter": {"type": "directory", "settings": {"path": str(tmp_path / "keys")}},
                "zones": ["example.com."],
                "state": "krs.db",
            }
        )
    )
    (tmp_path / "keys").mkdir()
    store = ReceiverStore(tmp_path / "krs.db")
    two_hours_ago = time.time() - 7200
    store.record_applied("6b142b8c", "kdc.example.", 0x6B142B8C, [("example.com.", 12345, 13, 257)],
                         [], {}, now=two_hours_ago)  # fmt: skip
    store.close()
    return path


def test_status_and_keys_show_utc_times_and_how_long_ago(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "-c", str(config)]) == 0
    status = capsys.readouterr().out
    assert re.search(rf"6b142b8c applied .* received {UTC_TIME} \(2h ago\)", status), status
    assert cli.main(["keys", "-c", str(config)]) == 0
    keys = capsys.readouterr().out
    assert re.search(rf"tag 12345 .* installed {UTC_TIME} \(2h ago\)", keys), keys


def test_json_keeps_unix_seconds_before_or_after_the_command(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--json", "status", "-c", str(config)]) == 0
    before = json.loads(capsys.readouterr().out)
    assert cli.main(["status", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == before
    assert isinstance(before[0]["received_at"], int)
