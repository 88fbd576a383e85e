"""The node-key rotation UPDATE (ours; docs/protocol.md section 10): a node replaces its
long-term keys without enrolling again.

The node sends its new public keys (the backend key distributions are sealed to, its
confirmation signing key, its SIG(0) key) in a DNS UPDATE for the control zone, one CHUNK at
``_rekey.<cz>`` whose data is the JSON body below, signed with SIG(0) by the node's CURRENT
SIG(0) key (signer name = node id). The body is itself signed by the NEW confirmation signing
key (``signature``, the serialization of a confirmation), so the KDC records only keys whose
holder asked for them. One implementation for both sides: the KRS builds and signs here, the KDC
(``kdc/noderekey.py``) parses and checks here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.update
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from krs_plugin.confirmation import key_ref, sign_report, verify_signed
from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey
from krs_plugin.errors import KrsError, PolicyError
from krs_plugin.protocol import sig0
from krs_plugin.protocol.chunk import CHUNK, CHUNK_TYPE, FORMAT_JSON, make_chunk

REKEY_LABEL = b"_rekey"
REKEY_TTL = 0
MAX_BODY = 8192  # bytes of JSON: three public keys and a JWS are about 2 KB
BACKEND_FIELDS = {"hpke": "hpke_pubkey", "jose": "jose_pubkey", "hpke-pq": "hpke_pq_pubkey"}
"""The member of the body that carries each backend's public key, named as the enrollment request
names it (and as the KDC's ``nodes`` column). A new backend adds its entry here and in
``NewPublicKeys.backend_key``; nothing else of the wire changes."""


def rekey_name(control_zone: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((REKEY_LABEL, *control_zone.labels))


@dataclass(frozen=True)
class NewPublicKeys:
    """The public halves a node rotates to, as the KDC stores them (``nodes`` columns)."""

    backend: str
    backend_pubkey: str  # hpke: 64 hex; jose: the JWK JSON text; hpke-pq: 2432 hex
    signing_pubkey: str  # the JWK JSON text
    sig0_pubkey: str  # the KEY RR text, owner = node id

    def backend_key(self, where: str) -> HpkeKey | JoseKey | HybridKey:
        """The backend key, parsed (KrsError naming ``where`` when malformed)."""
        if self.backend == "hpke":
            return HpkeKey.from_public_hex(self.backend_pubkey, where)
        if self.backend == "hpke-pq":
            return HybridKey.from_public_hex(self.backend_pubkey, where)
        if self.backend == "jose":
            return JoseKey.from_jwk_text(self.backend_pubkey, where)
        raise PolicyError(f"{where}: backend {self.backend!r} is not one this KDC seals with")

    def signing_key(self, where: str) -> JoseKey:
        return JoseKey.from_jwk_text(self.signing_pubkey, where)


def key_identity(kind: str, text: str) -> str:
    """The short public identity of a node key, the same on both sides so an operator can compare
    ``krs status`` with ``krs-kdc node show``: the X25519 key's first 16 hex digits (hpke), the
    first 16 hex digits of the SHA-256 of the hybrid key (hpke-pq), the RFC 7638 thumbprint (jose
    and signing keys), ``KEY <algorithm>/<key tag>`` (SIG(0))."""
    try:
        if kind == "hpke":
            return HpkeKey.from_public_hex(text).fingerprint
        if kind == "hpke-pq":
            return HybridKey.from_public_hex(text).fingerprint
        if kind in ("jose", "signing"):
            return JoseKey.from_jwk_text(text, kind).thumbprint
        if kind == "sig0":
            key = sig0.parse_key_text(text)
            return f"KEY {key.algorithm}/{key.key_tag}"
    except KrsError as exc:
        return f"unreadable ({exc})"
    return "unknown kind of key"


def public_keys(
    node_id: str,
    backend: str,
    backend_key: HpkeKey | JoseKey | HybridKey,
    signing: JoseKey,
    sig0_key: Ed25519PrivateKey,
) -> NewPublicKeys:
    """The public halves of freshly made private keys."""
    if isinstance(backend_key, HpkeKey | HybridKey):
        text = backend_key.public_hex
    else:
        text = json.dumps(backend_key.public_jwk, sort_keys=True)
    return NewPublicKeys(
        backend,
        text,
        json.dumps(signing.public_jwk, sort_keys=True),
        sig0.key_text(sig0_key, dns.name.from_text(node_id)),
    )


def request_body(
    node_id: str, keys: NewPublicKeys, new_signing: JoseKey, *, now: float | None = None
) -> dict[str, object]:
    """The signed JSON body: ``node_id``, ``time``, ``backend``, the backend key under its field,
    ``signing_pubkey``, ``sig0_pubkey``, ``signature`` (by the NEW signing key)."""
    body: dict[str, object] = {
        "node_id": node_id,
        "time": int(time.time() if now is None else now),
        "backend": keys.backend,
        BACKEND_FIELDS[keys.backend]: keys.backend_pubkey,
        "signing_pubkey": keys.signing_pubkey,
        "sig0_pubkey": keys.sig0_pubkey,
    }
    return sign_report(body, new_signing)


def build_update(
    control_zone: dns.name.Name,
    node_id: str,
    body: Mapping[str, object],
    current_sig0: Ed25519PrivateKey,
    *,
    now: float | None = None,
) -> bytes:
    """The UPDATE's wire form, signed with SIG(0) by the node's current key (signer: node id)."""
    update = dns.update.UpdateMessage(control_zone)
    data = json.dumps(body, separators=(",", ":")).encode()
    update.add(
        rekey_name(control_zone), REKEY_TTL, make_chunk(0, 0, data, chunk_format=FORMAT_JSON)
    )
    update.use_edns(0, dns.flags.DO, 1232)
    wire = update.to_wire(max_size=0xFFFF)
    return sig0.sign(
        wire,
        current_sig0,
        dns.name.from_text(node_id),
        now=int(time.time() if now is None else now),
    )


def is_rekey(message: dns.message.Message, control_zone: dns.name.Name) -> bool:
    """An UPDATE whose records name ``_rekey.<cz>`` (everything else is an enrollment)."""
    update = getattr(message, "update", None) or []
    return any(rrset.name == rekey_name(control_zone) for rrset in update)


def read_body(message: dns.message.Message, control_zone: dns.name.Name) -> dict[str, object]:
    """The JSON body of a rekey UPDATE; PolicyError naming what is wrong with its form."""
    if not isinstance(message, dns.update.UpdateMessage):
        raise PolicyError("not a DNS UPDATE")
    zone = message.zone
    if len(zone) != 1 or zone[0].name != control_zone or zone[0].rdtype != dns.rdatatype.SOA:
        raise PolicyError(f"the UPDATE's zone section must be {control_zone} SOA")
    records = message.update
    if len(records) != 1 or len(records[0]) != 1 or records[0].rdtype != CHUNK_TYPE:
        raise PolicyError(f"the UPDATE must carry exactly one CHUNK at {rekey_name(control_zone)}")
    chunk = records[0][0]
    assert isinstance(chunk, CHUNK)
    if chunk.sequence != 0 or chunk.total != 0 or chunk.hmac:
        raise PolicyError("the rekey CHUNK must have sequence 0, total 0 and no HMAC")
    data = bytes(chunk.data)
    if len(data) > MAX_BODY:
        raise PolicyError(f"the rekey body is {len(data)} bytes, more than {MAX_BODY}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise PolicyError(f"the rekey body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise PolicyError("the rekey body is not a JSON object")
    return body


def requesting_node(body: Mapping[str, object]) -> str:
    node = body.get("node_id")
    if not isinstance(node, str) or not node.strip():
        raise PolicyError("the rekey request does not name its node (no node_id)")
    return key_ref(node[:255], "")[0]


def check_body(
    body: Mapping[str, object], node_id: str, *, now: float, clock_skew: float
) -> NewPublicKeys:
    """The new keys, once the body is well formed, fresh and signed by the new signing key it
    carries (proof that the node holds it); PolicyError or SignatureError otherwise."""
    stamp = body.get("time")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise PolicyError("the rekey request carries no time (Unix seconds)")
    if abs(stamp - now) > clock_skew:
        raise PolicyError(
            f"the rekey request's time is {stamp - now:+.0f} s from the KDC's clock "
            f"(allowed clock skew {clock_skew:.0f} s)"
        )
    backend = body.get("backend")
    if not isinstance(backend, str) or backend not in BACKEND_FIELDS:
        raise PolicyError(
            f"the rekey request's backend {backend!r} is not one of {sorted(BACKEND_FIELDS)}"
        )
    texts = {}
    for name in (BACKEND_FIELDS[backend], "signing_pubkey", "sig0_pubkey"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise PolicyError(f"the rekey request has no {name}")
        texts[name] = value
    keys = NewPublicKeys(
        backend, texts[BACKEND_FIELDS[backend]], texts["signing_pubkey"], texts["sig0_pubkey"]
    )
    try:
        keys.backend_key(f"rekey {BACKEND_FIELDS[backend]}")
        signing = keys.signing_key("rekey signing_pubkey")
        key = sig0.parse_key_text(keys.sig0_pubkey)
    except KrsError as exc:
        raise PolicyError(str(exc)) from exc
    if key.owner != dns.name.from_text(node_id):
        raise PolicyError(f"the new SIG(0) KEY is for {key.owner}, not for node {node_id}")
    verify_signed(
        body,
        signing,
        where="rekey request signature",
        unsigned="the rekey request is not signed by its new signing key",
        changed="the rekey request's signature covers a different body",
    )
    return keys


__all__ = [
    "BACKEND_FIELDS",
    "NewPublicKeys",
    "build_update",
    "check_body",
    "is_rekey",
    "key_identity",
    "public_keys",
    "read_body",
    "rekey_name",
    "request_body",
    "requesting_node",
]
