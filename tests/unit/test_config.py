"""krs.yaml: a valid file loads; every mistake names the file, the key and the reason."""

from __future__ import annotations

import ipaddress
import resource
from pathlib import Path
from typing import Any

import dns.name
import pytest
import yaml

from krs_plugin.config import load_config
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.errors import ConfigError


@pytest.fixture
def files(tmp_path: Path) -> Path:
    write_hpke_private(tmp_path / "node.hpke", HpkeKey.generate())
    write_jose_public(tmp_path / "kdc.pub", JoseKey.generate(), use="sig")
    return tmp_path


def base(files: Path) -> dict[str, Any]:
    return {
        "node_id": "ns1.edge.example.",
        "keys": {"hpke": "node.hpke"},
        "kdc": {"verification_key": "kdc.pub"},
        "control_zone": "kdc.example.",
        "control_servers": ["127.0.0.1:5354", "[::1]:5354"],
        "adapter": {"type": "directory", "settings": {"path": str(files / "keys")}},
        "zones": ["Example.COM."],
        "state": "krs.db",
    }


def write(files: Path, data: dict[str, Any]) -> Path:
    path = files / "krs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_config_loads_with_defaults(files: Path) -> None:
    config = load_config(write(files, base(files)))
    assert config.node_id == dns.name.from_text("ns1.edge.example.")
    assert config.zones == {dns.name.from_text("example.com.")}
    assert config.keys.hpke == files / "node.hpke"
    assert str(config.control_servers[1]) == "[::1]:5354"
    assert config.notify.allowed_sources == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.kdc.allow_unsigned is False
    assert config.limits.max_chunks == 4096 and config.poll_interval == 60.0


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"colour": "blue"}, "(top level)", "unknown key(s): colour"),
        ({"kdc": {"verification_key": "kdc.pub", "allow_unsinged": True}}, "kdc", "unknown key"),
        ({"node_id": "ns1.edge.example"}, "node_id", "ending in '.'"),
        ({"zones": []}, "zones", "at least one zone"),
        ({"control_servers": ["localhost:53"]}, "control_servers[0]", "not an IP address"),
        ({"control_servers": ["127.0.0.1:99999"]}, "control_servers[0]", "port must be"),
        ({"keys": {"hpke": "missing.key"}}, "keys.hpke", "does not exist"),
        ({"keys": {}}, "keys", "at least one of hpke or jose"),
        ({"kdc": {}}, "kdc.verification_key", "is required"),
        ({"adapter": {"type": "bind10"}}, "adapter.type", "(installed: bind9, directory, knot"),
        ({"poll_interval": "soon"}, "poll_interval", "must be a number"),
        ({"limits": {"max_chunks": 0}}, "limits.max_chunks", "integer >= 1"),
        ({"notify": {"allowed_sources": ["300.1.1.1/8"]}}, "notify.allowed_sources[0]", ""),
        ({"log_format": "xml"}, "log_format", "must be one of"),
        ({"state": "/nonexistent-dir/krs.db"}, "state", "does not exist"),
        ({"notify": {"max_connections": 0}}, "notify.max_connections", "integer >= 1"),
        ({"notify": {"max_connections": 10**7}}, "notify.max_connections", "RLIMIT_NOFILE"),
        ({"notify": {"tcp_idle_timeout": 0}}, "notify.tcp_idle_timeout", "number >= 0.1"),
        (
            {"notify": {"rate_limit": 10, "rate_limit_total": 5}},
            "notify.rate_limit_total",
            "at least notify.rate_limit (10)",
        ),
    ],
)
def test_errors_name_file_key_and_reason(
    files: Path, change: dict[str, Any], key: str, reason: str
) -> None:
    data = base(files) | change
    path = write(files, data)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert reason in message


def test_missing_required_key_is_named(files: Path) -> None:
    data = base(files)
    del data["control_zone"]
    with pytest.raises(ConfigError, match="control_zone: is required"):
        load_config(write(files, data))


def test_allow_unsigned_is_an_explicit_opt_out(files: Path) -> None:
    data = base(files) | {"kdc": {"allow_unsigned": True}}
    config = load_config(write(files, data))
    assert config.kdc.allow_unsigned and config.kdc.verification_key is None


def test_broken_yaml_is_a_config_error(files: Path) -> None:
    path = files / "krs.yaml"
    path.write_text("node_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_notify_limits_follow_the_descriptor_limit(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md, "Resource limits": 256 descriptors kept for everything but the
    listeners, the rest shared by them, at most 256 connections each."""
    listen = {"listen": ["127.0.0.1:5355", "[::1]:5355"], "rate_limit": 20}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    notify = load_config(write(files, base(files) | {"notify": listen})).notify
    assert (notify.max_connections, notify.tcp_idle_timeout) == (256, 10.0)
    assert (notify.rate_limit, notify.rate_limit_total) == (20.0, 80.0)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (512, 4096))
    assert load_config(write(files, base(files) | {"notify": listen})).notify.max_connections == 128
    with pytest.raises(ConfigError, match=r"lower it to at most 128 or raise the limit"):
        load_config(write(files, base(files) | {"notify": listen | {"max_connections": 129}}))


def test_durations_take_seconds_or_unit_strings(files: Path) -> None:
    data = base(files) | {
        "poll_interval": "2m",
        "clock_skew": "1m30s",
        "fetch": {"timeout": "10s", "backoff": 0.5},
        "notify": {"tcp_idle_timeout": "15s"},
    }
    config = load_config(write(files, data))
    assert (config.poll_interval, config.clock_skew) == (120.0, 90.0)
    assert (config.fetch.timeout, config.fetch.backoff) == (10.0, 0.5)
    assert config.notify.tcp_idle_timeout == 15.0
    with pytest.raises(ConfigError, match=r"poll_interval: must be a number of seconds or a dur"):
        load_config(write(files, base(files) | {"poll_interval": "1 hour"}))
