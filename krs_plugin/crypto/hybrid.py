"""The ``hpke-pq`` backend (ours; docs/protocol.md section 4, "The hpke-pq backend"): RFC 9180
HPKE, base mode, with the hybrid KEM MLKEM768-X25519 (X-Wing, KEM id 0x647a), HKDF-SHA256 and
AES-256-GCM.

A node key is an ML-KEM-768 key and an X25519 key used as one KEM key: the shared secret holds as
long as either half does, so a distribution recorded today stays sealed after a quantum computer
breaks X25519. The ciphertext is laid out as the ``hpke`` backend's: ``enc (1120 bytes) || AEAD
ciphertext || tag``, info and aad empty. The KEM and the key schedule are cryptography's
(``cryptography.hazmat.primitives.hpke``), not ours: a hybrid combiner is as easy to get subtly
wrong as ECDH-ES (docs/security.md, "Post-quantum sealing").

Key files (the same section): the private file is hex of the 64-byte ML-KEM-768 seed followed by
the 32-byte X25519 private key (192 hex characters, 0600); the public file is hex of the
1184-byte ML-KEM-768 encapsulation key followed by the 32-byte X25519 public key (2432 hex
characters), the order of the KEM's own public key encoding.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from krs_plugin.crypto.keys import (
    X25519_KEY_BYTES,
    read_key_text,
    write_public_file,
    write_secret_file,
)
from krs_plugin.errors import DecryptionError, KeyFileError

BACKEND = "hpke-pq"
MLKEM_SEED_BYTES = 64
MLKEM_PUBLIC_BYTES = 1184
MLKEM_CIPHERTEXT_BYTES = 1088
PRIVATE_BYTES = MLKEM_SEED_BYTES + X25519_KEY_BYTES
PUBLIC_BYTES = MLKEM_PUBLIC_BYTES + X25519_KEY_BYTES
ENC_BYTES = MLKEM_CIPHERTEXT_BYTES + X25519_KEY_BYTES  # 1120: ML-KEM ciphertext || ephemeral X25519
AEAD_TAG_BYTES = 16
MIN_CIPHERTEXT = ENC_BYTES + AEAD_TAG_BYTES

SUITE = pyca_hpke.Suite(
    pyca_hpke.KEM.MLKEM768_X25519, pyca_hpke.KDF.HKDF_SHA256, pyca_hpke.AEAD.AES_256_GCM
)


class HybridKey:
    """An ML-KEM-768 + X25519 key (private, or public only) for the ``hpke-pq`` backend."""

    __slots__ = ("_kem_private", "_kem_public", "_public_bytes", "_seed")

    def __init__(
        self,
        *,
        mlkem_private: mlkem.MLKEM768PrivateKey | None = None,
        x25519_private: x25519.X25519PrivateKey | None = None,
        mlkem_public: mlkem.MLKEM768PublicKey | None = None,
        x25519_public: x25519.X25519PublicKey | None = None,
    ) -> None:
        self._seed: bytes | None = None
        self._kem_private: pyca_hpke.MLKEM768X25519PrivateKey | None = None
        if mlkem_private is not None and x25519_private is not None:
            self._seed = mlkem_private.private_bytes_raw() + _x25519_private_raw(x25519_private)
            self._kem_private = pyca_hpke.MLKEM768X25519PrivateKey(mlkem_private, x25519_private)
            mlkem_public, x25519_public = mlkem_private.public_key(), x25519_private.public_key()
        if mlkem_public is None or x25519_public is None:
            raise ValueError("a hybrid key needs both halves, private or public")
        self._kem_public = pyca_hpke.MLKEM768X25519PublicKey(mlkem_public, x25519_public)
        self._public_bytes = mlkem_public.public_bytes_raw() + x25519_public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> HybridKey:
        return cls(
            mlkem_private=mlkem.MLKEM768PrivateKey.generate(),
            x25519_private=x25519.X25519PrivateKey.generate(),
        )

    @classmethod
    def from_private_hex(cls, text: str, where: str = "hybrid private key") -> HybridKey:
        raw = _hex(text, PRIVATE_BYTES, where)
        if raw[MLKEM_SEED_BYTES:] == bytes(X25519_KEY_BYTES):
            raise KeyFileError(f"{where}: the all-zero X25519 half is not a key")
        try:
            return cls(
                mlkem_private=mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:MLKEM_SEED_BYTES]),
                x25519_private=x25519.X25519PrivateKey.from_private_bytes(raw[MLKEM_SEED_BYTES:]),
            )
        except ValueError as exc:
            raise KeyFileError(f"{where}: not a valid ML-KEM-768 + X25519 key: {exc}") from exc

    @classmethod
    def from_public_hex(cls, text: str, where: str = "hybrid public key") -> HybridKey:
        raw = _hex(text, PUBLIC_BYTES, where)
        if raw[MLKEM_PUBLIC_BYTES:] == bytes(X25519_KEY_BYTES):
            raise KeyFileError(f"{where}: the all-zero X25519 half is not a key")
        try:
            return cls(
                mlkem_public=mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM_PUBLIC_BYTES]),
                x25519_public=x25519.X25519PublicKey.from_public_bytes(raw[MLKEM_PUBLIC_BYTES:]),
            )
        except ValueError as exc:  # an ML-KEM key whose coefficients are out of range
            raise KeyFileError(f"{where}: not a valid ML-KEM-768 + X25519 key: {exc}") from exc

    @property
    def private(self) -> pyca_hpke.MLKEM768X25519PrivateKey | None:
        return self._kem_private

    @property
    def public(self) -> pyca_hpke.MLKEM768X25519PublicKey:
        return self._kem_public

    @property
    def public_bytes(self) -> bytes:
        return self._public_bytes

    @property
    def public_hex(self) -> str:
        return self._public_bytes.hex()

    @property
    def hmac_key(self) -> bytes:
        """The manifest HMAC key: SHA-256 of the public key (docs/protocol.md section 4), 32 bytes
        like the other backends' keys."""
        return hashlib.sha256(self._public_bytes).digest()

    @property
    def fingerprint(self) -> str:
        """Short public identifier: the first 16 hex digits of the SHA-256 of the public key."""
        return hashlib.sha256(self._public_bytes).hexdigest()[:16]

    def private_hex(self) -> str:
        if self._seed is None:
            raise KeyFileError(f"hybrid key {self.fingerprint} has no private part")
        return self._seed.hex()

    def public_only(self) -> HybridKey:
        return HybridKey.from_public_hex(self.public_hex)

    def __repr__(self) -> str:
        kind = "private" if self._seed is not None else "public"
        return f"HybridKey({kind}, {self.fingerprint})"


def seal(plaintext: bytes | bytearray | memoryview, recipient: HybridKey) -> bytes:
    """Seal to ``recipient`` (base mode: the hybrid KEM has no auth mode)."""
    return SUITE.encrypt(plaintext, recipient.public)


def open_sealed(
    sealed: bytes | bytearray, recipient: HybridKey, *, where: str = "hybrid HPKE ciphertext"
) -> bytes:
    """Open ``enc || ct`` with this node's hybrid key; ``DecryptionError`` names why it failed."""
    if len(sealed) < MIN_CIPHERTEXT:
        raise DecryptionError(
            f"{where}: hybrid HPKE ciphertext is {len(sealed)} bytes, shorter than the "
            f"{MIN_CIPHERTEXT}-byte minimum ({ENC_BYTES}-byte enc + {AEAD_TAG_BYTES}-byte tag)"
        )
    if recipient.private is None:
        raise DecryptionError(f"{where}: no hybrid private key to open the ciphertext with")
    try:
        return SUITE.decrypt(sealed, recipient.private)
    except Exception as exc:  # cryptography raises InvalidTag, or ValueError on a bad enc
        raise DecryptionError(
            f"{where}: hybrid HPKE open failed with ML-KEM-768 + X25519 key "
            f"{recipient.fingerprint}: not sealed to this key, or altered ({type(exc).__name__})"
        ) from exc


def load_hybrid_private(path: str | os.PathLike[str]) -> HybridKey:
    return HybridKey.from_private_hex(read_key_text(path), where=str(path))


def load_hybrid_public(path: str | os.PathLike[str]) -> HybridKey:
    return HybridKey.from_public_hex(read_key_text(path), where=str(path))


def write_hybrid_private(path: str | os.PathLike[str], key: HybridKey, comment: str = "") -> None:
    """0600 from the first byte (``write_secret_file``); the public key is not repeated in a
    comment as for X25519 keys: 2432 hex characters would bury the file."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    header += f"# ML-KEM-768 seed (64 bytes) || X25519 private key (32 bytes); {key.fingerprint}\n"
    write_secret_file(path, header + key.private_hex() + "\n")


def write_hybrid_public(path: str | os.PathLike[str], key: HybridKey, comment: str = "") -> None:
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    write_public_file(path, header + key.public_hex + "\n")


def _x25519_private_raw(key: x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _hex(text: str, size: int, where: str) -> bytes:
    value = "".join(text.split())  # a long key may be wrapped over lines
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise KeyFileError(f"{where}: expected {2 * size} hex characters: {exc}") from exc
    if len(raw) != size:
        raise KeyFileError(
            f"{where}: expected {size} bytes ({2 * size} hex characters), got {len(raw)}"
        )
    return raw
