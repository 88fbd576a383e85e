"""Turn one node's cleartext into the CHUNK records the KDC publishes (docs/protocol.md sections
3-4).

This is the KDC half of the distribution format; ``receiver.unpack`` is the other half. Both use the
same protocol and crypto modules, so there is one implementation of each idea.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dns.name

from krs_plugin.crypto import Backend, HpkeKey, HybridKey, JoseKey, seal_envelope
from krs_plugin.crypto.pqsig import METADATA_KEY, MldsaKey
from krs_plugin.protocol import (
    CHUNK,
    CHUNK_TYPE,
    DEFAULT_CHUNK_SIZE,
    ManifestMetadata,
    build_chunk_records,
    check_distribution_id,
    check_node_id,
)
from krs_plugin.protocol.chunking import INLINE_MAX
from krs_plugin.protocol.manifest import DEFAULT_DISTRIBUTION_TTL

DEFAULT_RETIRE_TIME = 168 * 3600


@dataclass(frozen=True)
class NodeRecipient:
    """What the KDC knows of a node: its id, its backend and the public key for that backend."""

    node_id: dns.name.Name
    backend: Backend
    key: HpkeKey | JoseKey | HybridKey

    @property
    def hmac_key(self) -> bytes:
        return self.key.hmac_key


def build_distribution(
    plaintext: bytes,
    recipient: NodeRecipient,
    signer: JoseKey,
    distribution_id: str,
    *,
    now: float,
    content: str = "key_operations",
    counts: Mapping[str, int] | None = None,
    distribution_ttl: int = DEFAULT_DISTRIBUTION_TTL,
    retire_time: int | None = DEFAULT_RETIRE_TIME,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    inline_max: int = INLINE_MAX,
    rdtype: int = CHUNK_TYPE,
    pq_signer: MldsaKey | None = None,
) -> list[CHUNK]:
    """Seal, sign and split ``plaintext`` for ``recipient``: manifest first, then chunks 1..N.
    ``pq_signer``: the KDC's ML-DSA-65 key, when enabled; its signature goes into the manifest's
    metadata as ``pq_signature`` and the JWS is untouched (docs/protocol.md section 4)."""
    node_id = check_node_id(recipient.node_id)
    check_distribution_id(distribution_id)
    timestamp = int(now)
    headers: dict[str, Any] = {
        "distribution_id": distribution_id,
        "timestamp": datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sender": "kdc",
        "content_type": content,
        "peer_id": node_id.to_text(),
    }
    transport = seal_envelope(
        plaintext,
        backend=recipient.backend,
        recipient=recipient.key,
        signer=signer,
        headers=headers if recipient.backend == "jose" else None,
    )
    metadata = ManifestMetadata(
        distribution_id=distribution_id,
        content=content,
        receiver_id=node_id.to_text(),
        timestamp=timestamp,
        distribution_ttl=distribution_ttl,
        retire_time=retire_time,
        crypto=recipient.backend,
        counts=dict(counts or {}),
        extra={}
        if pq_signer is None
        else {METADATA_KEY: pq_signer.sign(distribution_id, node_id.to_text(), transport)},
    )
    return build_chunk_records(
        transport,
        metadata,
        recipient.hmac_key,
        chunk_size=chunk_size,
        inline_max=inline_max,
        rdtype=rdtype,
    )
