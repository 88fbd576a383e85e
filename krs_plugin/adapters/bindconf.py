"""What named's configuration says about a zone's keys, read from ``named-checkconf -px``.

BIND 9.20 takes keys from outside only through a ``dnssec-policy`` with ``manual-mode yes`` whose
``keys`` clause matches them (docs/servers/bind9.md); ``rndc`` reports a zone's policy by name but
not what the policy says. ``named-checkconf -px`` prints the whole configuration, includes
resolved, secrets hidden, in one canonical layout (one statement per line, tabs, ``};`` closing
blocks), which is what this module reads. Nothing here talks to the running named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from krs_plugin.adapters.tools import run_tool
from krs_plugin.errors import AdapterError

# dnssec-policy algorithm names (BIND ARM, "dnssec-policy keys") and their numbers.
ALGORITHM_NAMES = {
    "rsasha1": 5,
    "nsec3rsasha1": 7,
    "rsasha256": 8,
    "rsasha512": 10,
    "ecdsap256sha256": 13,
    "ecdsap384sha384": 14,
    "ed25519": 15,
    "ed448": 16,
}
DEFAULT_RSA_BITS = 2048  # a policy's RSA length when it names none (BIND's default)
BUILTIN_POLICIES = {"default", "insecure", "none"}


@dataclass(frozen=True)
class PolicyKey:
    """One entry of a policy's ``keys`` clause: ``ksk key-directory lifetime unlimited
    algorithm ecdsap256sha256;``."""

    role: str  # ksk, zsk or csk
    store: str  # "key-directory" or the key-store's name
    lifetime: str  # "unlimited" or an ISO 8601 duration
    algorithm: int
    length: int | None  # bits, when the entry names a length
    tag_range: tuple[int, int] | None = None  # newer BIND only: 9.20.30 refuses tag-range

    def text(self) -> str:
        """The entry as named.conf would have it."""
        store = "key-directory" if self.store == "key-directory" else f'key-store "{self.store}"'
        length = f" {self.length}" if self.length else ""
        return f"{self.role} {store} lifetime {self.lifetime} algorithm {self.algorithm}{length};"


@dataclass(frozen=True)
class Policy:
    name: str
    manual_mode: bool = False
    offline_ksk: bool = False
    keys: tuple[PolicyKey, ...] = ()


ZONE_OPTIONS = frozenset({"inline-signing", "auto-dnssec", "dnssec-policy", "key-directory"})
"""The zone options the adapter reads; only these are kept: a named.conf of 10,000 zones is
read once per batch, and every option of every zone was megabytes held through the batch
(docs/benchmarks.md, "BIND 9.20 at 10,000 zones")."""


@dataclass(frozen=True)
class ZoneConfig:
    name: str  # as written, without the final dot
    options: dict[str, str] = field(default_factory=dict)
    """Single-line options of the zone statement among ``ZONE_OPTIONS``:
    ``{"dnssec-policy": "krs", ...}``."""


@dataclass(frozen=True)
class NamedConfig:
    directory: str = "."
    key_directory: str | None = None  # from options
    dnssec_policy: str | None = None  # from options (the zones' default)
    policies: dict[str, Policy] = field(default_factory=dict)
    key_stores: dict[str, str] = field(default_factory=dict)  # name -> directory
    zones: dict[str, ZoneConfig] = field(default_factory=dict)  # lower-case name -> zone

    def zone(self, name: str) -> ZoneConfig | None:
        return self.zones.get(name.rstrip(".").lower())

    def zone_policy(self, zone: ZoneConfig) -> str | None:
        """The policy a zone is under: its own ``dnssec-policy``, else the options' one."""
        return zone.options.get("dnssec-policy", self.dnssec_policy)

    def key_directory_of(self, zone: ZoneConfig) -> Path:
        """Where named looks for the zone's key files: the zone's ``key-directory``, the
        options' one, else named's working directory; relative ones against ``directory``."""
        where = zone.options.get("key-directory") or self.key_directory or self.directory
        path = Path(where)
        return path if path.is_absolute() else Path(self.directory) / path

    def store_directory(self, zone: ZoneConfig, key: PolicyKey) -> Path | None:
        """The folder a policy key entry keeps its files in (None: an unknown key-store)."""
        if key.store == "key-directory":
            return self.key_directory_of(zone)
        where = self.key_stores.get(key.store)
        if where is None:
            return None
        path = Path(where)
        return path if path.is_absolute() else Path(self.directory) / path


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Top-level statements: (first line, the lines inside its braces)."""
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        head = lines[i]
        if not head.strip():
            i += 1
            continue
        if not head.rstrip().endswith("{"):
            out.append((head.strip(), []))
            i += 1
            continue
        depth, body = head.count("{") - head.count("}"), []
        i += 1
        while i < len(lines) and depth > 0:
            depth += lines[i].count("{") - lines[i].count("}")
            if depth > 0:
                body.append(lines[i])
            i += 1
        out.append((head.strip(), body))
    return out


def _simple_options(body: list[str]) -> dict[str, str]:
    """``name value;`` lines of a block (first nesting level only)."""
    options: dict[str, str] = {}
    for head, inner in _blocks([line[1:] if line.startswith("\t") else line for line in body]):
        if inner or not head.endswith(";"):
            continue
        name, _, value = head[:-1].partition(" ")
        options[name] = _unquote(value)
    return options


_KEY_LINE = re.compile(
    r"(?P<role>ksk|zsk|csk)\s+(?:key-directory|key-store\s+\"?(?P<store>[^\"\s]+)\"?)?"
    r"(?:\s+lifetime\s+(?P<lifetime>\S+))?\s+algorithm\s+(?P<alg>\S+)(?:\s+(?P<len>\d+))?"
    r"(?:\s+tag-range\s+(?P<lo>\d+)\s+(?P<hi>\d+))?\s*;"
)


def parse_policy_key(line: str) -> PolicyKey:
    match = _KEY_LINE.fullmatch(line.strip())
    if match is None:
        raise AdapterError(f"named.conf: cannot read the dnssec-policy keys entry {line.strip()!r}")
    alg_text = match.group("alg").lower()
    algorithm = int(alg_text) if alg_text.isdigit() else ALGORITHM_NAMES.get(alg_text)
    if algorithm is None:
        raise AdapterError(f"named.conf: unknown dnssec-policy algorithm {alg_text!r}")
    lo, hi = match.group("lo"), match.group("hi")
    return PolicyKey(
        role=match.group("role"),
        store=match.group("store") or "key-directory",
        lifetime=match.group("lifetime") or "unlimited",
        algorithm=algorithm,
        length=int(match.group("len")) if match.group("len") else None,
        tag_range=(int(lo), int(hi)) if lo is not None and hi is not None else None,
    )


def _policy(name: str, body: list[str]) -> Policy:
    options = _simple_options(body)
    keys: list[PolicyKey] = []
    for head, inner in _blocks([line[1:] if line.startswith("\t") else line for line in body]):
        if head.startswith("keys ") or head == "keys {":
            keys += [parse_policy_key(line) for line in inner if line.strip()]
    return Policy(
        name,
        manual_mode=options.get("manual-mode") == "yes",
        offline_ksk=options.get("offline-ksk") == "yes",
        keys=tuple(keys),
    )


_NAMED_BLOCK = re.compile(r'(?P<kind>[\w-]+)\s+"(?P<name>[^"]*)"')


def parse_named_config(text: str) -> NamedConfig:
    """The parts of ``named-checkconf -px`` output this adapter needs (zones in views too)."""
    directory, key_directory, default_policy = ".", None, None
    policies: dict[str, Policy] = {}
    key_stores: dict[str, str] = {}
    zones: dict[str, ZoneConfig] = {}

    def take_zones(blocks: list[tuple[str, list[str]]]) -> None:
        for head, body in blocks:
            match = _NAMED_BLOCK.match(head)
            if match is None:
                continue
            if match.group("kind") == "zone":
                name = match.group("name").rstrip(".") or "."
                options = _simple_options(body)
                kept = {k: v for k, v in options.items() if k in ZONE_OPTIONS}
                zones[name.lower()] = ZoneConfig(name, kept)
            elif match.group("kind") == "view":
                take_zones(_blocks([line[1:] if line.startswith("\t") else line for line in body]))

    blocks = _blocks(text.splitlines())
    for head, body in blocks:
        if head.startswith("options"):
            options = _simple_options(body)
            directory = options.get("directory", directory)
            key_directory = options.get("key-directory")
            default_policy = options.get("dnssec-policy")
            continue
        match = _NAMED_BLOCK.match(head)
        if match is None:
            continue
        if match.group("kind") == "dnssec-policy":
            policies[match.group("name")] = _policy(match.group("name"), body)
        elif match.group("kind") == "key-store":
            store = _simple_options(body).get("directory")
            if store is not None:
                key_stores[match.group("name")] = store
    take_zones(blocks)
    return NamedConfig(directory, key_directory, default_policy, policies, key_stores, zones)


def read_named_config(checkconf: str, named_conf: Path, timeout: float = 10) -> NamedConfig:
    """Run ``named-checkconf -px`` on ``named_conf`` and parse what it prints."""
    argv = [checkconf, "-px", str(named_conf)]
    text = run_tool(argv, f"named-checkconf -px {named_conf}", timeout=timeout)
    return parse_named_config(text)
