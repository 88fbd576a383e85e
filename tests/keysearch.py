"""Searching bytes for private keys the test knows: kdc.db, exports, logs, backup files.

A key is looked for in every form it can sit in a file: PEM, its base64 body on one line,
PKCS#8 DER, the raw private scalar or seed, and (for the KDC's own keys) the hex or JWK ``d``
text its key file holds.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import dns.name
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x25519

from krs_plugin.crypto import HpkeKey, JoseKey, load_jose_key
from krs_plugin.crypto.keys import b64url_encode
from krs_plugin.dnssec import DnssecKey
from krs_plugin.kdc.store import Store
from krs_plugin.payload import RollKey, parse_payload
from krs_plugin.protocol import CHUNK_TYPE, parse_chunk_wire
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | x25519.X25519PrivateKey
    | object
)


def _forms(private: PrivateKey) -> dict[str, bytes]:
    pem = private.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = private.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if isinstance(private, ec.EllipticCurvePrivateKey):
        raw = private.private_numbers().private_value.to_bytes((private.key_size + 7) // 8, "big")
    elif isinstance(
        private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | x25519.X25519PrivateKey
    ):
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip
    else:
        numbers = private.private_numbers()  # type: ignore[attr-defined]
        raw = numbers.d.to_bytes((private.key_size + 7) // 8, "big")  # type: ignore[attr-defined]
    return {"PEM": pem, "base64": base64.b64encode(der), "DER": der, "raw": raw}


def private_forms(key: DnssecKey) -> dict[str, bytes]:
    """A DNSSEC private key's forms (PEM, base64 of the DER, PKCS#8 DER, raw)."""
    return _forms(key.private_key)


def identity_forms(key: HpkeKey | JoseKey) -> dict[str, bytes]:
    """A KDC identity key's forms, with the text its key file holds (hex, JWK ``d``)."""
    assert key.private is not None
    forms = _forms(key.private)
    if isinstance(key, HpkeKey):
        forms["hex"] = key.private_hex().encode()
    else:
        forms["jwk d"] = b64url_encode(forms["raw"]).encode()
    return forms


def assert_nowhere(keys: list[DnssecKey], blobs: dict[str, bytes]) -> None:
    """No form of any of ``keys`` in any of ``blobs``."""
    assert keys
    for key in keys:
        for form, needle in private_forms(key).items():
            for where, data in blobs.items():
                assert needle not in data, f"{form} of a private key found in {where}"


def assert_no_identity(keys: dict[str, HpkeKey | JoseKey], blobs: dict[str, bytes]) -> None:
    """No form of the named identity ``keys`` in any of ``blobs``."""
    assert keys
    for name, key in keys.items():
        for form, needle in identity_forms(key).items():
            for where, data in blobs.items():
                assert needle not in data, f"{form} of {name} found in {where}"


def received(state: Path, node_id: str, node: HpkeKey, dist_id: str) -> list[DnssecKey]:
    """What the node gets: the distribution checked with the KDC's signing public key and
    opened with its own key; the keys it carries."""
    store = Store.reader(state / "kdc.db")
    wires = [store.record(dist_id, node_id, i) for i in range(64)]
    store.close()
    records = [parse_chunk_wire(w, CHUNK_TYPE) for w in wires if w is not None]
    identity = NodeIdentity(dns.name.from_text(node_id), hpke=node)
    verifier = load_jose_key(state / "keys" / "kdc.signing.pubkey")
    unpacked = unpack_distribution(
        dist_id, records[0], records[1:], identity, verifier, now=time.time()
    )
    entries = parse_payload(unpacked.plaintext, now=time.time()).entries
    return [e.key for e in entries if isinstance(e, RollKey)]
