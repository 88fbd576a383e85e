"""The sealed and signed envelope: the transport string T of docs/protocol.md section 4.

``T = base64(JWS_ES256(C))`` where C, the JWS payload, is

- ``jose``: a JWE compact serialization (ECDH-ES, A256GCM) to the node's P-256 key;
- ``hpke``: the raw HPKE ciphertext ``enc || ct`` to the node's X25519 key (no JWE layer);
- ``hpke-pq`` (ours, section 4, "The hpke-pq backend"): the same layout, HPKE with the hybrid KEM
  MLKEM768-X25519 to the node's ML-KEM-768 + X25519 key (``enc`` is 1120 bytes instead of 32).

Unsigned ``T = base64(C)`` exists in tdns for KDCs without a signing key; we open it only when the
operator opted out of signatures (``allow_unsigned``), and our KDC never produces it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from krs_plugin.crypto import hpke, hybrid, jose
from krs_plugin.crypto.hybrid import HybridKey
from krs_plugin.crypto.keys import HpkeKey, JoseKey
from krs_plugin.errors import DecryptionError, SignatureError, WireError
from krs_plugin.protocol.manifest import BACKENDS, Backend


@dataclass(frozen=True)
class OpenedEnvelope:
    """What ``open_envelope`` found: the cleartext, whether it was signed, and JWE headers."""

    plaintext: bytes = field(repr=False)
    signed: bool
    backend: Backend
    headers: Mapping[str, Any] = field(default_factory=dict)


def seal_envelope(
    plaintext: bytes,
    *,
    backend: Backend,
    recipient: HpkeKey | JoseKey | HybridKey,
    signer: JoseKey | None,
    headers: Mapping[str, Any] | None = None,
) -> bytes:
    """Seal ``plaintext`` for one node and sign it; returns the ASCII transport string.

    ``signer=None`` produces tdns's unsigned form; it exists for interoperability tests only.
    ``headers`` become JWE protected headers (jose backend; HPKE has no place for them).
    """
    inner = _seal_inner(plaintext, backend, recipient, headers)
    outer = inner if signer is None else jose.jws_sign(inner, signer).encode("ascii")
    return base64.b64encode(outer)


def open_envelope(
    transport: bytes | bytearray,
    *,
    backend: Backend,
    recipient: HpkeKey | JoseKey | HybridKey,
    verifier: JoseKey | None,
    allow_unsigned: bool = False,
    where: str = "distribution",
) -> OpenedEnvelope:
    """Verify the KDC's signature, then decrypt with this node's key.

    The signature is checked before any decryption, so nothing unauthenticated reaches the
    decryptor unless the operator explicitly set ``allow_unsigned``.
    """
    if backend not in BACKENDS:
        raise WireError(f"{where}: crypto backend {backend!r} is not one of {BACKENDS}")
    try:
        # Surrounding whitespace (a newline from a file) is not part of the base64 text.
        if transport[:1].isspace() or transport[-1:].isspace():
            transport = transport.strip()  # a copy: only when there is something to strip
        outer = base64.b64decode(transport, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"{where}: transport string is not standard base64: {exc}") from exc
    # Decoded: the transport string (the largest copy, 4/3 of the rest) goes now, when the
    # caller handed over the only reference (receiver/unpack.py does).
    del transport
    if jose.looks_like_jws(outer):
        if verifier is None:
            raise SignatureError(
                f"{where}: distribution is signed but no KDC verification key is configured "
                "to check it"
            )
        inner = jose.jws_verify(outer, verifier, where=f"{where}: KDC signature")
        signed = True
    else:
        if not allow_unsigned:
            raise SignatureError(
                f"{where}: distribution is not signed by the KDC (no JWS); refusing it because "
                "signatures are required (set allow_unsigned: true to accept unsigned ones)"
            )
        inner = outer
        signed = False
    del outer  # the signed form is not needed any more: free it before decrypting
    plaintext, headers = _open_inner(inner, backend, recipient, where)
    return OpenedEnvelope(plaintext, signed, backend, headers)


def _seal_inner(
    plaintext: bytes,
    backend: Backend,
    recipient: HpkeKey | JoseKey | HybridKey,
    headers: Mapping[str, Any] | None,
) -> bytes:
    if backend == "hpke":
        if not isinstance(recipient, HpkeKey):
            raise TypeError("the hpke backend seals to an X25519 HpkeKey")
        return hpke.seal(plaintext, recipient)
    if backend == "jose":
        if not isinstance(recipient, JoseKey):
            raise TypeError("the jose backend seals to a P-256 JoseKey")
        return jose.jwe_encrypt(plaintext, recipient, headers=headers).encode("ascii")
    if backend == "hpke-pq":
        if not isinstance(recipient, HybridKey):
            raise TypeError("the hpke-pq backend seals to an ML-KEM-768 + X25519 HybridKey")
        return hybrid.seal(plaintext, recipient)
    raise ValueError(f"crypto backend {backend!r} is not one of {BACKENDS}")


def _open_inner(
    inner: bytes | bytearray,
    backend: Backend,
    recipient: HpkeKey | JoseKey | HybridKey,
    where: str,
) -> tuple[bytes, dict[str, Any]]:
    if backend == "hpke":
        if not isinstance(recipient, HpkeKey):
            raise DecryptionError(
                f"{where}: sealed with hpke but this node has no X25519 key (it holds "
                f"{_kind(recipient)})"
            )
        return hpke.open_sealed(inner, recipient, where=f"{where}: HPKE"), {}
    if backend == "hpke-pq":
        if not isinstance(recipient, HybridKey):
            raise DecryptionError(
                f"{where}: sealed with hpke-pq but this node has no ML-KEM-768 + X25519 key "
                f"(it holds {_kind(recipient)})"
            )
        return hybrid.open_sealed(inner, recipient, where=f"{where}: hybrid HPKE"), {}
    if not isinstance(recipient, JoseKey):
        raise DecryptionError(
            f"{where}: sealed with jose but this node has no P-256 key (it holds "
            f"{_kind(recipient)})"
        )
    if not inner.isascii():
        raise WireError(f"{where}: jose payload is not a compact JWE (binary data)")
    return jose.jwe_decrypt(inner, recipient, where=f"{where}: JWE")


def _kind(key: HpkeKey | JoseKey | HybridKey) -> str:
    if isinstance(key, HybridKey):
        return f"an hpke-pq (ML-KEM-768 + X25519) key {key.fingerprint}"
    if isinstance(key, HpkeKey):
        return f"an hpke (X25519) key {key.fingerprint}"
    return f"a jose (P-256) key {key.fingerprint}"
