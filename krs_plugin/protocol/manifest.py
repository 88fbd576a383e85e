"""The manifest (CHUNK sequence 0): JSON describing a distribution, with an HMAC-SHA256.

JSON (Format 1): ``{"chunk_count":N,"chunk_size":S,"metadata":{...},"payload":"..."}``.
``chunk_size`` is omitted when 0; ``payload`` appears only when the transport string is inline, and
then it is the standard base64 of it. The HMAC covers the Format byte and the JSON bytes as carried,
keyed with the recipient's raw public key: an integrity check that anyone can compute, not
authentication (the JWS signature is that).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as hmac_lib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from krs_plugin.errors import IntegrityError, LimitError, PolicyError, WireError
from krs_plugin.protocol.chunk import CHUNK, CHUNK_TYPE, FORMAT_JSON, make_chunk
from krs_plugin.protocol.durations import format_go_duration, parse_go_duration
from krs_plugin.protocol.names import check_distribution_id

HMAC_KEY_LENGTH = 32
DEFAULT_DISTRIBUTION_TTL = 300
DEFAULT_CLOCK_SKEW = 30
# "hpke-pq" is ours (docs/protocol.md section 4, hpke-pq); a tdns peer never sees it.
Backend = Literal["hpke", "jose", "hpke-pq"]
BACKENDS: tuple[Backend, ...] = ("hpke", "jose", "hpke-pq")
CONTENT_TYPES = ("key_operations", "mgmt_operations", "mixed_operations", "node_operations")
_COUNT_KEYS = ("zone_count", "key_count", "operation_count", "component_count")


@dataclass(frozen=True)
class ManifestMetadata:
    """The ``metadata`` object; unknown keys are kept in ``extra`` and otherwise ignored."""

    distribution_id: str
    content: str = "key_operations"
    receiver_id: str | None = None
    timestamp: int | None = None
    distribution_ttl: float = DEFAULT_DISTRIBUTION_TTL
    retire_time: float | None = None
    crypto: Backend = "hpke"
    counts: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json_object(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(self.counts)
        out["content"] = self.content
        out["crypto"] = self.crypto
        out["distribution_id"] = self.distribution_id
        out["distribution_ttl"] = format_go_duration(int(self.distribution_ttl))
        if self.receiver_id is not None:
            out["receiver_id"] = self.receiver_id
        if self.retire_time is not None:
            out["retire_time"] = format_go_duration(int(self.retire_time))
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        return dict(sorted(out.items()))  # Go sorts map keys


@dataclass(frozen=True)
class Manifest:
    """A decoded manifest. ``payload`` is the inline transport string, if any."""

    chunk_count: int
    metadata: ManifestMetadata
    chunk_size: int = 0
    payload: bytes | None = None

    @property
    def is_inline(self) -> bool:
        return self.chunk_count == 0


def encode_manifest(manifest: Manifest) -> bytes:
    """JSON bytes in tdns's field order, compact as Go's encoder writes them."""
    obj: dict[str, Any] = {"chunk_count": manifest.chunk_count}
    if manifest.chunk_size:
        obj["chunk_size"] = manifest.chunk_size
    obj["metadata"] = manifest.metadata.to_json_object()
    if manifest.payload is not None:
        obj["payload"] = base64.b64encode(manifest.payload).decode()
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_manifest(data: bytes, *, max_payload_bytes: int | None = None) -> Manifest:
    """Parse manifest JSON strictly enough that later stages can trust the types."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise WireError(f"manifest must be a JSON object, got {type(obj).__name__}")
    chunk_count = _uint16(obj, "chunk_count", required=True)
    chunk_size = _uint16(obj, "chunk_size", required=False)
    meta_obj = obj.get("metadata")
    if not isinstance(meta_obj, dict):
        raise WireError("manifest field 'metadata' must be a JSON object")
    metadata = _decode_metadata(meta_obj)
    payload = _decode_inline_payload(obj.get("payload"), max_payload_bytes)
    if chunk_count == 0 and payload is None:
        raise WireError("manifest has chunk_count 0 but no inline payload")
    if chunk_count > 0 and payload is not None:
        raise WireError(f"manifest has both an inline payload and chunk_count {chunk_count}")
    return Manifest(chunk_count, metadata, chunk_size, payload)


def manifest_hmac(key: bytes, chunk_format: int, data: bytes) -> bytes:
    """HMAC-SHA256(key, Format byte || JSON bytes) with the recipient's raw 32-byte public key."""
    if len(key) != HMAC_KEY_LENGTH:
        raise ValueError(f"manifest HMAC key must be {HMAC_KEY_LENGTH} bytes, got {len(key)}")
    return hmac_lib.new(key, bytes([chunk_format]) + data, hashlib.sha256).digest()


def build_manifest_record(
    manifest: Manifest, hmac_key: bytes, *, rdtype: int = CHUNK_TYPE
) -> CHUNK:
    """The sequence-0 CHUNK for ``manifest``, with its HMAC."""
    data = encode_manifest(manifest)
    mac = manifest_hmac(hmac_key, FORMAT_JSON, data)
    return make_chunk(0, manifest.chunk_count, data, hmac=mac, rdtype=rdtype)


def read_manifest_record(
    rdata: CHUNK, hmac_key: bytes, *, where: str = "manifest", max_payload_bytes: int | None = None
) -> Manifest:
    """Check the HMAC of a sequence-0 CHUNK, then decode it. ``where`` names it in errors."""
    if rdata.sequence != 0:
        raise WireError(f"{where}: expected sequence 0 (manifest), got {rdata.sequence}")
    if rdata.format != FORMAT_JSON:
        raise WireError(f"{where}: manifest format {rdata.format} is not supported (only 1, JSON)")
    if len(rdata.hmac) != HMAC_KEY_LENGTH:
        raise IntegrityError(
            f"{where}: manifest HMAC is {len(rdata.hmac)} bytes, expected {HMAC_KEY_LENGTH}"
        )
    expected = manifest_hmac(hmac_key, rdata.format, rdata.data)
    if not hmac_lib.compare_digest(expected, rdata.hmac):
        raise IntegrityError(
            f"{where}: manifest HMAC mismatch (altered in transit, or made for another node's key)"
        )
    manifest = decode_manifest(rdata.data, max_payload_bytes=max_payload_bytes)
    if manifest.chunk_count != rdata.total:
        raise IntegrityError(
            f"{where}: chunk_count {manifest.chunk_count} differs from the record's total "
            f"{rdata.total}"
        )
    return manifest


def check_freshness(
    manifest: Manifest,
    *,
    now: float,
    expected_distribution_id: str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    where: str = "manifest",
) -> None:
    """tdns's freshness rule plus ours: a skew allowance and the id must match the query name."""
    meta = manifest.metadata
    if expected_distribution_id is not None and meta.distribution_id != expected_distribution_id:
        raise IntegrityError(
            f"{where}: manifest is for distribution {meta.distribution_id}, "
            f"expected {expected_distribution_id}"
        )
    if meta.timestamp is None:
        raise IntegrityError(f"{where}: manifest has no timestamp, so its freshness is unknown")
    age = now - meta.timestamp
    if age < -clock_skew:
        raise PolicyError(
            f"{where}: manifest timestamp {meta.timestamp} is {-age:.0f}s in the future "
            f"(allowed clock skew {clock_skew:.0f}s)"
        )
    if age > meta.distribution_ttl + clock_skew:
        raise PolicyError(
            f"{where}: stale manifest, prepared {age:.0f}s ago, distribution_ttl is "
            f"{meta.distribution_ttl:.0f}s"
        )


def _uint16(obj: Mapping[str, Any], key: str, *, required: bool) -> int:
    value = obj.get(key)
    if value is None:
        if required:
            raise WireError(f"manifest field {key!r} is missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise WireError(f"manifest field {key!r} must be an integer 0..65535, got {value!r}")
    return value


def _decode_metadata(obj: Mapping[str, Any]) -> ManifestMetadata:
    dist_id = obj.get("distribution_id")
    if not isinstance(dist_id, str):
        raise WireError("manifest metadata 'distribution_id' is missing or not a string")
    content = obj.get("content", "key_operations")
    if content not in CONTENT_TYPES:
        raise WireError(f"manifest metadata 'content' {content!r} is not one of {CONTENT_TYPES}")
    crypto = obj.get("crypto", "hpke")
    if crypto not in BACKENDS:
        raise WireError(f"manifest metadata 'crypto' {crypto!r} is not one of {BACKENDS}")
    receiver = obj.get("receiver_id", obj.get("node_id"))
    if receiver is not None and not isinstance(receiver, str):
        raise WireError("manifest metadata 'receiver_id' must be a string")
    timestamp = obj.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
        raise WireError(f"manifest metadata 'timestamp' must be Unix seconds, got {timestamp!r}")
    ttl = _duration(obj, "distribution_ttl")
    retire = _duration(obj, "retire_time")
    counts: dict[str, int] = {}
    for key in _COUNT_KEYS:
        if key in obj:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise WireError(f"manifest metadata {key!r} must be a count, got {value!r}")
            counts[key] = value
    known = {"distribution_id", "content", "crypto", "receiver_id", "node_id", "timestamp"}
    known |= {"distribution_ttl", "retire_time", *_COUNT_KEYS}
    return ManifestMetadata(
        distribution_id=check_distribution_id(dist_id),
        content=content,
        receiver_id=receiver,
        timestamp=timestamp,
        distribution_ttl=DEFAULT_DISTRIBUTION_TTL if ttl is None else ttl,
        retire_time=retire,
        crypto=cast(Backend, crypto),
        counts=counts,
        extra={k: v for k, v in obj.items() if k not in known},
    )


def _duration(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError(f"manifest metadata {key!r} must be a Go duration string, got {value!r}")
    try:
        return parse_go_duration(value)
    except WireError as exc:
        raise WireError(f"manifest metadata {key!r}: {exc}") from exc


def _decode_inline_payload(value: Any, max_payload_bytes: int | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError("manifest field 'payload' must be a base64 string")
    if max_payload_bytes is not None and len(value) * 3 // 4 > max_payload_bytes:
        raise LimitError(
            f"manifest inline payload of about {len(value) * 3 // 4} bytes exceeds the limit "
            f"of {max_payload_bytes}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"manifest inline payload is not standard base64: {exc}") from exc
