"""Keys, HPKE (classic and hybrid), JOSE and the signed envelope, shared by the KDC and the KRS."""

from krs_plugin.crypto.envelope import OpenedEnvelope, open_envelope, seal_envelope
from krs_plugin.crypto.hybrid import HybridKey, load_hybrid_private, load_hybrid_public
from krs_plugin.crypto.keys import (
    HpkeKey,
    JoseKey,
    load_hpke_private,
    load_hpke_public,
    load_jose_key,
    read_key_text,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
    write_public_file,
    write_secret_file,
)
from krs_plugin.protocol.manifest import BACKENDS, Backend

__all__ = [
    "BACKENDS",
    "Backend",
    "HpkeKey",
    "HybridKey",
    "JoseKey",
    "OpenedEnvelope",
    "load_hpke_private",
    "load_hpke_public",
    "load_hybrid_private",
    "load_hybrid_public",
    "load_jose_key",
    "open_envelope",
    "read_key_text",
    "seal_envelope",
    "write_hpke_private",
    "write_hpke_public",
    "write_jose_private",
    "write_jose_public",
    "write_public_file",
    "write_secret_file",
]
