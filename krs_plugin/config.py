"""``krs.yaml`` read into frozen dataclasses; every error names the file, the key and the reason.

Unknown keys are errors (a typo must not silently fall back to a default), and every path and
address is checked here, at start-up, not when it is first used. ``load_config`` is all or
nothing: a reload that fails leaves the caller with its previous, valid config.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import yaml

from krs_plugin import keymove
from krs_plugin.adapters.registry import names as adapter_names
from krs_plugin.dnsio import connection_budget_problem, default_max_connections
from krs_plugin.errors import ConfigError
from krs_plugin.humantime import EXAMPLES, parse_duration
from krs_plugin.protocol.chunking import Limits

LOG_FORMATS = ("auto", "json", "text")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class KeyFiles:
    hpke: Path | None = None
    jose: Path | None = None
    signing: Path | None = None
    hpke_pq: Path | None = None  # ``keys: hpke-pq:`` (docs/configuration.md)


@dataclass(frozen=True)
class KdcSettings:
    verification_key: Path | None
    allow_unsigned: bool = False
    addresses: tuple[Address, ...] = ()
    """Where confirmations and resync requests go when the control servers are secondaries
    that only serve the zone (docs/scale.md); empty: the control servers."""
    pq_verification_key: Path | None = None
    """The KDC's ML-DSA-65 public key: when set, every distribution must carry a valid
    ``pq_signature`` (docs/security.md, "Post-quantum sealing")."""


@dataclass(frozen=True)
class NotifySettings:
    """The NOTIFY listener and its limits (docs/operations.md, "Resource limits")."""

    listen: tuple[Address, ...] = ()
    allowed_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_limit: float = 50.0  # new ids per second from one source, over each transport
    rate_limit_total: float = 200.0  # new ids per second from all sources, over each transport
    max_connections: int = 256  # open TCP connections per listener
    tcp_idle_timeout: float = 10.0  # seconds a TCP connection may go without a complete message


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5


@dataclass(frozen=True)
class AdapterSettings:
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path
    node_id: dns.name.Name
    keys: KeyFiles
    kdc: KdcSettings
    control_zone: dns.name.Name
    control_servers: tuple[Address, ...]
    notify: NotifySettings
    adapter: AdapterSettings
    zones: frozenset[dns.name.Name]
    state: Path
    limits: Limits = field(default_factory=Limits)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    poll_interval: float = 60.0
    clock_skew: float = 30.0
    log_format: str = "auto"
    metrics: Address | None = None

    @property
    def kdc_servers(self) -> tuple[Address, ...]:
        """Where this node talks to the KDC itself (confirmations, resync requests):
        ``kdc.address``, or the control servers when the KDC serves the zone itself."""
        return self.kdc.addresses or self.control_servers


class _Reader:
    """Walks the YAML mapping, naming ``file: key.path`` in every error."""

    def __init__(self, path: Path, *, require_files: bool = True) -> None:
        self.path = path
        self.require_files = require_files

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {reason}")

    def mapping(self, value: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(key or "(top level)", f"unknown key(s): {', '.join(unknown)}")
        return value

    def name(self, value: Any, key: str) -> dns.name.Name:
        if not isinstance(value, str) or not value.endswith("."):
            raise self.fail(key, f"must be a fully qualified name ending in '.', got {value!r}")
        try:
            return dns.name.from_text(value.lower())
        except dns.exception.DNSException as exc:
            raise self.fail(key, f"{value!r} is not a valid domain name: {exc}") from exc

    def address(self, value: Any, key: str, default_port: int) -> Address:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be an address like 127.0.0.1:5354, got {value!r}")
        text = value.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":") or str(default_port)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, str(default_port)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise self.fail(key, f"{value!r}: {host!r} is not an IP address") from None
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise self.fail(key, f"{value!r}: port must be 1..65535")
        return Address(host, int(port_text))

    def number(self, value: Any, key: str, default: float, minimum: float = 0) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(key, f"must be a number >= {minimum}, got {value!r}")
        return float(value)

    def duration(self, value: Any, key: str, default: float, minimum: float = 0) -> float:
        """Seconds: a number (``30``, ``0.5``) or a duration string (``"90s"``, ``"15m"``,
        ``"1h30m"``; krs_plugin/humantime.py)."""
        if value is None:
            return default
        try:
            seconds = parse_duration(value, what=key)
        except (ValueError, TypeError):
            raise self.fail(
                key, f"must be a number of seconds or a duration such as {EXAMPLES}, got {value!r}"
            ) from None
        if seconds < minimum:
            raise self.fail(key, f"must be a number >= {minimum} (seconds), got {value!r}")
        return seconds

    def integer(self, value: Any, key: str, default: int, minimum: int = 1) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, value: Any, key: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def file(self, value: Any, key: str, *, required: bool, exists: bool = True) -> Path | None:
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be a file path, got {value!r}")
        path = Path(value)
        if not path.is_absolute():
            path = self.path.parent / path
        if not self.require_files or not exists:
            return path  # krs doctor checks the file itself, next to everything else
        if not path.is_file():
            raise self.fail(key, f"file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise self.fail(key, f"file {path} is not readable")
        return path

    def list_of(self, value: Any, key: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {type(value).__name__}")
        return value


TOP_KEYS = {
    "node_id", "keys", "kdc", "control_zone", "control_servers", "notify", "adapter", "zones",
    "state", "limits", "fetch", "poll_interval", "clock_skew", "log_format", "metrics",
}  # fmt: skip


NOTIFY_KEYS = {
    "listen", "allowed_sources", "rate_limit", "rate_limit_total", "max_connections",
    "tcp_idle_timeout",
}  # fmt: skip


def _notify_limits(
    r: _Reader,
    raw: Mapping[str, Any],
    listen: tuple[Address, ...],
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> NotifySettings:
    """The NOTIFY budgets and the TCP connection limits (docs/operations.md, "Resource limits"):
    ``max_connections`` defaults to what the descriptor limit leaves after a reserve, and an
    explicit value that would eat into that reserve is refused."""
    rate = r.number(raw.get("rate_limit"), "notify.rate_limit", 50.0, minimum=0.1)
    total = r.number(raw.get("rate_limit_total"), "notify.rate_limit_total", 4 * rate, minimum=0.1)
    if total < rate:
        raise r.fail(
            "notify.rate_limit_total",
            f"must be at least notify.rate_limit ({rate:g}), got {total:g}",
        )
    connections = r.integer(
        raw.get("max_connections"),
        "notify.max_connections",
        default_max_connections(len(listen)),
    )
    problem = connection_budget_problem(connections, len(listen))
    if raw.get("max_connections") is not None and problem is not None:
        raise r.fail("notify.max_connections", problem)
    idle = r.duration(raw.get("tcp_idle_timeout"), "notify.tcp_idle_timeout", 10.0, minimum=0.1)
    return NotifySettings(listen, sources, rate, total, connections, idle)


def load_config(path: str | os.PathLike[str], *, require_files: bool = True) -> Config:
    """Read and check ``krs.yaml``; ``ConfigError`` naming file, key and reason.

    ``require_files=False`` (``krs doctor``) accepts key files that are missing or unreadable,
    so they are reported among every other finding instead of stopping the check."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    r = _Reader(file, require_files=require_files)
    top = r.mapping(raw, "", TOP_KEYS)
    for required in ("node_id", "control_zone", "control_servers", "zones", "state", "adapter"):
        if required not in top:
            raise r.fail(required, "is required")

    keys_raw = r.mapping(top.get("keys"), "keys", {"hpke", "jose", "signing", "hpke-pq"})
    # A move to another backend (krs rekey --backend) changes which key files are in use
    # without writing krs.yaml: keymove reads it from the files (docs/enrollment.md section 7).
    named = {b: r.file(keys_raw.get(b), f"keys.{b}", required=False, exists=False)
             for b in keymove.BACKENDS}  # fmt: skip
    held = keymove.resolve(named)
    for b, held_path in held.items():
        if held_path is not None:
            r.file(str(held_path), f"keys.{b}", required=False)
    keys = KeyFiles(
        held["hpke"],
        held["jose"],
        r.file(keys_raw.get("signing"), "keys.signing", required=False),
        held["hpke-pq"],
    )
    if keys.hpke is None and keys.jose is None and keys.hpke_pq is None:
        raise r.fail(
            "keys", "needs at least one of hpke or jose or hpke-pq (the node's private key files)"
        )

    kdc_raw = r.mapping(
        top.get("kdc"),
        "kdc",
        {"verification_key", "allow_unsigned", "address", "pq_verification_key"},
    )
    allow_unsigned = r.boolean(kdc_raw.get("allow_unsigned"), "kdc.allow_unsigned", False)
    kdc = KdcSettings(
        r.file(
            kdc_raw.get("verification_key"), "kdc.verification_key", required=not allow_unsigned
        ),
        allow_unsigned,
        tuple(
            r.address(v, f"kdc.address[{i}]", 53)
            for i, v in enumerate(r.list_of(kdc_raw.get("address"), "kdc.address"))
        ),
        r.file(kdc_raw.get("pq_verification_key"), "kdc.pq_verification_key", required=False),
    )

    servers = tuple(
        r.address(v, f"control_servers[{i}]", 53)
        for i, v in enumerate(r.list_of(top["control_servers"], "control_servers"))
    )
    if not servers:
        raise r.fail("control_servers", "needs at least one server")

    notify_raw = r.mapping(top.get("notify"), "notify", NOTIFY_KEYS)
    listen = tuple(
        r.address(v, f"notify.listen[{i}]", 5355)
        for i, v in enumerate(r.list_of(notify_raw.get("listen"), "notify.listen"))
    )
    sources = []
    for i, v in enumerate(r.list_of(notify_raw.get("allowed_sources"), "notify.allowed_sources")):
        try:
            sources.append(ipaddress.ip_network(str(v), strict=False))
        except ValueError as exc:
            raise r.fail(f"notify.allowed_sources[{i}]", str(exc)) from exc
    if not sources:  # NOTIFY carries no trust; by default only the control servers and KDC
        sources = [ipaddress.ip_network(s.host) for s in (*servers, *kdc.addresses)]
    notify = _notify_limits(r, notify_raw, listen, tuple(sources))

    adapter_raw = r.mapping(top["adapter"], "adapter", {"type", "settings"})
    adapter_type = adapter_raw.get("type")
    installed = adapter_names()
    if adapter_type not in installed:
        raise r.fail(
            "adapter.type",
            f"no adapter {adapter_type!r} is installed (installed: {', '.join(installed)}; "
            "others come as packages registering the entry point krs_plugin.adapters)",
        )
    settings = adapter_raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise r.fail("adapter.settings", "must be a mapping")

    zones = frozenset(
        r.name(v, f"zones[{i}]") for i, v in enumerate(r.list_of(top["zones"], "zones"))
    )
    if not zones:
        raise r.fail("zones", "needs at least one zone this node serves")

    state_value = top["state"]
    if not isinstance(state_value, str):
        raise r.fail("state", "must be a file path for the state database")
    state = Path(state_value) if Path(state_value).is_absolute() else file.parent / state_value
    if not state.parent.is_dir():
        raise r.fail("state", f"directory {state.parent} does not exist")

    limits_raw = r.mapping(
        top.get("limits"), "limits", {"max_chunks", "max_total_bytes", "max_chunk_size"}
    )
    defaults = Limits()
    try:
        limits = Limits(
            r.integer(limits_raw.get("max_chunks"), "limits.max_chunks", defaults.max_chunks),
            r.integer(
                limits_raw.get("max_total_bytes"),
                "limits.max_total_bytes",
                defaults.max_total_bytes,
            ),
            r.integer(
                limits_raw.get("max_chunk_size"), "limits.max_chunk_size", defaults.max_chunk_size
            ),
        )
    except ValueError as exc:
        raise r.fail("limits", str(exc)) from exc

    fetch_raw = r.mapping(top.get("fetch"), "fetch", {"timeout", "retries", "backoff"})
    fetch = FetchSettings(
        r.duration(fetch_raw.get("timeout"), "fetch.timeout", 10.0, minimum=0.1),
        r.integer(fetch_raw.get("retries"), "fetch.retries", 3),
        r.duration(fetch_raw.get("backoff"), "fetch.backoff", 0.5),
    )
    log_format = top.get("log_format", "auto")
    if log_format not in LOG_FORMATS:
        raise r.fail("log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    metrics = top.get("metrics")
    return Config(
        path=file,
        node_id=r.name(top["node_id"], "node_id"),
        keys=keys,
        kdc=kdc,
        control_zone=r.name(top["control_zone"], "control_zone"),
        control_servers=servers,
        notify=notify,
        adapter=AdapterSettings(str(adapter_type), dict(settings)),
        zones=zones,
        state=state,
        limits=limits,
        fetch=fetch,
        poll_interval=r.duration(top.get("poll_interval"), "poll_interval", 60.0, minimum=1),
        clock_skew=r.duration(top.get("clock_skew"), "clock_skew", 30.0),
        log_format=str(log_format),
        metrics=None if metrics is None else r.address(metrics, "metrics", 9153),
    )
