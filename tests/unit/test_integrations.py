"""The files in integrations/ are what operators copy: their krs.yaml adapter settings must be
accepted by the adapter, and the server snippets by the server's own checker."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.knot import KnotAdapter

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
ADAPTERS = {"bind9": Bind9Adapter, "knot": KnotAdapter}


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_krs_yaml_names_its_adapter_with_settings_it_accepts(server: str) -> None:
    config = yaml.safe_load((INTEGRATIONS / server / "krs.yaml").read_text())
    assert config["adapter"]["type"] == server
    ADAPTERS[server](config["adapter"]["settings"])  # raises ConfigError on an unknown key


def test_knot_snippet_passes_knotc_conf_check() -> None:
    if shutil.which("knotc") is None:
        pytest.fail("knotc is not installed (apt-get install knot-dnsutils)")
    result = subprocess.run(
        ["knotc", "-c", str(INTEGRATIONS / "knot" / "knot.conf.snippet"), "conf-check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
