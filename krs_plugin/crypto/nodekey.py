"""A node's sealing key, whatever its backend: generate, write, load, and its public text.

One place that maps a backend name to its key type (docs/protocol.md section 4), so enrollment
(``receiver/enroll.py``), the lab and the node-key rotation (``krs rekey``, which takes the backend
as a parameter: docs/enrollment.md, "Moving a node to hpke-pq") make keys the same way.
"""

from __future__ import annotations

import json
import os

from krs_plugin.crypto.hybrid import (
    HybridKey,
    load_hybrid_private,
    load_hybrid_public,
    write_hybrid_private,
    write_hybrid_public,
)
from krs_plugin.crypto.keys import (
    HpkeKey,
    JoseKey,
    load_hpke_private,
    load_hpke_public,
    load_jose_key,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.protocol.manifest import BACKENDS

NodeKey = HpkeKey | JoseKey | HybridKey

KEY_DESCRIPTIONS = {
    "hpke": "node X25519 (HPKE) key",
    "jose": "node P-256 (JOSE) key",
    "hpke-pq": "node ML-KEM-768 + X25519 (hybrid HPKE) key",
}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"crypto backend {backend!r} is not one of {BACKENDS}")
    return backend


def generate_node_key(backend: str) -> NodeKey:
    """A new private key for ``backend``: the hook a node-key rotation calls with ``--backend``."""
    check_backend(backend)
    if backend == "hpke":
        return HpkeKey.generate()
    if backend == "jose":
        return JoseKey.generate()
    return HybridKey.generate()


def write_node_private(path: str | os.PathLike[str], backend: str, key: NodeKey) -> None:
    """The private key file (0600 from its first byte), in the backend's format."""
    comment = KEY_DESCRIPTIONS[check_backend(backend)]
    if backend == "hpke" and isinstance(key, HpkeKey):
        write_hpke_private(path, key, comment=comment)
    elif backend == "jose" and isinstance(key, JoseKey):
        write_jose_private(path, key, comment=comment)
    elif backend == "hpke-pq" and isinstance(key, HybridKey):
        write_hybrid_private(path, key, comment=comment)
    else:
        raise TypeError(f"a {type(key).__name__} is not a key of the {backend} backend")


def write_node_public(path: str | os.PathLike[str], backend: str, key: NodeKey) -> None:
    """The public key file that ``krs-kdc node add --<backend>-pubkey`` reads."""
    comment = KEY_DESCRIPTIONS[check_backend(backend)] + " (public)"
    if backend == "hpke" and isinstance(key, HpkeKey):
        write_hpke_public(path, key, comment=comment)
    elif backend == "jose" and isinstance(key, JoseKey):
        write_jose_public(path, key, comment=comment)
    elif backend == "hpke-pq" and isinstance(key, HybridKey):
        write_hybrid_public(path, key, comment=comment)
    else:
        raise TypeError(f"a {type(key).__name__} is not a key of the {backend} backend")


def load_node_private(backend: str, path: str | os.PathLike[str]) -> NodeKey:
    check_backend(backend)
    if backend == "hpke":
        return load_hpke_private(path)
    if backend == "jose":
        return load_jose_key(path)
    return load_hybrid_private(path)


def load_node_public(backend: str, path: str | os.PathLike[str]) -> NodeKey:
    check_backend(backend)
    if backend == "hpke":
        return load_hpke_public(path)
    if backend == "jose":
        return load_jose_key(path).public_only()
    return load_hybrid_public(path)


def public_text(key: NodeKey) -> str:
    """What kdc.db and the enrollment request hold: hex for HPKE keys, JWK JSON for P-256."""
    if isinstance(key, JoseKey):
        return json.dumps(key.public_jwk, sort_keys=True)
    return key.public_hex
