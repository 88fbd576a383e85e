"""The KDC's own keys: X25519 (HPKE, enrollment), P-256 for JOSE, and the P-256 signing key.

Private files are 0600; each has a ``.pubkey`` beside it for operators to hand to nodes (the
signing public key is what every KRS configures as its KDC verification key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from krs_plugin.kdc.custody import Custody

HPKE_FILE = "kdc.hpke.privatekey"
JOSE_FILE = "kdc.jose.privatekey"
SIGNING_FILE = "kdc.signing.privatekey"


@dataclass(frozen=True)
class KdcIdentity:
    hpke: HpkeKey
    jose: JoseKey
    signer: JoseKey


def create_identity(directory: Path, *, signer: JoseKey | None = None) -> KdcIdentity:
    """Make and write a new identity; refuses to overwrite an existing one. ``signer``: a
    signing key kept elsewhere (a PKCS#11 token's, kdc/custody.py): only its public key is
    written; otherwise a new one is made and written 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (HPKE_FILE, JOSE_FILE, SIGNING_FILE):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name}: KDC keys already exist; refusing to replace")
    identity = KdcIdentity(HpkeKey.generate(), JoseKey.generate(), signer or JoseKey.generate())
    write_hpke_private(directory / HPKE_FILE, identity.hpke, comment="KDC X25519 (HPKE) key")
    write_hpke_public(directory / "kdc.hpke.pubkey", identity.hpke, comment="KDC X25519 public")
    write_jose_private(directory / JOSE_FILE, identity.jose, comment="KDC P-256 (JOSE) key")
    write_jose_public(directory / "kdc.jose.pubkey", identity.jose, comment="KDC P-256 public")
    if signer is None:
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


def load_identity(directory: Path, custody: Custody | None = None) -> KdcIdentity:
    """The KDC's keys in ``directory`` (the state directory's ``keys/``); the signing key from
    its custody (``Store.custody``; by default the one kdc.db beside ``directory`` records): the
    0600 file, or a PKCS#11 token's key that signs without leaving it."""
    if custody is None:
        custody = custody_beside(directory)
    try:
        hpke = load_hpke_private(directory / HPKE_FILE)
        jose = load_jose_key(directory / JOSE_FILE)
        if custody.kind == "pkcs11":
            return KdcIdentity(hpke, jose, custody.signing_key())
        return KdcIdentity(hpke, jose, load_jose_key(directory / SIGNING_FILE))
    except KeyFileError as exc:
        raise ConfigError(f"KDC keys in {directory}: {exc} (run: krs-kdc init)") from exc


def custody_beside(directory: Path) -> Custody:
    """The custody kdc.db next to ``directory`` records (legacy when there is none)."""
    import sqlite3
    import urllib.parse

    from krs_plugin.kdc.custody import META_KEY, CustodySettings, open_custody

    state = directory.parent
    text = None
    db_path = state / "kdc.db"
    if db_path.exists():
        uri = "file:" + urllib.parse.quote(str(db_path.resolve())) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            row = None
        text = None if row is None else str(row[0])
    return open_custody(state, CustodySettings.loads(text))
