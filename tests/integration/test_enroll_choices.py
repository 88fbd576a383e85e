"""What ``krs enroll`` lets a new operator choose and what it tells them (issue 21, items 3 and
4): the nameserver (--adapter, with the paths of the Debian package), a state directory apart
from /etc/krs (--state-dir, default /var/lib/krs, which the shipped unit keeps writable), plain
words when the keys would only go to a folder, and the real next steps."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemonkit import BIN, Deployment
from test_enrollment import create, rows

from krs_lab.ports import free_port
from krs_plugin.receiver.enroll import SERVERS, debian_adapter

pytestmark = pytest.mark.integration

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"


@pytest.fixture
def kdc(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "kdc", "hpke")
    deployment.start_kdc()
    yield deployment
    deployment.close()


def enroll(package: Path, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "krs"), "enroll", str(package), "--dir", str(directory),
         "--notify", f"127.0.0.1:{free_port()}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_enroll_with_adapter_knot_writes_debians_knot_settings_and_the_state_apart(
    kdc: Deployment, tmp_path: Path
) -> None:
    etc, state = tmp_path / "etc-krs", tmp_path / "var-lib-krs"
    result = enroll(create(kdc, tmp_path), etc, "--adapter", "knot", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((etc / "krs.yaml").read_text())
    assert config["adapter"] == {
        "type": "knot",
        "settings": {"config": "/etc/knot/knot.conf", "server": "127.0.0.1:53"},
    }
    assert config["state"] == str(state / "krs.db")
    assert (state.stat().st_mode & 0o777) == 0o700
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("adapter: knot: keys are installed into the nameserver") for line in lines
    )
    assert "no nameserver loads" not in result.stdout
    nexts = [line for line in lines if line.startswith("next: ")]
    assert nexts[0].startswith(f"next: krs doctor -c {etc / 'krs.yaml'}"), nexts
    assert nexts[1].startswith("next: systemctl enable --now krs"), nexts
    assert "next: krs run" not in result.stdout  # run comes after the doctor, as the service


def test_enroll_without_adapter_says_the_keys_go_to_a_folder_no_server_loads(
    kdc: Deployment, tmp_path: Path
) -> None:
    etc, state = tmp_path / "etc-krs", tmp_path / "var-lib-krs"
    result = enroll(create(kdc, tmp_path), etc, "--state-dir", str(state), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["adapter"] == "directory" and data["state"] == str(state / "krs.db")
    assert data["next"][0].startswith("krs doctor -c ")
    # The folder is in the state directory: /etc is read-only under the shipped unit.
    config = yaml.safe_load((etc / "krs.yaml").read_text())
    assert config["adapter"]["settings"]["path"] == str(state / "zone-keys")
    text = enroll(create(kdc, tmp_path, node="ns3.edge.example."), tmp_path / "other",
                  "--state-dir", str(tmp_path / "other-state"))  # fmt: skip
    assert text.returncode == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("adapter: ")]
    assert "keys will only be written to" in line and "a folder no nameserver loads" in line
    assert "--adapter bind9|knot|nsd|powerdns" in line


def test_an_adapter_whose_server_config_is_missing_is_refused_before_the_kdc_is_asked(
    kdc: Deployment, tmp_path: Path
) -> None:
    section = tmp_path / "adapter.yaml"
    section.write_text("type: knot\nsettings: {config: /nonexistent/knot.conf}\n")
    package = create(kdc, tmp_path)
    before = rows(kdc)
    result = enroll(package, tmp_path / "etc-krs", "--adapter-config", str(section),
                    "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "adapter.settings.config: /nonexistent/knot.conf does not exist" in result.stderr
    assert "nothing was sent to the KDC" in result.stderr
    assert rows(kdc) == before and not (tmp_path / "etc-krs").exists()
    # The token was not spent: the same package enrols once the adapter is right.
    again = enroll(package, tmp_path / "etc-krs", "--adapter", "knot",
                   "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("server", SERVERS)
def test_adapter_choices_match_the_integrations_sample_krs_yaml(server: str) -> None:
    sample = yaml.safe_load((INTEGRATIONS / server / "krs.yaml").read_text())
    written = debian_adapter(server, Path("/etc/krs"), Path("/var/lib/krs"))
    assert written == sample["adapter"]
    assert sample["state"] == "/var/lib/krs/krs.db"


def test_a_read_only_state_dir_is_refused_before_the_kdc_is_asked(
    kdc: Deployment, tmp_path: Path
) -> None:
    state = tmp_path / "ro-state"
    state.mkdir()
    if subprocess.run(["mount", "--bind", str(state), str(state)]).returncode != 0:
        pytest.skip("mount --bind needs root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        package = create(kdc, tmp_path)
        before = rows(kdc)
        result = enroll(package, tmp_path / "etc-krs", "--state-dir", str(state))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"--state-dir {state}: krs.db cannot be written there" in result.stderr
        assert "read-only file system (EROFS)" in result.stderr
        assert "nothing was sent to the KDC" in result.stderr and "Traceback" not in result.stderr
        assert rows(kdc) == before and not (tmp_path / "etc-krs").exists()
    finally:
        subprocess.run(["umount", str(state)], check=True)
