"""The KDC's own keys: X25519 (HPKE, enrollment), P-256 for JOSE, and the P-256 signing key.

Private files are 0600; each has a ``.pubkey`` beside it for operators to hand to nodes (the
signing public key is what every KRS configures as its KDC verification key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    load_hpke_private,
    load_jose_key,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.errors import ConfigError, KeyFileError

HPKE_FILE = "kdc.hpke.privatekey"
JOSE_FILE = "kdc.jose.privatekey"
SIGNING_FILE = "kdc.signing.privatekey"


@dataclass(frozen=True)
class KdcIdentity:
    hpke: HpkeKey
    jose: JoseKey
    signer: JoseKey


def create_identity(directory: Path) -> KdcIdentity:
    """Make and write a new identity; refuses to overwrite an existing one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (HPKE_FILE, JOSE_FILE, SIGNING_FILE):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name}: KDC keys already exist; refusing to replace")
    identity = KdcIdentity(HpkeKey.generate(), JoseKey.generate(), JoseKey.generate())
    write_hpke_private(directory / HPKE_FILE, identity.hpke, comment="KDC X25519 (HPKE) key")
    write_hpke_public(directory / "kdc.hpke.pubkey", identity.hpke, comment="KDC X25519 public")
    write_jose_private(directory / JOSE_FILE, identity.jose, comment="KDC P-256 (JOSE) key")
    write_jose_public(directory / "kdc.jose.pubkey", identity.jose, comment="KDC P-256 public")
    write_jose_private(
        directory / SIGNING_FILE, identity.signer, use="sig", comment="KDC signing key (ES256)"
    )
    write_jose_public(
        directory / "kdc.signing.pubkey",
        identity.signer,
        use="sig",
        comment="KDC signing public key: configure it on every KRS as the KDC verification key",
    )
    return identity


def load_identity(directory: Path) -> KdcIdentity:
    try:
        return KdcIdentity(
            load_hpke_private(directory / HPKE_FILE),
            load_jose_key(directory / JOSE_FILE),
            load_jose_key(directory / SIGNING_FILE),
        )
    except KeyFileError as exc:
        raise ConfigError(f"KDC keys in {directory}: {exc} (run: krs-kdc init)") from exc
