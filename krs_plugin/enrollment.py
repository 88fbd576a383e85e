"""Enrollment (docs/protocol.md section 7, the tdns-nm wire): the bootstrap package, the request the
node seals to the KDC, the DNS UPDATE that carries it, and the KDC's sealed confirmation.

One implementation for both sides: the KDC (``kdc/enroll.py``) and the KRS
(``receiver/enroll.py``) build and read every message here.

What is ours on top of tdns (a tdns peer ignores it, JSON fields it does not know):

- the package also carries the KDC's signing key (``kdc_signing_pubkey``, a JWK, so the node
  need not be given it by hand), ``valid_until``, the ``backend`` and the ``zones``;
- the ``hpke-pq`` backend (docs/enrollment.md, "The hybrid backend"): the package gives the KDC's
  X25519 key (the request is sealed with classic HPKE, as for ``hpke``), the request carries the
  node's ML-KEM-768 + X25519 key in ``hpke_pq_pubkey``, and the confirmation is sealed to that key
  (hybrid HPKE, base mode: the hybrid KEM has no auth mode);
- the request also carries the node's confirmation signing key (``signing_pubkey``) and
  ``package_digest``, the SHA-256 of the package as issued, so the KDC refuses a package that
  was altered on its way to the node;
- the KDC verifies the request's SIG(0) with the KEY the request carries.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, hybrid
from krs_plugin.crypto.hpke import open_sealed, seal
from krs_plugin.crypto.jose import jwe_decrypt, jwe_encrypt
from krs_plugin.crypto.pqsig import MldsaKey, mldsa_public_from_text
from krs_plugin.errors import EnrollmentError, KrsError
from krs_plugin.protocol.chunk import CHUNK, CHUNK_TYPE, FORMAT_JSON, make_chunk
from krs_plugin.protocol.edns import CONTENT_ENROLLMENT, ChunkOption, find_chunk_option

ENROLL_LABEL = b"_enroll"
ENROLL_TTL = 300
DEFAULT_WINDOW = 300  # seconds a request's timestamp may differ from the KDC's clock (tdns: 5 m)
TOKEN_BYTES = 32
BACKENDS = ("hpke", "jose", "hpke-pq")
_PACKAGE_TDNS = (
    "token",
    "node_id",
    "kdc_hpke_pubkey",
    "kdc_jose_pubkey",
    "kdc_enrollment_address",
    "control_zone",
)


def new_token() -> str:
    """256 random bits, URL-safe: the one secret of a package."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the KDC keeps of a token: enough to recognise it, useless to someone who reads it."""
    return hashlib.sha256(token.encode()).hexdigest()


def rfc3339(when: float) -> str:
    return datetime.fromtimestamp(int(when), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: object, what: str) -> float:
    if not isinstance(text, str):
        raise EnrollmentError(f"{what}: expected an RFC 3339 time, found {text!r}")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise EnrollmentError(f"{what}: {text!r} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise EnrollmentError(f"{what}: {text!r} has no time zone")
    return parsed.timestamp()


def enroll_name(control_zone: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((ENROLL_LABEL, *control_zone.labels))


# --- the bootstrap package --------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapPackage:
    """``<node>.enroll``: everything a node needs to enrol, and one secret, the token."""

    token: str = field(repr=False)
    node_id: str
    kdc_hpke_pubkey: str  # hex, "" for a jose node
    kdc_jose_pubkey: str  # base64 of the JWK JSON (as tdns writes it), "" for an hpke node
    kdc_enrollment_address: str  # host:port of krs-kdc serve
    control_zone: str
    kdc_signing_pubkey: Mapping[str, str] | None = None  # ours: the JWS verification key
    valid_until: str = ""  # ours, RFC 3339
    backend: str = ""  # ours
    zones: tuple[str, ...] = ()  # ours
    kdc_pq_pubkey: str = ""  # ours: the KDC's ML-DSA-65 public key, hex (docs/security.md)

    def fields(self) -> dict[str, Any]:
        data = asdict(self)
        data["zones"] = list(self.zones)
        data["kdc_signing_pubkey"] = dict(self.kdc_signing_pubkey or {}) or None
        return {k: v for k, v in data.items() if v not in (None, "", [])}

    def digest(self) -> str:
        """SHA-256 of the package as issued (canonical JSON): the KDC compares it at enrollment."""
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_text(self) -> str:
        body = json.dumps(self.fields(), sort_keys=True).encode()
        return (
            f"# krs-plugin enrollment package for {self.node_id}\n"
            f"# single use, valid until {self.valid_until or '(no limit given)'}; it holds a "
            "secret token: keep it 0600 and hand it over privately\n"
            f"# use: krs enroll {self.node_id.rstrip('.')}.enroll\n"
            + base64.b64encode(body).decode()
            + "\n"
        )

    @classmethod
    def parse(cls, text: str, where: str = "enrollment package") -> BootstrapPackage:
        """Read a package (ours or tdns's); anything malformed or missing is refused by name."""
        body = "".join(
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
        try:
            data = json.loads(base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError, RecursionError) as exc:
            raise EnrollmentError(f"{where}: not a base64 JSON package (altered?): {exc}") from exc
        if not isinstance(data, dict):
            raise EnrollmentError(f"{where}: the package is not a JSON object")
        for name in ("token", "node_id", "kdc_enrollment_address", "control_zone"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise EnrollmentError(f"{where}: {name} missing or empty")
        for name in (
            "kdc_hpke_pubkey",
            "kdc_jose_pubkey",
            "valid_until",
            "backend",
            "kdc_pq_pubkey",
        ):
            if not isinstance(data.get(name, ""), str):
                raise EnrollmentError(f"{where}: {name} must be a string")
        if not data.get("kdc_hpke_pubkey") and not data.get("kdc_jose_pubkey"):
            raise EnrollmentError(f"{where}: the package names no KDC key (hpke or jose)")
        backend = data.get("backend", "")
        if backend and backend not in BACKENDS:
            raise EnrollmentError(
                f"{where}: backend {backend!r} is not one of {BACKENDS} (a newer KDC's package?)"
            )
        if backend == "hpke-pq" and not data.get("kdc_hpke_pubkey"):
            raise EnrollmentError(
                f"{where}: an hpke-pq package needs kdc_hpke_pubkey (the request is sealed to it)"
            )
        zones = data.get("zones", [])
        if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
            raise EnrollmentError(f"{where}: zones must be a list of names")
        signing = data.get("kdc_signing_pubkey")
        if signing is not None and not isinstance(signing, dict):
            raise EnrollmentError(f"{where}: kdc_signing_pubkey must be a JWK object")
        package = cls(
            token=data["token"],
            node_id=data["node_id"],
            kdc_hpke_pubkey=data.get("kdc_hpke_pubkey", ""),
            kdc_jose_pubkey=data.get("kdc_jose_pubkey", ""),
            kdc_enrollment_address=data["kdc_enrollment_address"],
            control_zone=data["control_zone"],
            kdc_signing_pubkey=signing,
            valid_until=data.get("valid_until", ""),
            backend=data.get("backend", ""),
            zones=tuple(zones),
            kdc_pq_pubkey=data.get("kdc_pq_pubkey", ""),
        )
        package.kdc_hpke_key()  # malformed keys are refused now, not at the first use
        package.kdc_jose_key()
        package.kdc_signing_key()
        package.kdc_pq_key()
        if package.valid_until:
            parse_rfc3339(package.valid_until, f"{where}: valid_until")
        return package

    def expires_at(self) -> float | None:
        return parse_rfc3339(self.valid_until, "valid_until") if self.valid_until else None

    def kdc_hpke_key(self) -> HpkeKey | None:
        return _hpke_hex(self.kdc_hpke_pubkey, "package kdc_hpke_pubkey")

    def kdc_jose_key(self) -> JoseKey | None:
        if not self.kdc_jose_pubkey:
            return None
        try:
            jwk = json.loads(base64.b64decode(self.kdc_jose_pubkey, validate=True))
            return JoseKey.from_jwk(jwk, "package kdc_jose_pubkey")
        except (binascii.Error, ValueError, RecursionError, KrsError) as exc:
            raise EnrollmentError(f"package kdc_jose_pubkey: not a base64 JWK: {exc}") from exc

    def kdc_signing_key(self) -> JoseKey | None:
        if not self.kdc_signing_pubkey:
            return None
        try:
            return JoseKey.from_jwk(self.kdc_signing_pubkey, "package kdc_signing_pubkey")
        except KrsError as exc:
            raise EnrollmentError(str(exc)) from exc

    def kdc_pq_key(self) -> MldsaKey | None:
        """The KDC's ML-DSA-65 key, when it has one: the node then requires its signature
        (``kdc.pq_verification_key``; docs/security.md, "The KDC's signature, post-quantum")."""
        if not self.kdc_pq_pubkey:
            return None
        try:
            return mldsa_public_from_text(self.kdc_pq_pubkey, "package kdc_pq_pubkey")
        except KrsError as exc:
            raise EnrollmentError(str(exc)) from exc


def encode_jose_pubkey(key: JoseKey) -> str:
    """The package's ``kdc_jose_pubkey``: base64 of the JWK JSON, as tdns writes it."""
    return base64.b64encode(json.dumps(key.public_jwk, sort_keys=True).encode()).decode()


# --- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentRequest:
    auth_token: str = field(repr=False)
    notify_address: str
    sig0_pubkey: str  # the KEY RR, text
    timestamp: str  # RFC 3339
    hpke_pubkey: str = ""  # hex
    jose_pubkey: str = ""  # the JWK JSON text
    signing_pubkey: str = ""  # ours: the JWK JSON text of the key that signs confirmations
    package_digest: str = ""  # ours
    hpke_pq_pubkey: str = ""  # ours: hex, the hpke-pq backend's ML-KEM-768 + X25519 key

    def to_json(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EnrollmentRequest:
        obj = _json_object(data, "enrollment request")
        values = {}
        for name in cls.__dataclass_fields__:
            value = obj.get(name, "")
            if not isinstance(value, str):
                raise EnrollmentError(f"enrollment request: {name} must be a string")
            values[name] = value
        for name in ("auth_token", "notify_address", "sig0_pubkey", "timestamp"):
            if not values[name]:
                raise EnrollmentError(f"enrollment request: {name} missing")
        if not (values["hpke_pubkey"] or values["jose_pubkey"] or values["hpke_pq_pubkey"]):
            raise EnrollmentError(
                "enrollment request: neither hpke_pubkey nor jose_pubkey nor hpke_pq_pubkey"
            )
        return cls(**values)

    def hpke_key(self) -> HpkeKey | None:
        return _hpke_hex(self.hpke_pubkey, "request hpke_pubkey")

    def jose_key(self) -> JoseKey | None:
        return _jwk_text(self.jose_pubkey, "request jose_pubkey")

    def hybrid_key(self) -> HybridKey | None:
        if not self.hpke_pq_pubkey:
            return None
        try:
            return HybridKey.from_public_hex(self.hpke_pq_pubkey, "request hpke_pq_pubkey")
        except KrsError as exc:
            raise EnrollmentError(str(exc)) from exc

    def signing_key(self) -> JoseKey | None:
        return _jwk_text(self.signing_pubkey, "request signing_pubkey")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise EnrollmentError(f"{what}: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise EnrollmentError(f"{what}: not a JSON object")
    return obj


def _hpke_hex(text: str, where: str) -> HpkeKey | None:
    if not text:
        return None
    try:
        return HpkeKey.from_public_hex(text, where)
    except KrsError as exc:
        raise EnrollmentError(str(exc)) from exc


def _jwk_text(text: str, where: str) -> JoseKey | None:
    if not text:
        return None
    try:
        return JoseKey.from_jwk_text(text, where)
    except KrsError as exc:
        raise EnrollmentError(f"{where}: not a P-256 JWK: {exc}") from exc


def seal_request(request: EnrollmentRequest, package: BootstrapPackage) -> bytes:
    """To the KDC: HPKE base mode when the package has its X25519 key (as tdns prefers), else
    a compact JWE to its P-256 key."""
    hpke = package.kdc_hpke_key()
    if hpke is not None:
        return seal(request.to_json(), hpke)
    jose = package.kdc_jose_key()
    assert jose is not None  # parse() refuses a package without either
    return jwe_encrypt(request.to_json(), jose).encode()


def open_request(sealed: bytes, hpke: HpkeKey, jose: JoseKey) -> tuple[EnrollmentRequest, str]:
    """The KDC opens a request (a compact JWE, else HPKE, as tdns tries both); returns it and
    the backend. An HPKE ciphertext that merely looks like a JWE is still tried as HPKE."""
    jwe_error: KrsError | None = None
    if sealed[:2] == b"ey" and sealed.count(b".") == 4:
        try:
            plain, _ = jwe_decrypt(sealed, jose, where="enrollment request")
            return EnrollmentRequest.from_json(plain), "jose"
        except KrsError as exc:  # not ours, altered, or an algorithm we do not take
            jwe_error = exc
    try:
        plain = open_sealed(sealed, hpke, where="enrollment request")
    except KrsError as exc:
        if jwe_error is not None:
            raise EnrollmentError(
                f"enrollment request not sealed to this KDC's JOSE key {jose.thumbprint}: "
                f"{jwe_error}"
            ) from jwe_error
        raise EnrollmentError(
            f"enrollment request not sealed to this KDC's X25519 key {hpke.fingerprint}"
        ) from exc
    return EnrollmentRequest.from_json(plain), "hpke"


# --- the UPDATE -------------------------------------------------------------------------------


def build_update(control_zone: dns.name.Name, sealed: bytes) -> dns.update.UpdateMessage:
    """Zone ``<cz> SOA``, one ``_enroll.<cz> 300 IN CHUNK`` (sequence 0, total 0, no HMAC)."""
    update = dns.update.UpdateMessage(control_zone)
    chunk = make_chunk(0, 0, sealed, chunk_format=FORMAT_JSON)
    update.add(enroll_name(control_zone), ENROLL_TTL, chunk)
    update.use_edns(0, dns.flags.DO, 1232)
    return update


def request_chunk(update: dns.message.Message, control_zone: dns.name.Name) -> bytes:
    """The sealed request from an enrollment UPDATE; EnrollmentError (FORMERR) when the UPDATE
    is not one, naming what is wrong."""
    if not isinstance(update, dns.update.UpdateMessage):
        raise EnrollmentError("not a DNS UPDATE")
    zone = update.zone
    if len(zone) != 1 or zone[0].name != control_zone or zone[0].rdtype != dns.rdatatype.SOA:
        raise EnrollmentError(f"the UPDATE's zone section must be {control_zone} SOA")
    records = update.update
    if len(records) != 1 or len(records[0]) != 1:
        raise EnrollmentError("the UPDATE must carry exactly one record")
    rrset = records[0]
    if rrset.rdtype != CHUNK_TYPE or rrset.name != enroll_name(control_zone):
        raise EnrollmentError(f"the UPDATE's record must be CHUNK at {enroll_name(control_zone)}")
    chunk = rrset[0]
    assert isinstance(chunk, CHUNK)
    if chunk.sequence != 0 or chunk.total != 0 or chunk.hmac:
        raise EnrollmentError("the enrollment CHUNK must have sequence 0, total 0 and no HMAC")
    return bytes(chunk.data)


# --- the confirmation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentConfirmation:
    node_id: str
    status: str  # "success" or "error"
    timestamp: str
    kdc_hpke_pubkey: str = ""
    error_message: str = ""

    def to_json(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v or k in ("node_id", "status")}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EnrollmentConfirmation:
        obj = _json_object(data, "enrollment confirmation")
        if obj.get("status") not in ("success", "error"):
            raise EnrollmentError("enrollment confirmation: no status success or error")
        return cls(
            node_id=str(obj.get("node_id", "")),
            status=str(obj["status"]),
            timestamp=str(obj.get("timestamp", "")),
            kdc_hpke_pubkey=str(obj.get("kdc_hpke_pubkey", "")),
            error_message=str(obj.get("error_message", "")),
        )


def seal_confirmation(
    confirmation: EnrollmentConfirmation,
    *,
    node_hpke: HpkeKey | None,
    node_jose: JoseKey | None,
    kdc_hpke: HpkeKey,
    node_hybrid: HybridKey | None = None,
) -> bytes:
    """HPKE auth mode from the KDC's X25519 key to the node's (tdns), else a JWE to the node's
    P-256 key, else hybrid HPKE (base mode) to its hpke-pq key; plain JSON when the request
    could not even be read (no node key to seal to)."""
    if node_hpke is not None:
        return seal(confirmation.to_json(), node_hpke, sender=kdc_hpke)
    if node_hybrid is not None and node_jose is None:
        return hybrid.seal(confirmation.to_json(), node_hybrid)
    if node_jose is not None:
        return jwe_encrypt(confirmation.to_json(), node_jose).encode()
    return confirmation.to_json()


def answer_option(sealed: bytes) -> ChunkOption:
    return ChunkOption(CONTENT_ENROLLMENT, sealed)


def open_confirmation(
    reply: dns.message.Message,
    *,
    node_hpke: HpkeKey | None,
    node_jose: JoseKey | None,
    kdc_hpke: HpkeKey | None,
    node_hybrid: HybridKey | None = None,
) -> EnrollmentConfirmation | None:
    """The KDC's confirmation from its answer, opened with the node's new key (HPKE auth mode
    also proves the KDC's X25519 key sealed it); None when the answer has none. A plaintext
    confirmation is read only from an error answer, as tdns does."""
    option = find_chunk_option(reply.options)
    if option is None or option.content != CONTENT_ENROLLMENT:
        return None
    body = option.body
    if reply.rcode() != 0 and body[:1] == b"{":
        with contextlib.suppress(EnrollmentError):  # else a ciphertext that starts with "{"
            return EnrollmentConfirmation.from_json(body)
    try:
        if node_hpke is not None:
            plain = open_sealed(body, node_hpke, sender=kdc_hpke, where="enrollment confirmation")
        elif node_jose is not None:
            plain, _ = jwe_decrypt(body, node_jose, where="enrollment confirmation")
        elif node_hybrid is not None:
            plain = hybrid.open_sealed(body, node_hybrid, where="enrollment confirmation")
        else:
            raise EnrollmentError("no node key to open the enrollment confirmation with")
    except (KrsError, ValueError) as exc:
        raise EnrollmentError(
            f"the enrollment confirmation does not open with this node's new key and the "
            f"package's KDC key (not from that KDC?): {exc}"
        ) from exc
    return EnrollmentConfirmation.from_json(plain)


def ede_text(reply: dns.message.Message) -> str:
    """The Extended DNS Error text of an answer (RFC 8914), "" if none."""
    for option in reply.options:
        if isinstance(option, dns.edns.EDEOption):
            return option.text or dns.edns.EDECode.to_text(option.code)
    return ""


__all__ = [
    "BACKENDS",
    "DEFAULT_WINDOW",
    "BootstrapPackage",
    "EnrollmentConfirmation",
    "EnrollmentRequest",
    "answer_option",
    "build_update",
    "ede_text",
    "encode_jose_pubkey",
    "enroll_name",
    "new_token",
    "open_confirmation",
    "open_request",
    "parse_rfc3339",
    "request_chunk",
    "rfc3339",
    "seal_confirmation",
    "seal_request",
    "token_hash",
]
