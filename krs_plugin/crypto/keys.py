"""Node and KDC keys: X25519 for HPKE, P-256 for JOSE (encryption and ES256 signatures).

File formats are tdns's: X25519 keys are 64 hex characters, P-256 keys are JWK JSON, and lines
that start with ``#`` are comments. tdns JWKs carry ``"use":"enc","alg":"ECDH-ES"`` even on keys
that verify signatures; those two fields (and ``key_ops``) are dropped on import, since they only
describe the file, never what we may do with the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from krs_plugin.errors import KeyFileError
from krs_plugin.files import PUBLIC_MODE, SECRET_MODE, atomic_write

X25519_KEY_BYTES = 32
P256_COORDINATE_BYTES = 32


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Unpadded base64url as JOSE uses it; ``binascii.Error``/``ValueError`` when malformed."""
    raw = text.encode("ascii") if isinstance(text, str) else text
    if b"=" in raw or b"+" in raw or b"/" in raw:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_DECODE_SLICE = 1 << 20  # a multiple of 4 base64 characters


def b64url_decode_view(text: memoryview) -> bytes | bytearray:
    """``b64url_decode`` for a large slice of a bigger buffer, decoded 1 MiB at a time so the
    only full-size allocation is the result (a distribution can be tens of megabytes). Text of
    more than one slice is decoded into a ``bytearray`` of the exact size, returned as it is
    (joining the decoded slices held them and their join at once: 0.56 of the transport's
    size more at ``krs run``'s peak); a bytes-like value either way."""
    size = len(text)
    if size % 4 == 1:
        raise ValueError("not unpadded base64url (impossible length)")
    out = bytearray(size // 4 * 3 + max(0, size % 4 - 1)) if size > _DECODE_SLICE else None
    pieces = []
    at = 0
    for start in range(0, size, _DECODE_SLICE):
        piece = bytes(text[start : start + _DECODE_SLICE])
        if b"=" in piece or b"+" in piece or b"/" in piece:
            raise ValueError("not unpadded base64url")
        piece = piece.translate(_URLSAFE_TO_STANDARD)
        if start + _DECODE_SLICE >= size:
            piece += b"=" * (-len(piece) % 4)
        decoded = binascii.a2b_base64(piece, strict_mode=True)
        if out is None:
            pieces.append(decoded)
        else:
            out[at : at + len(decoded)] = decoded
            at += len(decoded)
    if out is None:
        return b"".join(pieces)
    if at != len(out):  # cannot be: the size says how many bytes the text holds
        raise ValueError("not unpadded base64url")
    return out


class HpkeKey:
    """An X25519 key (private, or public only). The raw public key is also the manifest HMAC key."""

    __slots__ = ("_public_bytes", "private", "public")

    def __init__(
        self,
        *,
        private: x25519.X25519PrivateKey | None = None,
        public: x25519.X25519PublicKey | None = None,
    ) -> None:
        if private is None and public is None:
            raise ValueError("an HPKE key needs a private or a public key")
        self.private = private
        self.public = public if public is not None else private.public_key()  # type: ignore[union-attr]
        self._public_bytes = self.public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> HpkeKey:
        return cls(private=x25519.X25519PrivateKey.generate())

    @classmethod
    def from_private_hex(cls, text: str, where: str = "X25519 private key") -> HpkeKey:
        raw = _hex32(text, where)
        return cls(private=x25519.X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_public_hex(cls, text: str, where: str = "X25519 public key") -> HpkeKey:
        raw = _hex32(text, where)
        return cls(public=x25519.X25519PublicKey.from_public_bytes(raw))

    @property
    def public_bytes(self) -> bytes:
        return self._public_bytes

    @property
    def public_hex(self) -> str:
        return self._public_bytes.hex()

    @property
    def hmac_key(self) -> bytes:
        return self._public_bytes

    @property
    def fingerprint(self) -> str:
        """Short public identifier for messages: the first 16 hex digits of the public key."""
        return self.public_hex[:16]

    def private_hex(self) -> str:
        if self.private is None:
            raise KeyFileError(f"HPKE key {self.fingerprint} has no private part")
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ).hex()

    def public_only(self) -> HpkeKey:
        return HpkeKey(public=self.public)

    def __repr__(self) -> str:
        kind = "private" if self.private is not None else "public"
        return f"HpkeKey({kind}, {self.fingerprint})"


class JoseKey:
    """A P-256 key (private, or public only) for JWE ECDH-ES and JWS ES256."""

    __slots__ = ("_jwk", "_public_jwk", "_thumbprint", "private", "public")

    def __init__(
        self,
        *,
        private: ec.EllipticCurvePrivateKey | None = None,
        public: ec.EllipticCurvePublicKey | None = None,
    ) -> None:
        key = private if private is not None else public
        if key is None:
            raise ValueError("a JOSE key needs a private or a public key")
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"JOSE keys must be on P-256, got {key.curve.name}")
        self.private = private
        self.public = public if public is not None else private.public_key()  # type: ignore[union-attr]
        numbers = self.public.public_numbers()
        self._public_jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(numbers.x.to_bytes(P256_COORDINATE_BYTES, "big")),
            "y": b64url_encode(numbers.y.to_bytes(P256_COORDINATE_BYTES, "big")),
        }
        canonical = json.dumps(self._public_jwk, sort_keys=True, separators=(",", ":"))
        self._thumbprint = b64url_encode(hashlib.sha256(canonical.encode()).digest())
        self._jwk: Any = None

    @classmethod
    def generate(cls) -> JoseKey:
        return cls(private=ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_jwk_text(cls, text: str, where: str = "JWK") -> JoseKey:
        """``from_jwk`` of a JWK's JSON text, as kdc.db, krs.db and the messages keep it; text
        that is not a JSON object is a KeyFileError naming ``where``, like a bad JWK."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise KeyFileError(f"{where}: not a JWK (JSON): {exc}") from exc
        if not isinstance(obj, dict):
            raise KeyFileError(f"{where}: not a JWK object")
        return cls.from_jwk(obj, where)

    @classmethod
    def from_jwk(cls, obj: Mapping[str, Any], where: str = "JWK") -> JoseKey:
        """Import an EC P-256 JWK; ``use``/``alg``/``key_ops`` are ignored (the tdns quirk)."""
        if obj.get("kty") != "EC" or obj.get("crv") != "P-256":
            raise KeyFileError(
                f"{where}: expected an EC P-256 JWK, got kty={obj.get('kty')!r} "
                f"crv={obj.get('crv')!r}"
            )
        try:
            x = int.from_bytes(_coordinate(obj, "x", where), "big")
            y = int.from_bytes(_coordinate(obj, "y", where), "big")
            public_numbers = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1())
            if "d" in obj:
                d = int.from_bytes(_coordinate(obj, "d", where), "big")
                private = ec.EllipticCurvePrivateNumbers(d, public_numbers).private_key()
                return cls(private=private)
            return cls(public=public_numbers.public_key())
        except ValueError as exc:
            raise KeyFileError(f"{where}: not a valid P-256 key: {exc}") from exc

    @property
    def public_jwk(self) -> dict[str, str]:
        return dict(self._public_jwk)

    def private_jwk(self) -> dict[str, str]:
        if self.private is None:
            raise KeyFileError(f"JOSE key {self.fingerprint} has no private part")
        d = self.private.private_numbers().private_value.to_bytes(P256_COORDINATE_BYTES, "big")
        return {**self._public_jwk, "d": b64url_encode(d)}

    @property
    def hmac_key(self) -> bytes:
        """The 32-byte big-endian X coordinate: tdns's manifest HMAC key for jose nodes."""
        return self.public.public_numbers().x.to_bytes(P256_COORDINATE_BYTES, "big")

    @property
    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256), the key's public identity."""
        return self._thumbprint

    @property
    def fingerprint(self) -> str:
        return self._thumbprint[:16]

    def jwcrypto_key(self) -> Any:
        """The same key as a jwcrypto JWK, built once (import costs more than a decryption)."""
        if self._jwk is None:
            from jwcrypto import jwk

            self._jwk = jwk.JWK.from_pyca(self.private if self.private is not None else self.public)
        return self._jwk

    def public_only(self) -> JoseKey:
        return JoseKey(public=self.public)

    def __repr__(self) -> str:
        kind = "private" if self.private is not None else "public"
        return f"JoseKey({kind}, {self.fingerprint})"


# --- files ------------------------------------------------------------------------------------


def read_key_text(path: str | os.PathLike[str]) -> str:
    """A key file's content without ``#`` comment lines and blank lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc}") from exc
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise KeyFileError(f"{path}: key file holds no key (only comments or blank lines)")
    return "\n".join(lines)


def load_hpke_private(path: str | os.PathLike[str]) -> HpkeKey:
    return HpkeKey.from_private_hex(read_key_text(path), where=str(path))


def load_hpke_public(path: str | os.PathLike[str]) -> HpkeKey:
    """A public X25519 key file: hex (tdns) or standard base64 (tdns ``node add`` accepts both)."""
    text = read_key_text(path).strip()
    if len(text) != 2 * X25519_KEY_BYTES:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == X25519_KEY_BYTES:
            text = raw.hex()
    return HpkeKey.from_public_hex(text, where=str(path))


def load_jose_key(path: str | os.PathLike[str]) -> JoseKey:
    """A P-256 JWK file, private or public."""
    text = read_key_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path}: not JWK JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise KeyFileError(f"{path}: a JWK must be a JSON object")
    return JoseKey.from_jwk(obj, where=str(path))


def write_hpke_private(path: str | os.PathLike[str], key: HpkeKey, comment: str = "") -> None:
    header = _comment_lines(comment) + f"# Public Key: {key.public_hex}\n"
    write_secret_file(path, header + key.private_hex() + "\n")


def write_hpke_public(path: str | os.PathLike[str], key: HpkeKey, comment: str = "") -> None:
    write_public_file(path, _comment_lines(comment) + key.public_hex + "\n")


def write_jose_private(
    path: str | os.PathLike[str], key: JoseKey, *, use: str = "enc", comment: str = ""
) -> None:
    """Private JWK, with the ``use``/``alg`` that tdns writes so its tools read our files."""
    obj = {**_tdns_hint(use), **key.private_jwk()}
    write_secret_file(path, _comment_lines(comment) + json.dumps(obj, indent=2) + "\n")


def write_jose_public(
    path: str | os.PathLike[str], key: JoseKey, *, use: str = "enc", comment: str = ""
) -> None:
    obj = {**_tdns_hint(use), **key.public_jwk}
    write_public_file(path, _comment_lines(comment) + json.dumps(obj, indent=2) + "\n")


def write_secret_file(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a file that is 0600 from its first byte (never chmod-ed afterwards)."""
    atomic_write(path, text.encode(), SECRET_MODE)


def write_public_file(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, text.encode(), PUBLIC_MODE)


def _comment_lines(comment: str) -> str:
    return "".join(f"# {line}\n" for line in comment.splitlines())


def _tdns_hint(use: str) -> dict[str, str]:
    return {"use": "sig", "alg": "ES256"} if use == "sig" else {"use": "enc", "alg": "ECDH-ES"}


def _hex32(text: str, where: str) -> bytes:
    value = text.strip()
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise KeyFileError(f"{where}: expected 64 hex characters: {exc}") from exc
    if len(raw) != X25519_KEY_BYTES:
        raise KeyFileError(f"{where}: expected 32 bytes (64 hex characters), got {len(raw)}")
    if raw == bytes(X25519_KEY_BYTES):
        raise KeyFileError(f"{where}: the all-zero X25519 key is not a key")
    return raw


def _coordinate(obj: Mapping[str, Any], name: str, where: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"{where}: JWK member {name!r} is missing or not a string")
    try:
        raw = b64url_decode(value)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{where}: JWK member {name!r} is not base64url: {exc}") from exc
    if len(raw) != P256_COORDINATE_BYTES:
        raise KeyFileError(
            f"{where}: JWK member {name!r} is {len(raw)} bytes, expected {P256_COORDINATE_BYTES}"
        )
    return raw
