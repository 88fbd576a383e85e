"""adapter.settings mistakes are configuration errors naming the key, for every server adapter."""

from __future__ import annotations

from typing import Any

import pytest

from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.knot import KnotAdapter
from krs_plugin.adapters.nsd import NsdAdapter
from krs_plugin.adapters.powerdns import PowerDnsAdapter
from krs_plugin.errors import ConfigError

ADAPTERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "bind9": (Bind9Adapter, {"key_directory": "/tmp"}),
    "knot": (KnotAdapter, {}),
    "nsd": (NsdAdapter, {"key_directory": "/tmp", "unsigned_file": "u", "signed_file": "s"}),
    "powerdns": (PowerDnsAdapter, {"method": "pdnsutil"}),
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("verify_timeout", "soon", "verify_timeout: must be a positive number of seconds"),
        ("timeout", 0, "timeout: must be a positive number of seconds"),
        ("server", "127.0.0.1", "server: expected host:port"),
        ("sever", "127.0.0.1:53", "unknown key(s)"),
    ],
)
def test_bad_setting_is_a_configuration_error_naming_it(
    name: str, key: str, value: object, fragment: str
) -> None:
    adapter, required = ADAPTERS[name]
    setting = {key: value}
    if name == "bind9" and key == "timeout":  # BIND's command timeout is rndc's
        setting, fragment = {"rndc": setting}, f"rndc.{fragment}"
    with pytest.raises(ConfigError) as failure:
        adapter({**required, **setting})
    assert fragment in str(failure.value)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_timeouts_take_durations_as_krs_yaml_does(name: str) -> None:
    adapter, required = ADAPTERS[name]
    assert adapter({**required, "verify_timeout": "1m30s"}).verify_timeout == 90.0


def test_nsd_signature_times_take_durations() -> None:
    adapter, required = ADAPTERS["nsd"]
    made = adapter({**required, "signature_validity": "14d", "refresh_before": "4d"})
    assert (made.validity, made.refresh_before) == (14 * 86400, 4 * 86400)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_good_settings_are_taken(name: str) -> None:
    adapter, required = ADAPTERS[name]
    made = adapter({**required, "verify_timeout": 2.5, "server": "[::1]:5353"})
    assert (made.host, made.port, made.verify_timeout) == ("::1", 5353, 2.5)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("knot", "config", "/nonexistent/knot/knot.conf"),
        ("bind9", "named_conf", "/nonexistent/bind/named.conf"),
        ("nsd", "config", "/nonexistent/nsd/nsd.conf"),
        ("powerdns", "pdnsutil", "pdnsutil --config-dir=/nonexistent/powerdns"),
        ("powerdns", "pdns_control", "pdns_control --config-dir /nonexistent/powerdns"),
    ],
)
def test_a_server_config_file_that_does_not_exist_is_refused_when_krs_yaml_loads(
    name: str, key: str, value: str
) -> None:
    # Refused at start and at a reload (both build the adapter), not at the next distribution.
    adapter, required = ADAPTERS[name]
    with pytest.raises(ConfigError) as failure:
        adapter({**required, key: value})
    text = str(failure.value)
    assert text.startswith(f"adapter.settings.{key}: /nonexistent/") and "does not exist" in text
