"""HPKE (RFC 9180) for the ``hpke`` backend: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.

The ciphertext is ``enc (32 bytes) || AEAD ciphertext || tag``, no length prefixes, info and aad
empty: exactly what tdns's Go code (Cloudflare CIRCL) produces. Base mode seals distributions;
auth mode (the sender's static key authenticates) seals the enrollment confirmation.
"""

from __future__ import annotations

from typing import Any

from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from krs_plugin.crypto.keys import X25519_KEY_BYTES, HpkeKey
from krs_plugin.errors import DecryptionError

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
AEAD_TAG_BYTES = 16
MIN_CIPHERTEXT = X25519_KEY_BYTES + AEAD_TAG_BYTES


def _kem_public(key: HpkeKey) -> Any:
    return KEMKey.from_pyca_cryptography_key(key.public)


def _kem_private(key: HpkeKey, where: str) -> Any:
    if key.private is None:
        raise DecryptionError(f"{where}: no X25519 private key to open the HPKE ciphertext with")
    return KEMKey.from_pyca_cryptography_key(key.private)


def seal(
    plaintext: bytes,
    recipient: HpkeKey,
    *,
    sender: HpkeKey | None = None,
    info: bytes = b"",
    aad: bytes = b"",
) -> bytes:
    """Seal to ``recipient``; base mode, or auth mode when ``sender`` (a private key) is given.
    ``info`` and ``aad`` stay empty for tdns; a KDC backup binds its header with them."""
    sks = _kem_private(sender, "HPKE auth sender") if sender is not None else None
    enc, context = SUITE.create_sender_context(_kem_public(recipient), info, sks=sks)
    return bytes(enc) + bytes(context.seal(plaintext, aad))


def open_sealed(
    sealed: bytes | bytearray,
    recipient: HpkeKey,
    *,
    sender: HpkeKey | None = None,
    where: str = "HPKE ciphertext",
    info: bytes = b"",
    aad: bytes = b"",
) -> bytes:
    """Open ``enc || ct`` with this node's X25519 key; ``DecryptionError`` names why it failed."""
    if len(sealed) < MIN_CIPHERTEXT:
        raise DecryptionError(
            f"{where}: HPKE ciphertext is {len(sealed)} bytes, shorter than the "
            f"{MIN_CIPHERTEXT}-byte minimum (32-byte enc + 16-byte tag)"
        )
    view = memoryview(sealed)  # no copy of a ciphertext that may be tens of megabytes
    enc, ciphertext = bytes(view[:X25519_KEY_BYTES]), view[X25519_KEY_BYTES:]
    skr = _kem_private(recipient, where)
    pks = _kem_public(sender) if sender is not None else None
    try:
        context = SUITE.create_recipient_context(enc, skr, info, pks=pks)
        return bytes(context.open(ciphertext, aad))  # type: ignore[arg-type]  # any buffer works
    except Exception as exc:  # pyhpke raises its own OpenError and cryptography's errors
        raise DecryptionError(
            f"{where}: HPKE open failed with X25519 key {recipient.fingerprint}: not sealed to "
            f"this key, or altered ({type(exc).__name__})"
        ) from exc
