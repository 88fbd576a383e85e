"""Nameserver adapters behind one interface (``base.Adapter``)."""

from __future__ import annotations

from krs_plugin.adapters.base import Adapter
from krs_plugin.config import Config
from krs_plugin.errors import ConfigError


def make_adapter(config: Config) -> Adapter:
    """The adapter named in ``adapter.type``; the others arrive with their issues."""
    if config.adapter.type == "directory":
        from krs_plugin.adapters.directory import DirectoryAdapter

        return DirectoryAdapter(config.adapter.settings, config_path=config.path)
    server_adapters = {"bind9": _bind9, "knot": _knot, "nsd": _nsd, "powerdns": _powerdns}
    make = server_adapters.get(config.adapter.type)
    if make is None:
        raise ConfigError(
            f"{config.path}: adapter.type: {config.adapter.type!r} is not available yet "
            f"(this version has: directory, {', '.join(server_adapters)})"
        )
    try:
        return make(config)
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from exc


def _bind9(config: Config) -> Adapter:
    from krs_plugin.adapters.bind9 import Bind9Adapter

    return Bind9Adapter(
        config.adapter.settings, config_path=config.path, zones=sorted(config.zones)
    )


def _knot(config: Config) -> Adapter:
    from krs_plugin.adapters.knot import KnotAdapter

    return KnotAdapter(config.adapter.settings, config_path=config.path, zones=sorted(config.zones))


def _nsd(config: Config) -> Adapter:
    from krs_plugin.adapters.nsd import NsdAdapter

    return NsdAdapter(config.adapter.settings, config_path=config.path, zones=sorted(config.zones))


def _powerdns(config: Config) -> Adapter:
    from krs_plugin.adapters.powerdns import PowerDnsAdapter

    return PowerDnsAdapter(
        config.adapter.settings, config_path=config.path, zones=sorted(config.zones)
    )
