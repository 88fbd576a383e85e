"""The decrypted distribution content (PROTOCOL.md section 5): a JSON array of operations.

Every entry is validated before anything is installed: field names and types, zone names, the
algorithm, that ``key_id`` is the DNSKEY's key tag, and that the private key derives that DNSKEY.
Unknown fields are refused rather than ignored: a field we do not understand may change what the
KDC meant. Messages name the entry index and the field; private keys never appear in them.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.exception
import dns.name
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.dnssec import (
    ALGORITHMS,
    DnssecKey,
    KeyTiming,
    check_key_matches,
    get_algorithm,
    load_pkcs8_pem,
    parse_dnskey_text,
)
from krs_plugin.errors import KeyFileError, KeyMismatchError, PayloadError, PolicyError

KeyType = Literal["ZSK", "KSK", "CSK"]
KEY_TYPES: tuple[KeyType, ...] = ("ZSK", "KSK", "CSK")
FLAGS_FOR_TYPE = {"ZSK": 256, "KSK": 257, "CSK": 257}
DEFAULT_CLOCK_SKEW = 30

_ENTRY_FIELDS = {
    "roll_key": {
        "operation",
        "zone_name",
        "key_id",
        "key_type",
        "algorithm",
        "flags",
        "public_key",
        "private_key",
        "metadata",
    },
    "delete_key": {"operation", "zone_name", "key_id", "metadata"},
    "ping": {"operation", "metadata"},
}
_OURS = {"distribution_id", "issued_at", "expires_at"}
_METADATA_FIELDS = {
    "roll_key": {"old_key_id", "retire_old_key", "timing", *_OURS},
    "delete_key": {"reason", "pending_confirmation", "crypto", *_OURS},
    "ping": {"nonce", "timestamp", "crypto", *_OURS},
}
_TIMING_ORDER = ("publish", "activate", "inactive", "delete")
_DIST_ID = re.compile(r"^[0-9a-f]{4,16}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Envelope:
    """Our additions inside ``metadata``, shared by every operation (all optional)."""

    distribution_id: str | None = None
    issued_at: int | None = None
    expires_at: int | None = None


@dataclass(frozen=True)
class RollKey:
    """Publish and activate ``key``; retire the zone's previous keys of its role."""

    zone: dns.name.Name
    key_tag: int
    key_type: KeyType
    key: DnssecKey
    old_key_tag: int | None = None
    retire_old_key: bool = False
    timing: KeyTiming | None = None
    envelope: Envelope = field(default_factory=Envelope)
    operation: Literal["roll_key"] = "roll_key"

    @property
    def dnskey(self) -> DNSKEY:
        return self.key.dnskey


@dataclass(frozen=True)
class DeleteKey:
    """Remove the key ``key_tag`` from ``zone``; an unknown key is already removed."""

    zone: dns.name.Name
    key_tag: int
    reason: str | None = None
    envelope: Envelope = field(default_factory=Envelope)
    operation: Literal["delete_key"] = "delete_key"


@dataclass(frozen=True)
class Ping:
    """A liveness probe; confirmed like a key."""

    nonce: str
    timestamp: str | None = None
    envelope: Envelope = field(default_factory=Envelope)
    operation: Literal["ping"] = "ping"


Entry = RollKey | DeleteKey | Ping


@dataclass(frozen=True)
class Payload:
    """A validated distribution: its entries in the order the KDC sent them."""

    entries: tuple[Entry, ...]

    @property
    def zones(self) -> frozenset[dns.name.Name]:
        return frozenset(e.zone for e in self.entries if not isinstance(e, Ping))


# --- building (the KDC) -----------------------------------------------------------------------


def roll_key_entry(
    key: DnssecKey,
    key_type: KeyType,
    *,
    old_key_tag: int | None = None,
    retire_old_key: bool = False,
    timing: KeyTiming | None = None,
    distribution_id: str | None = None,
    issued_at: int | None = None,
    expires_at: int | None = None,
) -> RollKey:
    if FLAGS_FOR_TYPE[key_type] != key.flags:
        raise PayloadError(
            f"a {key_type} needs flags {FLAGS_FOR_TYPE[key_type]}, key has {key.flags}"
        )
    return RollKey(
        key.zone.canonicalize(),
        key.key_tag,
        key_type,
        key,
        old_key_tag,
        retire_old_key,
        timing,
        Envelope(distribution_id, issued_at, expires_at),
    )


def delete_key_entry(
    zone: dns.name.Name | str,
    key_tag: int,
    reason: str | None = None,
    *,
    distribution_id: str | None = None,
    issued_at: int | None = None,
    expires_at: int | None = None,
) -> DeleteKey:
    name = dns.name.from_text(zone) if isinstance(zone, str) else zone
    return DeleteKey(
        name.canonicalize(), key_tag, reason, Envelope(distribution_id, issued_at, expires_at)
    )


def ping_entry(nonce: str, timestamp: str | None = None) -> Ping:
    return Ping(nonce, timestamp)


def encode_payload(entries: Sequence[Entry]) -> bytes:
    """tdns-compatible JSON (``DistributionEntry`` array); our fields only when set."""
    return json.dumps([_entry_json(e) for e in entries], separators=(",", ":")).encode()


def _entry_json(entry: Entry) -> dict[str, Any]:
    meta: dict[str, Any]
    if isinstance(entry, RollKey):
        meta = {
            "old_key_id": None if entry.old_key_tag is None else str(entry.old_key_tag),
            "retire_old_key": entry.retire_old_key,
        }
        if entry.timing is not None:
            timing = {k: getattr(entry.timing, k) for k in _TIMING_ORDER}
            meta["timing"] = {k: v for k, v in timing.items() if v is not None}
        meta.update(_envelope_json(entry.envelope))
        return {
            "operation": "roll_key",
            "zone_name": entry.zone.to_text(),
            "key_id": str(entry.key_tag),
            "key_type": entry.key_type,
            "algorithm": entry.key.algorithm,
            "flags": entry.key.flags,
            "public_key": entry.key.dnskey_text(),
            "private_key": base64.b64encode(entry.key.to_pkcs8_pem()).decode(),
            "metadata": meta,
        }
    if isinstance(entry, DeleteKey):
        meta = {} if entry.reason is None else {"reason": entry.reason}
        meta.update(_envelope_json(entry.envelope))
        return {
            "operation": "delete_key",
            "zone_name": entry.zone.to_text(),
            "key_id": str(entry.key_tag),
            "metadata": meta,
        }
    meta = {"nonce": entry.nonce}
    if entry.timestamp is not None:
        meta["timestamp"] = entry.timestamp
    meta.update(_envelope_json(entry.envelope))
    return {"operation": "ping", "metadata": meta}


def _envelope_json(envelope: Envelope) -> dict[str, Any]:
    return {
        k: v
        for k, v in (
            ("distribution_id", envelope.distribution_id),
            ("issued_at", envelope.issued_at),
            ("expires_at", envelope.expires_at),
        )
        if v is not None
    }


# --- parsing (the KRS) ------------------------------------------------------------------------


def parse_payload(
    data: bytes,
    *,
    now: float,
    expected_distribution_id: str | None = None,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> Payload:
    """Validate the cleartext of a distribution completely, or raise naming the first problem."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(obj, list):
        raise PayloadError(f"payload must be a JSON array of operations, got {_kind(obj)}")
    if not obj:
        raise PayloadError("payload holds no operations")
    entries = tuple(_parse_entry(i, e) for i, e in enumerate(obj))
    seen: dict[tuple[dns.name.Name, int], RollKey] = {}
    for index, entry in enumerate(entries):
        _check_window(index, entry.envelope, now, expected_distribution_id, clock_skew)
        if isinstance(entry, RollKey):
            ident = (entry.zone, entry.key_tag)
            other = seen.get(ident)
            if other is not None and other.key.dnskey != entry.key.dnskey:
                raise PayloadError(
                    f"entry {index}: key {entry.key_tag} for {entry.zone} appears twice with "
                    "different key material"
                )
            seen[ident] = entry
    return Payload(entries)


def _parse_entry(index: int, obj: Any) -> Entry:
    where = f"entry {index}"
    if not isinstance(obj, dict):
        raise PayloadError(f"{where}: must be a JSON object, got {_kind(obj)}")
    operation = obj.get("operation")
    if not isinstance(operation, str):
        raise PayloadError(f"{where}: field 'operation' is missing or not a string")
    allowed = _ENTRY_FIELDS.get(operation)
    if allowed is None:
        raise PayloadError(
            f"{where}: unknown operation {operation!r} (expected roll_key, delete_key or ping)"
        )
    where = f"entry {index} ({operation})"
    # tdns may emit empty fields for operations that do not use them; they carry nothing.
    unknown = sorted(k for k in obj if k not in allowed and obj[k] not in ("", 0, None))
    if unknown:
        raise PayloadError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    meta = obj.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise PayloadError(f"{where}: field 'metadata' must be an object, got {_kind(meta)}")
    bad_meta = sorted(k for k in meta if k not in _METADATA_FIELDS[operation])
    if bad_meta:
        raise PayloadError(f"{where}: unknown metadata field(s) {', '.join(map(repr, bad_meta))}")
    envelope = _parse_envelope(meta, where)
    if operation == "ping":
        nonce = meta.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise PayloadError(f"{where}: metadata 'nonce' is missing or not a string")
        timestamp = _optional(meta, "timestamp", str, where)
        if timestamp is not None and not _RFC3339.match(timestamp):
            raise PayloadError(f"{where}: metadata 'timestamp' {timestamp!r} is not RFC 3339")
        _optional(meta, "crypto", str, where)
        return Ping(nonce, timestamp, envelope)
    zone = _zone(obj, where)
    key_tag = _key_tag(obj, "key_id", where)
    if operation == "delete_key":
        reason = _optional(meta, "reason", str, where)
        _optional(meta, "pending_confirmation", bool, where)
        _optional(meta, "crypto", str, where)
        return DeleteKey(zone, key_tag, reason, envelope)
    return _parse_roll_key(obj, meta, zone, key_tag, envelope, where)


def _parse_roll_key(
    obj: Mapping[str, Any],
    meta: Mapping[str, Any],
    zone: dns.name.Name,
    key_tag: int,
    envelope: Envelope,
    where: str,
) -> RollKey:
    key_type = _required(obj, "key_type", str, where)
    if key_type not in KEY_TYPES:
        raise PayloadError(f"{where}: key_type {key_type!r} is not ZSK, KSK or CSK")
    algorithm = _required(obj, "algorithm", int, where)
    get_algorithm(algorithm)
    flags = _required(obj, "flags", int, where)
    if flags != FLAGS_FOR_TYPE[key_type]:
        raise PayloadError(
            f"{where}: flags {flags} do not fit key_type {key_type} "
            f"(expected {FLAGS_FOR_TYPE[key_type]})"
        )
    public_text = _required(obj, "public_key", str, where)
    try:
        owner, ttl, dnskey = parse_dnskey_text(public_text, where=f"{where}: public_key")
    except KeyFileError as exc:
        raise PayloadError(str(exc)) from exc
    if owner.canonicalize() != zone:
        raise PayloadError(f"{where}: public_key owner {owner} is not zone_name {zone}")
    if dnskey.flags != flags or dnskey.algorithm != algorithm:
        raise PayloadError(
            f"{where}: public_key has flags {dnskey.flags} algorithm {int(dnskey.algorithm)}, "
            f"the entry says flags {flags} algorithm {algorithm}"
        )
    private_text = _required(obj, "private_key", str, where)
    try:
        pem = base64.b64decode(private_text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{where}: private_key is not standard base64") from None
    try:
        key = load_pkcs8_pem(pem, zone, algorithm, flags, ttl, where=f"{where}: private_key")
    except KeyFileError as exc:
        raise PayloadError(str(exc)) from None
    check_key_matches(key, dnskey, where=f"{where}: private_key")
    if key_tag != key.key_tag:
        raise KeyMismatchError(
            f"{where}: key_id {key_tag} is not the DNSKEY's key tag {key.key_tag}"
        )
    old = meta.get("old_key_id")
    old_tag = None if old in (None, "") else _key_tag(meta, "old_key_id", f"{where}: metadata")
    retire = _optional(meta, "retire_old_key", bool, where) or False
    return RollKey(
        zone, key_tag, key_type, key, old_tag, retire, _parse_timing(meta, where), envelope
    )


def _parse_timing(meta: Mapping[str, Any], where: str) -> KeyTiming | None:
    raw = meta.get("timing")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PayloadError(f"{where}: metadata 'timing' must be an object")
    unknown = sorted(k for k in raw if k not in _TIMING_ORDER)
    if unknown:
        raise PayloadError(f"{where}: unknown timing field(s) {', '.join(map(repr, unknown))}")
    values = {k: _optional(raw, k, int, f"{where}: timing") for k in _TIMING_ORDER}
    present = [(k, v) for k, v in values.items() if v is not None]
    for (a, va), (b, vb) in itertools.pairwise(present):
        if va > vb:
            raise PayloadError(f"{where}: timing {a} ({va}) is after {b} ({vb})")
    return KeyTiming(**values)


def _parse_envelope(meta: Mapping[str, Any], where: str) -> Envelope:
    dist_id = _optional(meta, "distribution_id", str, where)
    if dist_id is not None and not _DIST_ID.match(dist_id):
        raise PayloadError(f"{where}: metadata 'distribution_id' {dist_id!r} is not 4-16 hex")
    return Envelope(
        dist_id,
        _optional(meta, "issued_at", int, where),
        _optional(meta, "expires_at", int, where),
    )


def _check_window(
    index: int, envelope: Envelope, now: float, expected: str | None, skew: int
) -> None:
    where = f"entry {index}"
    if expected is not None and envelope.distribution_id not in (None, expected):
        raise PolicyError(
            f"{where}: signed for distribution {envelope.distribution_id}, but it arrived as "
            f"distribution {expected}"
        )
    if envelope.issued_at is not None and envelope.issued_at > now + skew:
        raise PolicyError(
            f"{where}: not yet valid: issued_at {envelope.issued_at} is "
            f"{envelope.issued_at - now:.0f}s in the future (allowed skew {skew}s)"
        )
    if envelope.expires_at is not None and now > envelope.expires_at:
        raise PolicyError(
            f"{where}: expired: expires_at {envelope.expires_at} passed "
            f"{now - envelope.expires_at:.0f}s ago"
        )


# --- field helpers ----------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _type_ok(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _required(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj or obj[name] is None:
        raise PayloadError(f"{where}: field {name!r} is missing")
    value = obj[name]
    if not _type_ok(value, kind):
        expected = {int: "number", str: "string", bool: "boolean"}[kind]
        raise PayloadError(f"{where}: field {name!r} must be a {expected}, got {_kind(value)}")
    return value


def _optional(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if obj.get(name) is None:
        return None
    return _required(obj, name, kind, where)


def _zone(obj: Mapping[str, Any], where: str) -> dns.name.Name:
    text = _required(obj, "zone_name", str, where)
    if not text.endswith(".") or text == "":
        raise PayloadError(
            f"{where}: zone_name {text!r} must be a fully qualified name ending in '.'"
        )
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise PayloadError(
            f"{where}: zone_name {text!r} is not a valid domain name: {exc}"
        ) from exc
    return name.canonicalize()


def _key_tag(obj: Mapping[str, Any], name: str, where: str) -> int:
    value = _required(obj, name, str, where)
    if not value.isascii() or not value.isdigit() or int(value) > 0xFFFF:
        raise PayloadError(f"{where}: {name} {value!r} must be a decimal key tag 0..65535")
    return int(value)


__all__ = [
    "ALGORITHMS",
    "KEY_TYPES",
    "DeleteKey",
    "Entry",
    "Envelope",
    "Payload",
    "Ping",
    "RollKey",
    "delete_key_entry",
    "encode_payload",
    "parse_payload",
    "ping_entry",
    "roll_key_entry",
]
