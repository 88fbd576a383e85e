"""The files in integrations/ are what operators copy: their krs.yaml must load as ``krs run``
reads it, with adapter settings the adapter accepts, the server snippets must pass the server's
own checker, and the systemd units must start ``krs run`` with what it needs writable."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dns.name
import pytest
import yaml

from krs_plugin.adapters import make_adapter
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.knot import KnotAdapter
from krs_plugin.adapters.nsd import NsdAdapter
from krs_plugin.config import load_config

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
ADAPTERS = {"bind9": Bind9Adapter, "knot": KnotAdapter, "nsd": NsdAdapter}
SERVER_UNITS = {"bind9": "named.service", "knot": "knot.service", "nsd": "nsd.service"}
ZONE = dns.name.from_text("example.com.")


def sample_config(server: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((INTEGRATIONS / server / "krs.yaml").read_text())
    return config


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_krs_yaml_names_its_adapter_with_settings_it_accepts(server: str) -> None:
    config = sample_config(server)
    assert config["adapter"]["type"] == server
    ADAPTERS[server](config["adapter"]["settings"])  # raises ConfigError on an unknown key


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_krs_yaml_loads_as_krs_run_reads_it(server: str, tmp_path: Path) -> None:
    # load_config checks that the files krs.yaml names exist: the sample, moved under tmp_path
    # (/etc/krs and /var/lib/krs only), with those files in place.
    text = (INTEGRATIONS / server / "krs.yaml").read_text()
    for folder in ("/etc/krs/", "/var/lib/krs/"):
        text = text.replace(folder, f"{tmp_path}{folder}")
    raw = yaml.safe_load(text)
    for path in [*raw["keys"].values(), raw["kdc"]["verification_key"], raw["state"]]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    for path in [*raw["keys"].values(), raw["kdc"]["verification_key"]]:
        Path(path).write_text("")
    sample = tmp_path / "etc" / "krs" / "krs.yaml"
    sample.write_text(text)
    config = load_config(sample)
    assert config.adapter.type == server
    assert make_adapter(config).name == server


def read_unit(server: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string((INTEGRATIONS / server / "krs.service").read_text())
    return unit


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_unit_runs_krs_after_the_nameserver_with_its_state_writable(server: str) -> None:
    unit = read_unit(server)
    assert unit["Service"]["ExecStart"] == "/usr/local/bin/krs run -c /etc/krs/krs.yaml"
    assert SERVER_UNITS[server] in unit["Unit"]["After"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    config = sample_config(server)
    writable = [Path(p) for p in unit["Service"]["ReadWritePaths"].split()]
    state = Path(config["state"])
    assert any(state.is_relative_to(p) for p in writable), (state, writable)


def test_nsd_unit_lets_the_krs_write_the_keys_and_the_signed_zones() -> None:
    # ProtectSystem=strict: whatever the adapter writes must be listed, or every apply fails.
    unit = read_unit("nsd")
    assert unit["Service"]["ProtectSystem"] == "strict"
    writable = [Path(p) for p in unit["Service"]["ReadWritePaths"].split()]
    adapter = NsdAdapter(sample_config("nsd")["adapter"]["settings"])
    for path in (adapter.key_directory, adapter.signed_file(ZONE).parent):
        assert any(path.is_relative_to(p) for p in writable), (path, writable)


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_unit_passes_systemd_analyze_verify(server: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (part of systemd)")
    krs = shutil.which("krs") or str(Path(__file__).resolve().parents[2] / ".venv/bin/krs")
    if not Path(krs).exists():
        pytest.skip("no krs executable to stand in for /usr/local/bin/krs")
    unit = tmp_path / "krs.service"  # verify insists that ExecStart's binary exists
    text = (INTEGRATIONS / server / "krs.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/krs", krs))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr  # unknown keys are only warnings


def test_knot_snippet_passes_knotc_conf_check() -> None:
    if shutil.which("knotc") is None:
        pytest.fail("knotc is not installed (apt-get install knot-dnsutils)")
    result = subprocess.run(
        ["knotc", "-c", str(INTEGRATIONS / "knot" / "knot.conf.snippet"), "conf-check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_nsd_snippet_passes_nsd_checkconf() -> None:
    checkconf = shutil.which("nsd-checkconf") or "/usr/sbin/nsd-checkconf"
    if not Path(checkconf).exists():
        pytest.fail("nsd-checkconf is not installed (apt-get install nsd)")
    snippet = INTEGRATIONS / "nsd" / "nsd.conf.snippet"
    result = subprocess.run([checkconf, str(snippet)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    zonefile = subprocess.run(
        [checkconf, "-z", "example.com", "-o", "zonefile", str(snippet)],
        capture_output=True,
        text=True,
    ).stdout.strip()
    adapter = NsdAdapter(sample_config("nsd")["adapter"]["settings"])
    assert Path(zonefile) == adapter.signed_file(ZONE)  # NSD serves the file the KRS signs
