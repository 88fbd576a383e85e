"""Nameserver adapters: the interface (base.py), the registry of installed ones (registry.py),
rollback across zones (transaction.py), and the five this package ships."""

from __future__ import annotations

from typing import TYPE_CHECKING

from krs_plugin.adapters.base import Adapter
from krs_plugin.adapters.registry import make_adapter as make_registered

if TYPE_CHECKING:  # config.py asks the registry which adapters exist
    from krs_plugin.config import Config


def make_adapter(config: Config) -> Adapter:
    """The adapter krs.yaml names (``adapter.type``, ``adapter.settings``) for its zones."""
    return make_registered(
        config.adapter.type, config.adapter.settings, config_path=config.path, zones=config.zones
    )
