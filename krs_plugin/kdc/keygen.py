"""Keys the KDC makes and stores: ``key generate``, ``key import`` and the lifecycle engine's
new keys go through here, so every one is stored the same way and a new key never takes a tag
the zone already has (removed keys included: kdc.db keeps them, and refuses a second key with
the same tag and algorithm)."""

from __future__ import annotations

from krs_plugin.dnssec import DnssecKey, generate_key
from krs_plugin.kdc.store import KeyRow, Store

ROLE_FLAGS = {"ZSK": 256, "KSK": 257, "CSK": 257}


def store_key(
    store: Store,
    zone: str,
    key: DnssecKey,
    role: str,
    *,
    now: int,
    publish_at: int | None = None,
    activate_at: int | None = None,
    inactive_at: int | None = None,
    delete_at: int | None = None,
    origin: str = "generate",
) -> KeyRow:
    """Store ``key``; its audit entry (``key.generate`` or ``key.import``) carries its DS
    (SHA-256) for a KSK or CSK, and never the private key."""
    ds = None
    if key.flags & 1:  # SEP: a KSK or CSK
        import dns.dnssec

        ds = dns.dnssec.make_ds(key.zone, key.dnskey, "SHA256").to_text()
    return store.add_key(
        zone,
        key_tag=key.key_tag,
        role=role,
        algorithm=key.algorithm,
        flags=key.flags,
        private_pem=key.to_pkcs8_pem(),
        publish_at=publish_at,
        activate_at=activate_at,
        inactive_at=inactive_at,
        delete_at=delete_at,
        now=now,
        origin=origin,
        audit_details={"ds": ds} if ds else None,
    )


def new_key(
    store: Store,
    zone: str,
    role: str,
    algorithm: int,
    *,
    now: int,
    ttl: int | None = None,
    publish_at: int | None = None,
    activate_at: int | None = None,
    inactive_at: int | None = None,
    delete_at: int | None = None,
) -> KeyRow:
    """A freshly generated key of ``role``, drawn again while its tag is taken in ``zone`` (a
    zone after many rollovers holds dozens of tags, so some zone of thousands meets one at every
    round of rollovers)."""
    taken = {k.key_tag for k in store.keys(zone) if k.algorithm == algorithm}
    while True:
        if ttl is None:
            key = generate_key(zone, algorithm, ROLE_FLAGS[role])
        else:
            key = generate_key(zone, algorithm, ROLE_FLAGS[role], ttl=ttl)
        if key.key_tag not in taken:
            break
    return store_key(
        store, zone, key, role, now=now, publish_at=publish_at, activate_at=activate_at,
        inactive_at=inactive_at, delete_at=delete_at,
    )  # fmt: skip
