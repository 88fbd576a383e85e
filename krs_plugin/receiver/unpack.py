"""From fetched CHUNK records to the verified cleartext of one distribution (the KRS half).

Order matters and is fixed here: manifest HMAC and freshness, recipient, limits, reassembly, the
KDC's signatures (ML-DSA-65 when configured, then the JWS), and only then decryption. Each step
raises its own error type, naming the distribution, so an operator can tell *where* a
distribution failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.name
from cryptography.exceptions import InvalidSignature

from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, open_envelope
from krs_plugin.crypto.pqsig import METADATA_KEY, MldsaKey, verify_distribution
from krs_plugin.errors import DecryptionError, IntegrityError, PolicyError, SignatureError
from krs_plugin.protocol import (
    CHUNK,
    Limits,
    Manifest,
    check_freshness,
    check_node_id,
    decode_manifest,
    read_manifest_record,
    reassemble,
)
from krs_plugin.protocol.manifest import DEFAULT_CLOCK_SKEW


@dataclass(frozen=True)
class NodeIdentity:
    """This node: its id and the private keys of the backends it supports."""

    node_id: dns.name.Name
    hpke: HpkeKey | None = None
    jose: JoseKey | None = None
    hybrid: HybridKey | None = None  # the hpke-pq backend's ML-KEM-768 + X25519 key
    # Node-key rotation (receiver/rekey.py): keys read from disk when the loaded one does not
    # fit a distribution's manifest (sealed to the key before or after a rotation).
    alternates: Callable[[str], Sequence[HpkeKey | JoseKey | HybridKey]] | None = field(
        default=None, compare=False, repr=False
    )

    def key_for(self, backend: str, where: str) -> HpkeKey | JoseKey | HybridKey:
        keys: dict[str, HpkeKey | JoseKey | HybridKey | None] = {
            "hpke": self.hpke,
            "jose": self.jose,
            "hpke-pq": self.hybrid,
        }
        key = keys.get(backend)
        if key is None:
            held = ", ".join(name for name, k in keys.items() if k is not None) or "none"
            raise DecryptionError(
                f"{where}: sealed with {backend!r} but this node has no such key (its keys: "
                f"{held}); the KDC must list the node with the backend of its key"
            )
        return key


@dataclass(frozen=True)
class Unpacked:
    """A distribution whose integrity, signature and encryption all checked out."""

    distribution_id: str
    manifest: Manifest
    signed: bool
    plaintext: bytes = field(repr=False)
    verified_by: JoseKey | None = None  # the trusted KDC key the signature verified with
    opened_with: HpkeKey | JoseKey | HybridKey | None = field(default=None, repr=False)


def unpack_distribution(
    distribution_id: str,
    manifest_record: CHUNK,
    chunk_records: Iterable[CHUNK],
    node: NodeIdentity,
    verifier: JoseKey | Sequence[JoseKey] | None,
    *,
    now: float,
    limits: Limits | None = None,
    allow_unsigned: bool = False,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    pq_verifiers: Sequence[MldsaKey] = (),
) -> Unpacked:
    """Check and open one distribution addressed to ``node``.

    A list of ``chunk_records`` is emptied once they are joined (what ``krs run`` passes), so a
    distribution of tens of megabytes is not held as chunks and as one string at once.
    """
    limits = limits or Limits()
    where = f"distribution {distribution_id} for {node.node_id}"
    # The HMAC key depends on the backend named inside the manifest (tdns reads it first too).
    peeked = decode_manifest(manifest_record.data, max_payload_bytes=limits.max_total_bytes)
    try:
        key = node.key_for(peeked.metadata.crypto, where)
    except DecryptionError:
        # A move to another backend (krs rekey --backend; docs/enrollment.md section 7): the new
        # backend's key is on disk before krs run has reloaded it.
        found = list(node.alternates(peeked.metadata.crypto)) if node.alternates else []
        if not found:
            raise
        key = found[0]
    try:
        manifest = read_manifest_record(
            manifest_record, key.hmac_key, where=where, max_payload_bytes=limits.max_total_bytes
        )
    except IntegrityError:
        # The HMAC is keyed with the node's public key: another key of a rotation may fit.
        others = node.alternates(peeked.metadata.crypto) if node.alternates else ()
        fitting = [k for k in others if k.hmac_key != key.hmac_key]
        for other in fitting:
            try:
                manifest = read_manifest_record(
                    manifest_record, other.hmac_key, where=where,
                    max_payload_bytes=limits.max_total_bytes,
                )  # fmt: skip
            except IntegrityError:
                continue
            key = other
            break
        else:
            raise
    check_freshness(
        manifest,
        now=now,
        expected_distribution_id=distribution_id,
        clock_skew=clock_skew,
        where=where,
    )
    receiver = manifest.metadata.receiver_id
    if receiver is not None and check_node_id(receiver) != check_node_id(node.node_id):
        raise PolicyError(f"{where}: addressed to node {receiver}, not to this node")
    transport = [reassemble(manifest, chunk_records, limits, where=where)]
    if isinstance(chunk_records, list):
        chunk_records.clear()  # joined: a big distribution is not held twice while it is opened
    if pq_verifiers:
        # The KDC's ML-DSA-65 signature, required when this node has its key: checked before the
        # JWS and before any decryption (docs/security.md, "Post-quantum sealing").
        verify_distribution(
            list(pq_verifiers),
            manifest.metadata.extra.get(METADATA_KEY),
            distribution_id,
            receiver or node.node_id.to_text(),
            transport[0],
            where,
        )
    # Each trusted KDC key in turn (kdctrust.trusted_keys: the one that verified last first);
    # several only during a signing-key roll (docs/security.md, "Rotation").
    verifiers = [verifier] if isinstance(verifier, JoseKey) else list(verifier or ())
    for index, candidate in enumerate(verifiers or [None]):
        last = index >= len(verifiers) - 1
        try:
            opened = open_envelope(
                transport.pop() if last else transport[0],  # the last try: its only reference
                backend=manifest.metadata.crypto,
                recipient=key,
                verifier=candidate,
                allow_unsigned=allow_unsigned,
                where=where,
            )
        except SignatureError as exc:
            if not isinstance(exc.__cause__, InvalidSignature):
                raise  # not signed, or malformed: no other key changes that
            if last:
                raise untrusted_signature(where, verifiers) from exc
            continue
        return Unpacked(
            distribution_id, manifest, opened.signed, opened.plaintext,
            verified_by=candidate if opened.signed else None, opened_with=key,
        )  # fmt: skip
    raise AssertionError("unreachable: the last try returns or raises")


def untrusted_signature(where: str, trusted: Sequence[JoseKey]) -> SignatureError:
    """The refusal of a distribution no trusted key verifies. The JWS header names no key
    (tdns's header, byte for byte), so the node cannot tell a new KDC key from a forgery; it
    says what to check, and never trusts a key on its own (docs/security.md, "Rotation")."""
    names = ", ".join(k.thumbprint for k in trusted)
    return SignatureError(
        f"{where}: KDC signature does not verify with any KDC key this node trusts ({names}): "
        "the KDC's signing key has changed (a key roll this node missed while offline) or the "
        "distribution was altered. Get the KDC's current kdc.signing.pubkey, compare its "
        "thumbprint with the one the KDC operator reads from 'krs-kdc identity status', then "
        "run: krs trust-kdc-key FILE --fingerprint=THUMBPRINT (docs/security.md, 'Rotation')"
    )
