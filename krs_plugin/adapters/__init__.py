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
    raise ConfigError(
        f"{config.path}: adapter.type: {config.adapter.type!r} is not available yet "
        "(this version has: directory)"
    )
