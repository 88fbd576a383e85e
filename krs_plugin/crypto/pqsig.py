"""The KDC's post-quantum signature on a distribution: ML-DSA-65 beside the ES256 JWS.

One implementation for both sides (docs/protocol.md section 4, "The `pq_signature` metadata
key"): the KDC signs, the KRS verifies. The JWS stays tdns's ES256 form byte for byte; the ML-DSA
signature travels in the manifest's ``metadata`` as ``pq_signature`` (standard base64), over
``"krs-plugin distribution v1" || distribution_id || 0x00 || receiver_id || SHA-256(T)`` with
the ML-DSA context string ``krs-plugin`` (docs/security.md, "Post-quantum sealing").
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from krs_plugin.crypto.keys import read_key_text, write_public_file, write_secret_file
from krs_plugin.errors import KeyFileError, SignatureError

METADATA_KEY = "pq_signature"
CONTEXT = b"krs-plugin"
DOMAIN = b"krs-plugin distribution v1"
SEED_BYTES = 32
PUBLIC_BYTES = 1952
SIGNATURE_BYTES = 3309


def signed_input(distribution_id: str, receiver_id: str, transport: bytes | bytearray) -> bytes:
    """What the ML-DSA signature covers: the distribution, the node it is for, and T. A 0x00
    separates the two names (neither holds one), so no split of one string reads as another."""
    return (
        DOMAIN
        + distribution_id.encode()
        + b"\x00"
        + receiver_id.encode()
        + hashlib.sha256(transport).digest()
    )


class MldsaKey:
    """An ML-DSA-65 key: private (the KDC) or public only (a node)."""

    def __init__(
        self, public: mldsa.MLDSA65PublicKey, private: mldsa.MLDSA65PrivateKey | None = None
    ) -> None:
        self.public = public
        self.private = private

    @classmethod
    def generate(cls) -> MldsaKey:
        private = mldsa.MLDSA65PrivateKey.generate()
        return cls(private.public_key(), private)

    @property
    def public_raw(self) -> bytes:
        return self.public.public_bytes_raw()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, hex: what an operator compares on both sides."""
        return "mldsa65:" + hashlib.sha256(self.public_raw).hexdigest()

    def public_only(self) -> MldsaKey:
        return MldsaKey(self.public)

    def sign(self, distribution_id: str, receiver_id: str, transport: bytes) -> str:
        """The ``pq_signature`` value for one node's distribution."""
        if self.private is None:
            raise KeyFileError("ML-DSA key has no private half; it cannot sign")
        data = signed_input(distribution_id, receiver_id, transport)
        return base64.b64encode(self.private.sign(data, CONTEXT)).decode()

    def __repr__(self) -> str:  # never the private bytes
        return f"MldsaKey({'private' if self.private else 'public'}, {self.fingerprint})"


def verify_distribution(
    keys: list[MldsaKey],
    value: object,
    distribution_id: str,
    receiver_id: str,
    transport: bytes | bytearray,
    where: str,
) -> MldsaKey:
    """The key (of ``keys``, the ones this node trusts) that verifies ``value``; otherwise
    ``SignatureError`` naming what is wrong. Runs before the JWS check and before decryption."""
    if value is None:
        raise SignatureError(
            f"{where}: no post-quantum signature (manifest metadata '{METADATA_KEY}' missing), "
            "but this node requires one (kdc.pq_verification_key): the KDC has no ML-DSA key "
            "enabled (krs-kdc identity pq-enable) or the manifest was altered"
        )
    if not isinstance(value, str):
        raise SignatureError(f"{where}: manifest metadata '{METADATA_KEY}' is not a string")
    try:
        signature = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{where}: '{METADATA_KEY}' is not standard base64: {exc}") from exc
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            f"{where}: '{METADATA_KEY}' is {len(signature)} bytes, an ML-DSA-65 signature is "
            f"{SIGNATURE_BYTES}"
        )
    data = signed_input(distribution_id, receiver_id, transport)
    for key in keys:
        try:
            key.public.verify(signature, data, CONTEXT)
        except InvalidSignature:
            continue
        return key
    names = ", ".join(k.fingerprint for k in keys)
    raise SignatureError(
        f"{where}: post-quantum (ML-DSA-65) signature does not verify with the KDC key this "
        f"node trusts ({names}): the distribution or its manifest was altered, or signed by "
        "another key; compare with 'krs-kdc identity pq-status' on the KDC"
    )


def load_mldsa_private(path: str | os.PathLike[str]) -> MldsaKey:
    raw = _hex(read_key_text(path), SEED_BYTES, str(path))
    private = mldsa.MLDSA65PrivateKey.from_seed_bytes(raw)
    return MldsaKey(private.public_key(), private)


def load_mldsa_public(path: str | os.PathLike[str]) -> MldsaKey:
    """A public key file: hex (what we write) or standard base64."""
    return mldsa_public_from_text(read_key_text(path), str(path))


def mldsa_public_from_text(text: str, where: str) -> MldsaKey:
    """A public key as hex (what we write, and the enrollment package's ``kdc_pq_pubkey``) or
    standard base64; ``KeyFileError`` naming ``where`` otherwise."""
    text = "".join(text.split())
    if len(text) != 2 * PUBLIC_BYTES:
        with contextlib.suppress(binascii.Error, ValueError):
            text = base64.b64decode(text, validate=True).hex()
    raw = _hex(text, PUBLIC_BYTES, where)
    try:
        return MldsaKey(mldsa.MLDSA65PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise KeyFileError(f"{where}: not an ML-DSA-65 public key: {exc}") from exc


def write_mldsa_private(path: str | os.PathLike[str], key: MldsaKey, comment: str = "") -> None:
    """0600 from the first byte; the 32-byte seed (FIPS 204 ``xi``), hex."""
    if key.private is None:
        raise KeyFileError(f"{path}: no private key to write")
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    header += f"# ML-DSA-65 seed (32 bytes); {key.fingerprint}\n"
    write_secret_file(path, header + key.private.private_bytes_raw().hex() + "\n")


def write_mldsa_public(path: str | os.PathLike[str], key: MldsaKey, comment: str = "") -> None:
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    header += f"# {key.fingerprint}\n"
    write_public_file(path, header + key.public_raw.hex() + "\n")


def _hex(text: str, size: int, where: str) -> bytes:
    value = "".join(text.split())
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise KeyFileError(f"{where}: expected {2 * size} hex characters: {exc}") from exc
    if len(raw) != size:
        raise KeyFileError(f"{where}: expected {size} bytes ({2 * size} hex), got {len(raw)}")
    return raw
