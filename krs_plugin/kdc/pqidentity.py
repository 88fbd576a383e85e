"""The KDC's ML-DSA-65 signing key: enabled once, then used for every distribution.

A 0600 file in the state directory's ``keys/`` whatever the custody: SoftHSM2 2.6.1 (the lab's
token) has no ML-DSA mechanism (docs/security.md, "Post-quantum sealing"). The file is read at
each distribution (cached by its inode and mtime), so a running ``krs-kdc serve`` signs with it
from the first distribution after ``krs-kdc identity pq-enable``.
"""

from __future__ import annotations

import os
from pathlib import Path

from krs_plugin.crypto.pqsig import (
    MldsaKey,
    load_mldsa_private,
    write_mldsa_private,
    write_mldsa_public,
)
from krs_plugin.errors import ConfigError, KeyFileError

PRIVATE_FILE = "kdc.mldsa.privatekey"
PUBLIC_FILE = "kdc.mldsa.pubkey"

_cache: dict[str, tuple[tuple[int, int, int], MldsaKey]] = {}


def enable(keys_dir: Path) -> MldsaKey:
    """Make the KDC's ML-DSA-65 key; refuses when one exists (a key nodes trust is never
    silently replaced)."""
    private = keys_dir / PRIVATE_FILE
    if private.exists():
        raise ConfigError(f"{private}: the KDC already has an ML-DSA key; refusing to replace it")
    if not keys_dir.is_dir():
        raise ConfigError(f"{keys_dir}: no KDC keys directory (run: krs-kdc init)")
    key = MldsaKey.generate()
    write_mldsa_public(
        keys_dir / PUBLIC_FILE,
        key,
        comment="KDC ML-DSA-65 public key: set it on a KRS as kdc.pq_verification_key",
    )
    write_mldsa_private(private, key, comment="KDC ML-DSA-65 signing key (post-quantum)")
    return key


def pq_signer(keys_dir: Path) -> MldsaKey | None:
    """The KDC's ML-DSA key, or None when none is enabled. An unreadable key file is an error,
    never a silent fall-back to unsigned distributions nodes would refuse."""
    path = keys_dir / PRIVATE_FILE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the KDC's ML-DSA key: {exc}") from exc
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _cache.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        key = load_mldsa_private(path)
    except KeyFileError as exc:
        raise ConfigError(f"the KDC's ML-DSA key: {exc}") from exc
    _cache[str(path)] = (stamp, key)
    return key
