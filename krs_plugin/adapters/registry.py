"""Which adapters are installed: the entry-point group ``krs_plugin.adapters``.

An adapter is a class registered under the name operators write as ``adapter.type`` in krs.yaml.
This package registers its five in pyproject.toml; another package ships a sixth by declaring
``[project.entry-points."krs_plugin.adapters"] myserver = "mypackage.adapter:MyAdapter"``
(docs/adapters.md, "Writing an adapter"). Nothing is imported until an adapter is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters.base import Adapter
from krs_plugin.errors import ConfigError

GROUP = "krs_plugin.adapters"


def installed() -> dict[str, EntryPoint]:
    """The installed adapters by name. Two packages registering one name is refused: which one
    runs must never depend on the order of sys.path."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=GROUP):
        other = found.get(entry.name)
        if other is not None and other.value != entry.value:
            raise ConfigError(
                f"adapter {entry.name!r} is registered twice ({other.value} and {entry.value}): "
                "uninstall one of the packages"
            )
        found[entry.name] = entry
    return found


def names() -> list[str]:
    return sorted(installed())


def adapter_class(name: str) -> type[Adapter]:
    """The class registered as ``name``; ConfigError listing the installed ones if none is."""
    entry = installed().get(name)
    if entry is None:
        have = ", ".join(names()) or "none (is krs-plugin installed? pip install krs-plugin)"
        raise ConfigError(f"adapter.type: no adapter {name!r} is installed (installed: {have})")
    try:
        cls = entry.load()
    except Exception as exc:  # a broken third-party package: say which, do not crash
        raise ConfigError(
            f"adapter.type: adapter {name!r} ({entry.value}) failed to load: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(
            f"adapter.type: {entry.value}, registered as {name!r}, is not an Adapter subclass"
        )
    return cls


def make_adapter(
    name: str,
    settings: Mapping[str, Any],
    *,
    config_path: Path | None = None,
    zones: Iterable[dns.name.Name] = (),
) -> Adapter:
    """An instance of adapter ``name``; errors name krs.yaml when ``config_path`` is given."""
    try:
        return adapter_class(name)(settings, config_path=config_path, zones=sorted(zones))
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}" if config_path else str(exc)) from exc
