"""JOSE pieces of the envelope: JWE compact (ECDH-ES, A256GCM) and JWS compact (ES256).

JWS is written here on top of the ``cryptography`` library rather than through jwcrypto because tdns
needs one exact protected header, ``{"alg":"ES256","cty":"application/octet-stream","typ":"JWS"}``,
and because verifying it is the hot path of every distribution. JWE uses jwcrypto (ECDH-ES key
agreement and Concat KDF are easy to get subtly wrong), restricted to the algorithms tdns uses.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from krs_plugin.crypto.keys import JoseKey, b64url_decode, b64url_decode_view, b64url_encode
from krs_plugin.errors import (
    DecryptionError,
    SignatureError,
    UnsupportedAlgorithmError,
    WireError,
)

JWS_HEADER = b'{"alg":"ES256","cty":"application/octet-stream","typ":"JWS"}'
"""tdns's JWS protected header, byte for byte (go-jose sorts the keys)."""

_JWS_HEADER_B64 = b64url_encode(JWS_HEADER)
_ES256_SIGNATURE_BYTES = 64

JWE_KEY_ALGORITHMS = ("ECDH-ES", "ECDH-ES+A256KW")
JWE_CONTENT_ALGORITHM = "A256GCM"
JWE_BASE_HEADERS: Mapping[str, Any] = {
    "typ": "tdns-distribution",
    "cty": "application/octet-stream",
    "crypto_backend": "jose",
    "recipients_count": 1,
}


# --- JWS ES256 --------------------------------------------------------------------------------


def jws_sign(payload: bytes, signer: JoseKey) -> str:
    """Compact JWS over ``payload`` with tdns's header, signed ES256 by ``signer``."""
    if signer.private is None:
        raise SignatureError(f"JWS signing key {signer.fingerprint} has no private part")
    signing_input = f"{_JWS_HEADER_B64}.{b64url_encode(payload)}"
    der = signer.private.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url_encode(signature)}"


def looks_like_jws(data: bytes) -> bool:
    """A compact JWS: ASCII, three dot-separated parts, the first a JSON header with ``alg``."""
    if data.count(b".") != 2 or not data.isascii():
        return False
    try:
        header = json.loads(b64url_decode(data[: data.index(b".")]))  # no copy of the rest
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and "alg" in header


def jws_verify(compact: bytes | str, verifier: JoseKey, *, where: str = "JWS") -> bytes | bytearray:
    """Check an ES256 compact JWS against ``verifier`` and return its payload.

    A distribution for thousands of zones is tens of megabytes, so the payload part is never
    copied to check the signature: the signing input is hashed in place (a memoryview) and the
    signature checked over that digest, and only then is the payload decoded, in slices.
    """
    if isinstance(compact, str) and not compact.isascii():  # a report's or request's text
        raise WireError(f"{where}: a compact JWS is ASCII, this one is not")
    data = compact.encode("ascii") if isinstance(compact, str) else compact
    dots = data.count(b".")
    if dots != 2:
        raise WireError(f"{where}: a compact JWS has 3 parts, found {dots + 1}")
    first = data.index(b".")
    second = data.index(b".", first + 1)
    view = memoryview(data)
    try:
        header = json.loads(b64url_decode(bytes(view[:first])))
        signature = b64url_decode(bytes(view[second + 1 :]))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise WireError(f"{where}: malformed compact JWS (base64url or JSON): {exc}") from exc
    if not isinstance(header, dict):
        raise WireError(f"{where}: JWS protected header is not a JSON object")
    alg = header.get("alg")
    if alg != "ES256":
        raise UnsupportedAlgorithmError(
            f"{where}: JWS algorithm {alg!r} is not supported (ES256)", stage="signature"
        )
    if "crit" in header:
        crit = header["crit"]
        raise UnsupportedAlgorithmError(
            f"{where}: JWS header lists critical extensions {crit!r}, none are supported",
            stage="signature",
        )
    if len(signature) != _ES256_SIGNATURE_BYTES:
        raise SignatureError(
            f"{where}: ES256 signature is {len(signature)} bytes, expected {_ES256_SIGNATURE_BYTES}"
        )
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    digest = hashlib.sha256(view[:second]).digest()
    try:
        verifier.public.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature as exc:
        raise SignatureError(
            f"{where}: signature does not verify with the KDC key {verifier.thumbprint} "
            "(signed by another key, or altered)"
        ) from exc
    try:
        return b64url_decode_view(view[first + 1 : second])
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{where}: malformed compact JWS payload (base64url): {exc}") from exc


# --- JWE ECDH-ES + A256GCM --------------------------------------------------------------------


def jwe_encrypt(
    plaintext: bytes,
    recipient: JoseKey,
    *,
    headers: Mapping[str, Any] | None = None,
    key_algorithm: str = "ECDH-ES",
) -> str:
    """Compact JWE to ``recipient`` with tdns's protected headers plus ``headers``."""
    from jwcrypto import jwe

    if key_algorithm not in JWE_KEY_ALGORITHMS:
        raise UnsupportedAlgorithmError(f"JWE key algorithm {key_algorithm!r} is not supported")
    protected = {
        **JWE_BASE_HEADERS,
        **(headers or {}),
        "alg": key_algorithm,
        "enc": JWE_CONTENT_ALGORITHM,
    }
    token = jwe.JWE(
        plaintext,
        protected=json.dumps(dict(sorted(protected.items())), separators=(",", ":")),
    )
    # A public-only key keeps its imported JWK cached; never hand jwcrypto a private key here.
    public = recipient if recipient.private is None else recipient.public_only()
    token.add_recipient(public.jwcrypto_key())
    return str(token.serialize(compact=True))


def jwe_decrypt(
    compact: bytes | bytearray | str, recipient: JoseKey, *, where: str = "JWE"
) -> tuple[bytes, dict[str, Any]]:
    """Open a compact JWE with this node's P-256 key; returns plaintext and protected header."""
    from jwcrypto import jwe
    from jwcrypto.common import JWException

    text = compact if isinstance(compact, str) else compact.decode("ascii", "replace")
    parts = text.split(".")
    if len(parts) != 5:
        raise WireError(f"{where}: a compact JWE has 5 parts, found {len(parts)}")
    try:
        header = json.loads(b64url_decode(parts[0]))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise WireError(f"{where}: malformed JWE protected header: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError(f"{where}: JWE protected header is not a JSON object")
    alg, enc = header.get("alg"), header.get("enc")
    if alg not in JWE_KEY_ALGORITHMS or enc != JWE_CONTENT_ALGORITHM:
        raise UnsupportedAlgorithmError(
            f"{where}: JWE alg {alg!r} / enc {enc!r} not supported "
            f"(alg {' or '.join(JWE_KEY_ALGORITHMS)}, enc {JWE_CONTENT_ALGORITHM})",
            stage="decryption",
        )
    if recipient.private is None:
        raise DecryptionError(f"{where}: no P-256 private key to open the JWE with")
    token = jwe.JWE(algs=[*JWE_KEY_ALGORITHMS, JWE_CONTENT_ALGORITHM])
    try:
        token.deserialize(text)
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise WireError(f"{where}: malformed compact JWE: {exc}") from exc
    try:
        token.decrypt(recipient.jwcrypto_key())
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise DecryptionError(
            f"{where}: JWE decryption failed with P-256 key {recipient.thumbprint}: not "
            f"encrypted to this key, or altered ({exc})"
        ) from exc
    return bytes(token.payload), header
