"""The decrypted distribution content (docs/protocol.md section 5, docs/payload.md): a JSON
array of operations.

Every entry is validated before anything is installed: field names and JSON types, zone names,
the algorithm, that ``key_id`` is the DNSKEY's key tag, and that the private key derives that
DNSKEY. Unknown fields are refused rather than ignored: a field we do not understand may change
what the KDC meant. Messages name the entry index, the field and the problem; private keys never
appear in them (values are shown truncated, key material never).

``encode_payload`` is the inverse for the KDC and writes what tdns's Go code writes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import dns.dnssec
import dns.name
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin import kdckeys
from krs_plugin.crypto import JoseKey
from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    check_key_matches,
    get_algorithm,
    load_pkcs8_pem,
    parse_dnskey_text,
)
from krs_plugin.dnssec.timing import MAX_TIME
from krs_plugin.errors import (
    KeyFileError,
    KeyMismatchError,
    PayloadError,
    PolicyError,
    UnsupportedAlgorithmError,
)
from krs_plugin.protocol.manifest import BACKENDS

KeyType = Literal["ZSK", "KSK", "CSK"]
KEY_TYPES: tuple[KeyType, ...] = ("ZSK", "KSK", "CSK")
CdsState = Literal["publish", "delete"]
CDS_STATES: tuple[CdsState, ...] = ("publish", "delete")
FLAGS_FOR_TYPE: dict[str, int] = {"ZSK": 256, "KSK": 257, "CSK": 257}
DEFAULT_CLOCK_SKEW = 30
OPERATIONS = ("roll_key", "delete_key", "ping")

# tdns's DistributionEntry, in its Go struct order (the order encode_payload writes).
ENTRY_FIELDS = (
    "operation",
    "zone_name",
    "key_id",
    "key_type",
    "algorithm",
    "flags",
    "public_key",
    "private_key",
    "metadata",
)
_USED_FIELDS = {
    "roll_key": frozenset(ENTRY_FIELDS),
    "delete_key": frozenset({"operation", "zone_name", "key_id", "metadata"}),
    "ping": frozenset({"operation", "metadata"}),
}
_OURS = ("distribution_id", "issued_at", "expires_at", "kdc_keys")  # kdc_keys: kdckeys.py
METADATA_FIELDS = {
    "roll_key": frozenset({"old_key_id", "retire_old_key", "timing", "cds", *_OURS}),
    "delete_key": frozenset({"reason", "pending_confirmation", "crypto", *_OURS}),
    "ping": frozenset({"nonce", "timestamp", "crypto", "rekey", *_OURS}),
}
TIMING_FIELDS = ("publish", "activate", "inactive", "delete")
AGENT_PING_FIELDS = ("MessageType", "MyIdentity", "nonce")  # tdns transport's ping message
MAX_TEXT = 1024  # reason, nonce, crypto: logged and echoed, so bounded

_DIST_ID = re.compile(r"[0-9a-f]{4,16}")
_KEY_TAG = re.compile(r"0|[1-9][0-9]{0,4}")
_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """Our additions inside ``metadata``, shared by every operation (all optional).

    They are inside the signed and encrypted content, so the KRS can bind an entry to the
    distribution it arrived in and to a validity window without trusting the manifest alone.
    """

    distribution_id: str | None = None
    issued_at: int | None = None
    expires_at: int | None = None


@dataclass(frozen=True)
class RollKey:
    """Publish and activate ``key``; retire the zone's previous keys of its role (tdns)."""

    zone: dns.name.Name
    key_tag: int
    key_type: KeyType
    key: DnssecKey
    old_key_tag: int | None = None
    retire_old_key: bool = False
    timing: KeyTiming | None = None
    envelope: Envelope = field(default_factory=Envelope)
    cds: CdsState | None = None
    """Ours (docs/payload.md): ``publish``, the zone serves this KSK's CDS and CDNSKEY now;
    ``delete``, the zone serves the RFC 8078 delete CDS/CDNSKEY now; None, neither."""
    operation: Literal["roll_key"] = "roll_key"

    @property
    def dnskey(self) -> DNSKEY:
        return self.key.dnskey


@dataclass(frozen=True)
class DeleteKey:
    """Remove the key ``key_tag`` from ``zone``; an unknown key is already removed (tdns)."""

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
    rekey: bool = False  # ours: the KDC asks the node to rotate its keys (docs/payload.md)
    rekey_backend: str | None = None  # ours: ... and to move to this backend (``rekey: NAME``)


Entry = RollKey | DeleteKey | Ping


@dataclass(frozen=True)
class Payload:
    """A validated distribution: its entries in the order the KDC sent them."""

    entries: tuple[Entry, ...]
    kdc_keys: tuple[JoseKey, ...] = ()
    """Ours (docs/payload.md): the KDC verification keys it wants trusted from now on, from the
    first entry's ``metadata.kdc_keys``; empty when the KDC sent none (no roll under way)."""

    @property
    def zones(self) -> frozenset[dns.name.Name]:
        return frozenset(e.zone for e in self.entries if not isinstance(e, Ping))


# --- shared checks (parser and builders use the same ones) ------------------------------------


def _fail(where: str, message: str) -> NoReturn:
    raise PayloadError(f"{where}: {message}")


def _show(value: object) -> str:
    """A value for an error message: short enough that a misplaced private key never shows."""
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a fractional number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def zone_name(text: str, where: str, label: str = "field 'zone_name'") -> dns.name.Name:
    """An absolute zone name, lower-cased; letters, digits, ``-`` and ``_`` in its labels.

    The name ends up in file names and in nameserver commands, so characters that need
    escaping there are refused rather than escaped.
    """
    if text == ".":
        return dns.name.root
    if not text:
        _fail(where, f"{label} is empty")
    if not text.endswith("."):
        _fail(where, f"{label} {_show(text)} is not absolute (must end with a dot)")
    labels = text[:-1].split(".")
    for part in labels:
        if not part:
            _fail(where, f"{label} {_show(text)} has an empty label")
        if len(part) > 63:
            _fail(where, f"{label} has a label of {len(part)} characters (at most 63)")
        if not (part.isascii() and _LABEL.fullmatch(part)):
            _fail(
                where,
                f"{label} {_show(text)}: labels may hold only letters, digits, '-' and '_'",
            )
    wire = sum(len(p) + 1 for p in labels) + 1
    if wire > 255:
        _fail(where, f"{label} is {wire} bytes in wire form (at most 255)")
    return dns.name.from_text(text).canonicalize()


def key_tag_text(value: str, where: str, label: str = "field 'key_id'") -> int:
    """A key tag from its decimal text (no sign, no leading zeros, 0..65535)."""
    if not (value.isascii() and _KEY_TAG.fullmatch(value)) or int(value) > 0xFFFF:
        _fail(where, f"{label} {_show(value)} is not a decimal key tag 0..65535")
    return int(value)


def _unix_seconds(value: object, where: str, label: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, f"{label} must be an integer (Unix seconds), got {_kind(value)}")
    if not 0 <= value <= MAX_TIME:
        _fail(where, f"{label} {value} is not Unix seconds in 0..{MAX_TIME}")
    return value


def _check_timing(timing: KeyTiming, where: str) -> None:
    present = [(k, getattr(timing, k)) for k in TIMING_FIELDS if getattr(timing, k) is not None]
    for (a, va), (b, vb) in itertools.pairwise(present):
        if va > vb:
            _fail(where, f"metadata 'timing': {a} ({va}) is after {b} ({vb})")


def _check_envelope(envelope: Envelope, where: str) -> None:
    dist_id = envelope.distribution_id
    if dist_id is not None and not _DIST_ID.fullmatch(dist_id):
        _fail(where, f"metadata 'distribution_id' {_show(dist_id)} is not 4-16 lowercase hex")
    for name in ("issued_at", "expires_at"):
        value = getattr(envelope, name)
        if value is not None:
            _unix_seconds(value, where, f"metadata {name!r}")
    issued, expires = envelope.issued_at, envelope.expires_at
    if issued is not None and expires is not None and expires < issued:
        _fail(where, f"metadata 'expires_at' ({expires}) is before 'issued_at' ({issued})")


def _check_rfc3339(value: str, where: str) -> None:
    ok = _RFC3339.fullmatch(value) is not None
    if ok:
        try:
            dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            ok = False
    if not ok:
        _fail(where, f"metadata 'timestamp' {_show(value)} is not an RFC 3339 date-time")


def _check_text(value: str, where: str, label: str, *, empty_ok: bool = True) -> None:
    if not value and not empty_ok:
        _fail(where, f"{label} is empty")
    if len(value) > MAX_TEXT:
        _fail(where, f"{label} is {len(value)} characters (at most {MAX_TEXT})")


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
    cds: CdsState | None = None,
) -> RollKey:
    """A ``roll_key`` entry for ``key``, checked by the rules ``parse_payload`` applies.

    ``timing.created`` is not part of the payload and is dropped.
    """
    where = "roll_key_entry"
    if key_type not in KEY_TYPES:
        _fail(where, f"key_type {_show(key_type)} is not ZSK, KSK or CSK")
    if FLAGS_FOR_TYPE[key_type] != key.flags:
        _fail(
            where, f"a {key_type} needs flags {FLAGS_FOR_TYPE[key_type]}, the key has {key.flags}"
        )
    zone = zone_name(key.zone.to_text(), where, "zone")
    if old_key_tag is not None:
        if not 0 <= old_key_tag <= 0xFFFF:
            _fail(where, f"old_key_tag {old_key_tag} is not in 0..65535")
        if old_key_tag == key.key_tag:
            _fail(where, f"old_key_tag {old_key_tag} is the new key's own tag")
    if timing is not None:
        timing = KeyTiming(None, timing.publish, timing.activate, timing.inactive, timing.delete)
        _check_timing(timing, where)
    envelope = Envelope(distribution_id, issued_at, expires_at)
    _check_envelope(envelope, where)
    if cds is not None:
        _check_cds(cds, key_type, where)
    return RollKey(
        zone, key.key_tag, key_type, key, old_key_tag, bool(retire_old_key), timing, envelope, cds
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
    """A ``delete_key`` entry, checked by the rules ``parse_payload`` applies."""
    where = "delete_key_entry"
    text = zone.to_text() if isinstance(zone, dns.name.Name) else zone
    name = zone_name(text, where, "zone")
    if not 0 <= key_tag <= 0xFFFF:
        _fail(where, f"key_tag {key_tag} is not in 0..65535")
    if reason is not None:
        _check_text(reason, where, "reason")
    envelope = Envelope(distribution_id, issued_at, expires_at)
    _check_envelope(envelope, where)
    return DeleteKey(name, key_tag, reason, envelope)


def ping_entry(
    nonce: str,
    timestamp: str | None = None,
    *,
    distribution_id: str | None = None,
    issued_at: int | None = None,
    expires_at: int | None = None,
    rekey: bool = False,
    rekey_backend: str | None = None,
) -> Ping:
    """A ``ping`` entry; ``timestamp`` is RFC 3339 text as tdns sends it."""
    where = "ping_entry"
    _check_text(nonce, where, "nonce", empty_ok=False)
    if timestamp is not None:
        _check_rfc3339(timestamp, where)
    envelope = Envelope(distribution_id, issued_at, expires_at)
    _check_envelope(envelope, where)
    if rekey_backend is not None and rekey_backend not in BACKENDS:
        _fail(where, f"rekey backend {rekey_backend!r} is not one of {list(BACKENDS)}")
    return Ping(nonce, timestamp, envelope, rekey=rekey or rekey_backend is not None,
                rekey_backend=rekey_backend)  # fmt: skip


def encode_payload(entries: Sequence[Entry], kdc_keys: Sequence[JoseKey] = ()) -> bytes:
    """The JSON tdns's Go code writes: entries in struct field order, ``metadata`` keys sorted
    (Go marshals maps sorted), ``<``, ``>``, ``&`` escaped as Go does; our fields only when set.
    ``kdc_keys`` (ours, a signing-key roll under way): in the first entry's ``metadata``.
    """
    if not entries:
        raise PayloadError("encode_payload: a payload needs at least one entry")
    items = [_entry_json(e) for e in entries]
    if kdc_keys:
        first = items[0]
        first["metadata"] = _sorted(
            {**first["metadata"], kdckeys.FIELD: kdckeys.announce_json(kdc_keys)}
        )
    text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    del items
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value


def _entry_json(entry: Entry) -> dict[str, Any]:
    meta: dict[str, Any] = {
        k: v
        for k, v in (
            ("distribution_id", entry.envelope.distribution_id),
            ("issued_at", entry.envelope.issued_at),
            ("expires_at", entry.envelope.expires_at),
        )
        if v is not None
    }
    if isinstance(entry, RollKey):
        meta["old_key_id"] = None if entry.old_key_tag is None else str(entry.old_key_tag)
        meta["retire_old_key"] = entry.retire_old_key
        if entry.timing is not None:
            meta["timing"] = {
                k: getattr(entry.timing, k)
                for k in TIMING_FIELDS
                if getattr(entry.timing, k) is not None
            }
        if entry.cds is not None:
            meta["cds"] = entry.cds
        key = entry.key
        rd = key.dnskey
        rdata = f"{rd.flags} {rd.protocol} {int(rd.algorithm)} {base64.b64encode(rd.key).decode()}"
        return {
            "operation": "roll_key",
            "zone_name": entry.zone.to_text(),
            "key_id": str(entry.key_tag),
            "key_type": entry.key_type,
            "algorithm": key.algorithm,
            "flags": key.flags,
            "public_key": f"{entry.zone.to_text()}\t{key.ttl}\tIN\tDNSKEY\t{rdata}",
            "private_key": base64.b64encode(key.to_pkcs8_pem()).decode(),
            "metadata": _sorted(meta),
        }
    if isinstance(entry, DeleteKey):
        if entry.reason is not None:
            meta["reason"] = entry.reason
        return {
            "operation": "delete_key",
            "zone_name": entry.zone.to_text(),
            "key_id": str(entry.key_tag),
            "metadata": _sorted(meta),
        }
    meta["nonce"] = entry.nonce
    if entry.timestamp is not None:
        meta["timestamp"] = entry.timestamp
    if entry.rekey:
        meta["rekey"] = entry.rekey_backend or True
    return {"operation": "ping", "metadata": _sorted(meta)}


# --- parsing (the KRS) ------------------------------------------------------------------------


def parse_payload(
    data: bytes,
    *,
    now: float,
    expected_distribution_id: str | None = None,
    clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> Payload:
    """Validate the cleartext of a distribution completely, or raise naming the first problem.

    Content errors (``PayloadError``, ``UnsupportedAlgorithmError``, ``KeyMismatchError``) are
    checked for every entry before the window (``PolicyError``): a malformed payload is reported
    as malformed even when it has also expired.
    """
    text = _text(data)
    del data  # the caller may have handed over the only reference (the pipeline does)
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]  # always matches
    if not text.startswith("[", start):
        obj = _load_json(text)
        if isinstance(obj, dict) and "MessageType" in obj:
            return Payload((_parse_agent_ping(obj),))
        raise PayloadError(f"payload: must be a JSON array of operations, got {_kind(obj)}")
    # An array (the KDC's operations): checked as JSON whole first, as json.loads would, then
    # decoded entry by entry, each turned into its operation at once: the decoded JSON of
    # 20,000 keys held at once (dicts and strings) was 50 MB of krs run's peak, and left its
    # memory fragmented for the rest of the apply.
    count = sum(1 for _ in _json_array(text, start))
    if not count:
        raise PayloadError("payload: the array holds no operations")
    shared: dict[object, Any] = {}  # equal zone names, timings, texts: one object each
    announced: list[tuple[int, tuple[JoseKey, ...]]] = []  # (entry, kdc_keys): ours
    entries = tuple(
        _parse_entry(i, e, shared, announced) for i, e in enumerate(_json_array(text, start))
    )
    del text, shared
    if len(announced) > 1:
        raise PayloadError(
            f"entry {announced[1][0]}: metadata '{kdckeys.FIELD}' again (entry "
            f"{announced[0][0]} carries it): a payload carries one set of KDC keys"
        )
    _check_duplicates(entries)
    _check_cds_per_zone(entries)
    for index, entry in enumerate(entries):
        _check_window(
            f"entry {index} ({entry.operation})",
            entry.envelope,
            now,
            expected_distribution_id,
            clock_skew,
        )
    return Payload(entries, announced[0][1] if announced else ())


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise PayloadError(f"payload: key {_show(key)} appears twice in one JSON object")
        obj[key] = value
    return obj


def _no_constants(name: str) -> NoReturn:
    raise PayloadError(f"payload: {name} is not valid JSON")


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as the json module skips it
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def _text(data: bytes | bytearray | memoryview) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"payload: expected bytes, got {type(data).__name__}")
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload: not UTF-8 (byte {exc.start})") from None


@contextlib.contextmanager
def _json_errors() -> Iterator[None]:
    """JSON that does not parse as PayloadError, saying where."""
    try:
        yield
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"payload: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # integer too long, nesting too deep
        raise PayloadError(f"payload: not acceptable JSON: {type(exc).__name__}") from None


def _load_json(text: str) -> Any:
    with _json_errors():
        return _DECODER.decode(text)


def _json_array(text: str, start: int) -> Iterator[Any]:
    """The elements of the JSON array at ``text[start]`` (``[``), decoded one at a time, and
    the text after it checked to be whitespace: the same parser and the same errors (message
    and place) as ``json.loads`` of the whole text, without holding every element at once."""
    with _json_errors():
        end = _WHITESPACE.match(text, start + 1).end()  # type: ignore[union-attr]
        if text.startswith("]", end):
            end += 1
        else:
            while True:
                element, end = _value(text, end)
                yield element
                del element
                end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
                if text.startswith("]", end):
                    end += 1
                    break
                if not text.startswith(",", end):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, end)
                end = _WHITESPACE.match(text, end + 1).end()  # type: ignore[union-attr]
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)


def _value(text: str, at: int) -> tuple[Any, int]:
    """One JSON value at ``text[at]`` (no whitespace before it) and where it ends."""
    try:
        return _DECODER.scan_once(text, at)  # type: ignore[attr-defined, no-any-return]
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None


def _get(
    obj: Mapping[str, Any], name: str, kind: type, where: str, label: str, *, required: bool
) -> Any:
    if name not in obj or (obj[name] is None and not required):
        if required:
            _fail(where, f"{label} is missing")
        return None
    value = obj[name]
    ok = (
        isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, kind)
    )
    if not ok:
        expected = {int: "an integer", str: "a string", bool: "a boolean", dict: "an object"}
        _fail(where, f"{label} must be {expected[kind]}, got {_kind(value)}")
    return value


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    return _get(obj, name, kind, where, f"field {name!r}", required=True)


def _meta(meta: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    return _get(meta, name, kind, where, f"metadata {name!r}", required=False)


def _is_empty(value: object) -> bool:
    """tdns may emit the members an operation does not use as zero values; they carry nothing."""
    if value is None or value == "":
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _parse_entry(
    index: int,
    obj: Any,
    shared: dict[object, Any] | None = None,
    announced: list[tuple[int, tuple[JoseKey, ...]]] | None = None,
) -> Entry:
    """One entry; values equal to one already parsed are that one (``shared``): a payload for
    10,000 zones carries each zone name twice and one timing 20,000 times, and every key is
    held until it is applied."""
    if shared is None:
        shared = {}
    where = f"entry {index}"
    if not isinstance(obj, dict):
        _fail(where, f"must be a JSON object, got {_kind(obj)}")
    operation = _field(obj, "operation", str, where)
    if operation not in OPERATIONS:
        _fail(where, f"field 'operation' {_show(operation)} is not roll_key, delete_key or ping")
    where = f"entry {index} ({operation})"
    for name in obj:
        if name not in ENTRY_FIELDS:
            _fail(where, f"unknown field {_show(name)}")
        if name not in _USED_FIELDS[operation] and not _is_empty(obj[name]):
            _fail(where, f"field {name!r} is not used by {operation} and must be empty")
    meta = _get(obj, "metadata", dict, where, "field 'metadata'", required=False) or {}
    unknown = sorted(k for k in meta if k not in METADATA_FIELDS[operation])
    if unknown:
        _fail(where, f"unknown metadata key {_show(unknown[0])}")
    envelope = _parse_envelope(meta, where)
    if kdckeys.FIELD in meta:
        keys = kdckeys.parse_kdc_keys(meta[kdckeys.FIELD], where)
        if announced is not None:
            announced.append((index, keys))
    if operation == "ping":
        return _parse_ping(meta, envelope, where)
    text = _field(obj, "zone_name", str, where)
    zone = shared.get(("zone_name", text))  # checked already: the same text, the same name
    if zone is None:
        zone = zone_name(text, where)
        zone = shared[("zone_name", text)] = shared.setdefault(zone, zone)
    key_tag = key_tag_text(_field(obj, "key_id", str, where), where)
    if operation == "delete_key":
        reason = _meta(meta, "reason", str, where)
        if reason is not None:
            _check_text(reason, where, "metadata 'reason'")
        _meta(meta, "pending_confirmation", bool, where)
        _check_crypto(meta, where)
        return DeleteKey(zone, key_tag, reason, envelope)
    return _parse_roll_key(obj, meta, zone, key_tag, envelope, where, shared)


def _parse_ping(meta: Mapping[str, Any], envelope: Envelope, where: str) -> Ping:
    if "nonce" not in meta or meta["nonce"] is None:
        _fail(where, "metadata 'nonce' is missing (a ping needs one)")
    nonce = _meta(meta, "nonce", str, where)
    _check_text(nonce, where, "metadata 'nonce'", empty_ok=False)
    timestamp = _meta(meta, "timestamp", str, where)
    if timestamp is not None:
        _check_rfc3339(timestamp, where)
    _check_crypto(meta, where)
    rekey = meta.get("rekey")
    if isinstance(rekey, str):  # a backend to move to (krs rekey --backend)
        if rekey not in BACKENDS:
            _fail(where, f"metadata 'rekey' names backend {rekey!r}, not one of {list(BACKENDS)}")
        return Ping(nonce, timestamp, envelope, rekey=True, rekey_backend=rekey)
    rekey = _meta(meta, "rekey", bool, where)
    return Ping(nonce, timestamp, envelope, rekey=bool(rekey))


def _parse_agent_ping(obj: Mapping[str, Any]) -> Ping:
    """tdns's transport ping, ``{"MessageType":"ping","MyIdentity":...,"nonce":...}``: the one
    message of that family a KRS answers (the golden vector is one). It installs nothing; it is
    confirmed like a ``ping`` entry, so a KDC can test a node's keys end to end."""
    where = "message"
    unknown = sorted(k for k in obj if k not in AGENT_PING_FIELDS)
    if unknown:
        _fail(where, f"unknown field {_show(unknown[0])}")
    kind = _field(obj, "MessageType", str, where)
    if kind != "ping":
        _fail(where, f'MessageType {_show(kind)} is not one a KRS accepts (only "ping")')
    identity = _field(obj, "MyIdentity", str, where)
    zone_name(identity, where, "field 'MyIdentity'")
    nonce = _field(obj, "nonce", str, where)
    _check_text(nonce, where, "field 'nonce'", empty_ok=False)
    return Ping(nonce)


def _check_crypto(meta: Mapping[str, Any], where: str) -> None:
    crypto = _meta(meta, "crypto", str, where)
    if crypto is not None:
        _check_text(crypto, where, "metadata 'crypto'")


def _parse_roll_key(
    obj: Mapping[str, Any],
    meta: Mapping[str, Any],
    zone: dns.name.Name,
    key_tag: int,
    envelope: Envelope,
    where: str,
    shared: dict[object, Any],
) -> RollKey:
    key_type = _field(obj, "key_type", str, where)
    if key_type not in KEY_TYPES:
        _fail(where, f"field 'key_type' {_show(key_type)} is not ZSK, KSK or CSK")
    key_type = KEY_TYPES[KEY_TYPES.index(key_type)]
    algorithm = _field(obj, "algorithm", int, where)
    try:
        get_algorithm(algorithm)
    except UnsupportedAlgorithmError as exc:
        raise UnsupportedAlgorithmError(f"{where}: field 'algorithm': {exc}") from None
    flags = _field(obj, "flags", int, where)
    if flags not in (256, 257):
        _fail(where, f"field 'flags' {flags} is neither 256 (ZSK) nor 257 (KSK/CSK)")
    if flags != FLAGS_FOR_TYPE[key_type]:
        _fail(
            where,
            f"field 'flags' {flags} does not fit key_type {key_type} "
            f"(expected {FLAGS_FOR_TYPE[key_type]})",
        )
    old_tag, retire, timing = _parse_roll_metadata(meta, key_tag, where)
    if timing is not None:
        timing = shared.setdefault(timing, timing)
    cds = _meta(meta, "cds", str, where)
    if cds is not None:
        _check_cds(cds, key_type, where)
    dnskey, ttl = _parse_public_key(obj, zone, algorithm, flags, key_tag, where)
    key = _parse_private_key(obj, zone, algorithm, flags, ttl, where)
    check_key_matches(key, dnskey, key_tag, where=f"{where}: field 'private_key'")
    return RollKey(zone, key_tag, key_type, key, old_tag, retire, timing, envelope, cds)


def _check_cds(cds: str, key_type: str, where: str) -> None:
    if cds not in CDS_STATES:
        _fail(where, f"metadata 'cds' {_show(cds)} is neither 'publish' nor 'delete'")
    if key_type == "ZSK":
        _fail(where, "metadata 'cds' on a ZSK: only a KSK or CSK has a DS at the parent")


def _parse_public_key(
    obj: Mapping[str, Any],
    zone: dns.name.Name,
    algorithm: int,
    flags: int,
    key_tag: int,
    where: str,
) -> tuple[DNSKEY, int]:
    text = _field(obj, "public_key", str, where)
    try:
        owner, ttl, dnskey = parse_dnskey_text(text, where=f"{where}: field 'public_key'")
    except KeyFileError as exc:
        raise PayloadError(str(exc)) from None
    if owner.canonicalize() != zone:
        _fail(where, f"field 'public_key': owner {owner} is not zone_name {zone}")
    if dnskey.protocol != 3:
        _fail(where, f"field 'public_key': DNSKEY protocol {dnskey.protocol} is not 3")
    if dnskey.flags != flags or int(dnskey.algorithm) != algorithm:
        _fail(
            where,
            f"field 'public_key': the DNSKEY has flags {dnskey.flags} algorithm "
            f"{int(dnskey.algorithm)}, the entry says flags {flags} algorithm {algorithm}",
        )
    found = dns.dnssec.key_id(dnskey)
    if found != key_tag:
        raise KeyMismatchError(
            f"{where}: field 'key_id' is {key_tag}, but the DNSKEY in 'public_key' for {zone} "
            f"has key tag {found}"
        )
    return dnskey, ttl


def _parse_private_key(
    obj: Mapping[str, Any],
    zone: dns.name.Name,
    algorithm: int,
    flags: int,
    ttl: int,
    where: str,
) -> DnssecKey:
    text = _field(obj, "private_key", str, where)
    try:
        pem = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        _fail(where, "field 'private_key' is not standard base64")
    try:
        return load_pkcs8_pem(
            pem, zone, algorithm, flags, ttl, where=f"{where}: field 'private_key'"
        )
    except KeyFileError as exc:
        raise PayloadError(str(exc)) from None


def _parse_roll_metadata(
    meta: Mapping[str, Any], key_tag: int, where: str
) -> tuple[int | None, bool, KeyTiming | None]:
    old = _meta(meta, "old_key_id", str, where)
    old_tag = None
    if old:  # tdns: null or "" means no old key
        old_tag = key_tag_text(old, where, "metadata 'old_key_id'")
        if old_tag == key_tag:
            _fail(where, f"metadata 'old_key_id' {old_tag} is the new key's own key_id")
    retire = bool(_meta(meta, "retire_old_key", bool, where))
    raw = _meta(meta, "timing", dict, where)
    if raw is None:
        return old_tag, retire, None
    unknown = sorted(k for k in raw if k not in TIMING_FIELDS)
    if unknown:
        _fail(where, f"metadata 'timing': unknown key {_show(unknown[0])}")
    values = {
        k: None if raw.get(k) is None else _unix_seconds(raw[k], where, f"metadata 'timing.{k}'")
        for k in TIMING_FIELDS
    }
    timing = KeyTiming(**values)
    _check_timing(timing, where)
    return old_tag, retire, timing


def _parse_envelope(meta: Mapping[str, Any], where: str) -> Envelope:
    envelope = Envelope(
        _meta(meta, "distribution_id", str, where),
        meta.get("issued_at"),
        meta.get("expires_at"),
    )
    _check_envelope(envelope, where)
    return envelope


def _check_duplicates(entries: Sequence[Entry]) -> None:
    """The same (zone, key tag) twice is fine when identical (tdns: idempotent), else refused."""
    seen: dict[tuple[dns.name.Name, int], tuple[int, RollKey]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, RollKey):
            continue
        first = seen.setdefault((entry.zone, entry.key_tag), (index, entry))
        other = first[1]
        if other is not entry and (
            other.key.dnskey != entry.key.dnskey
            or other.key_type != entry.key_type
            or other.key.ttl != entry.key.ttl
        ):
            raise PayloadError(
                f"entry {index} (roll_key): key {entry.key_tag} of {entry.zone} is also entry "
                f"{first[0]}, with different key material or type"
            )


def _check_cds_per_zone(entries: Sequence[Entry]) -> None:
    """A zone serves either its KSKs' CDS/CDNSKEY or the delete records, never both."""
    asked: dict[dns.name.Name, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, RollKey) or entry.cds is None:
            continue
        first = asked.setdefault(entry.zone, (index, entry.cds))
        if first[1] != entry.cds:
            raise PayloadError(
                f"entry {index} (roll_key): metadata 'cds' {entry.cds!r} for {entry.zone}, but "
                f"entry {first[0]} says {first[1]!r}: a zone publishes its KSKs' CDS or the "
                "delete CDS, not both"
            )


def _check_window(
    where: str, envelope: Envelope, now: float, expected: str | None, skew: int
) -> None:
    got = envelope.distribution_id
    if expected is not None and got is not None and got != expected:
        raise PolicyError(
            f"{where}: metadata 'distribution_id' is {got}, but the entry arrived in "
            f"distribution {expected}"
        )
    if envelope.issued_at is not None and envelope.issued_at > now + skew:
        raise PolicyError(
            f"{where}: not yet valid: metadata 'issued_at' {envelope.issued_at} is "
            f"{envelope.issued_at - now:.0f} s in the future (allowed clock skew {skew} s)"
        )
    if envelope.expires_at is not None and now > envelope.expires_at:
        raise PolicyError(
            f"{where}: expired: metadata 'expires_at' {envelope.expires_at} passed "
            f"{now - envelope.expires_at:.0f} s ago"
        )


__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "ENTRY_FIELDS",
    "KEY_TYPES",
    "METADATA_FIELDS",
    "DeleteKey",
    "Entry",
    "Envelope",
    "KeyType",
    "Payload",
    "Ping",
    "RollKey",
    "delete_key_entry",
    "encode_payload",
    "key_tag_text",
    "parse_payload",
    "ping_entry",
    "roll_key_entry",
    "zone_name",
]
