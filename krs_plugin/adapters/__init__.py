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
    if config.adapter.type == "bind9":
        from krs_plugin.adapters.bind9 import Bind9Adapter

        try:
            return Bind9Adapter(
                config.adapter.settings, config_path=config.path, zones=sorted(config.zones)
            )
        except ConfigError as exc:
            raise ConfigError(f"{config.path}: {exc}") from exc
    raise ConfigError(
        f"{config.path}: adapter.type: {config.adapter.type!r} is not available yet "
        "(this version has: directory, bind9)"
    )
