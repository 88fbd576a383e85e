"""Reading ``adapter.settings``: the checks every nameserver adapter makes the same way."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from krs_plugin.errors import ConfigError
from krs_plugin.humantime import EXAMPLES, parse_duration


def reject_unknown(settings: Mapping[str, Any], allowed: Collection[str], adapter: str) -> None:
    """A misspelt setting would silently fall back to a default: refuse it, naming it."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"adapter.settings: unknown key(s) for {adapter}: {', '.join(unknown)}")


def server_address(settings: Mapping[str, Any], default: str = "127.0.0.1:53") -> tuple[str, int]:
    """``server``: where the nameserver answers DNS, for verification (``[::1]:53`` works)."""
    server = str(settings.get("server", default))
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"adapter.settings.server: expected host:port, got {server!r}")
    return host.strip("[]"), int(port)


def settings_path(value: object, base: Path | None) -> Path:
    """A path setting; relative ones are relative to the directory of krs.yaml."""
    path = Path(str(value))
    return base / path if not path.is_absolute() and base is not None else path


def seconds(settings: Mapping[str, Any], key: str, default: float, *, within: str = "") -> float:
    """A timeout: a positive number of seconds or a duration (``"10s"``, ``"2m"``; humantime.py);
    anything else is a configuration error, not a crash. ``within`` names the sub-mapping in
    messages (``rndc.``)."""
    value = settings.get(key, default)
    try:
        parsed = parse_duration(value)
    except (ValueError, TypeError):
        parsed = 0.0
    if parsed <= 0:
        raise ConfigError(
            f"adapter.settings.{within}{key}: must be a positive number of seconds or a duration "
            f"such as {EXAMPLES}, got {value!r}"
        )
    return parsed


def existing_file(path: Path, key: str, what: str) -> Path:
    """A file the server's tools read (knot.conf, named.conf, ...): it must exist when krs.yaml
    is loaded (``krs run``, a reload, ``krs doctor``), not only at the next distribution."""
    if not path.is_file():
        found = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(
            f"adapter.settings.{key}: {path} {found} ({what}); give the file the server really "
            f"reads, or install and configure the server first"
        )
    return path
