"""The KDC's ML-DSA-65 signature beside ES256 (docs/protocol.md section 4, "The `pq_signature`
metadata key"): built by ``kdc.build``, checked by ``receiver.unpack`` before the JWS and any
decryption; tdns framing (the JWS, the chunks) untouched."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import dns.name
import pytest

import krs_plugin.kdc.build as build_module
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.crypto.pqsig import (
    METADATA_KEY,
    SIGNATURE_BYTES,
    MldsaKey,
    load_mldsa_private,
    load_mldsa_public,
    signed_input,
    write_mldsa_private,
    write_mldsa_public,
)
from krs_plugin.errors import SignatureError, stage_of
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.protocol import CHUNK, build_manifest_record, decode_manifest
from krs_plugin.protocol.manifest import Manifest, ManifestMetadata
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

NODE = dns.name.from_text("ns1.edge.example.")
DIST = "0000000000000001"
PLAIN = b'{"entries":[]}' * 200  # chunked, not inline


def setup() -> tuple[HpkeKey, JoseKey, MldsaKey]:
    return HpkeKey.generate(), JoseKey.generate(), MldsaKey.generate()


def make(node_key: HpkeKey, signer: JoseKey, pq: MldsaKey | None, now: float) -> list[CHUNK]:
    recipient = NodeRecipient(NODE, "hpke", node_key.public_only())
    return build_distribution(PLAIN, recipient, signer, DIST, now=now, pq_signer=pq)


def opened(
    records: list[CHUNK], node_key: HpkeKey, signer: JoseKey, pq: list[MldsaKey], now: float
) -> bytes:
    node = NodeIdentity(NODE, hpke=node_key)
    out = unpack_distribution(
        DIST, records[0], list(records[1:]), node, signer.public_only(), now=now, pq_verifiers=pq
    )
    return out.plaintext


def with_metadata(records: list[CHUNK], node_key: HpkeKey, change: Any) -> list[CHUNK]:
    """The manifest rewritten as an attacker on the path can: the HMAC is keyed with the node's
    public key, so it is recomputed."""
    manifest = decode_manifest(records[0].data)
    extra = dict(manifest.metadata.extra)
    change(extra)
    meta = ManifestMetadata(**{**manifest.metadata.__dict__, "extra": extra})
    new = Manifest(manifest.chunk_count, meta, manifest.chunk_size, manifest.payload)
    return [build_manifest_record(new, node_key.hmac_key), *records[1:]]


def test_a_pq_node_opens_a_pq_signed_distribution_and_a_classic_node_ignores_the_key() -> None:
    node_key, signer, pq = setup()
    now = time.time()
    records = make(node_key, signer, pq, now)
    manifest = json.loads(records[0].data)
    assert len(base64.b64decode(manifest["metadata"][METADATA_KEY])) == SIGNATURE_BYTES
    assert opened(records, node_key, signer, [pq.public_only()], now) == PLAIN
    assert opened(records, node_key, signer, [], now) == PLAIN  # classic node: ignored


def test_the_jws_and_the_chunks_are_unchanged_by_the_pq_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tdns framing: the transport string T (the JWS) is what seal_envelope made, byte for byte,
    with or without the ML-DSA key; only the manifest's metadata gains ``pq_signature``."""
    node_key, signer, pq = setup()
    sealed: list[bytes] = []
    real = build_module.seal_envelope

    def spy(*args: Any, **kwargs: Any) -> bytes:
        sealed.append(real(*args, **kwargs))
        return sealed[-1]

    monkeypatch.setattr(build_module, "seal_envelope", spy)
    now = time.time()
    classic = make(node_key, signer, None, now)
    signed = make(node_key, signer, pq, now)
    for records, transport in ((classic, sealed[0]), (signed, sealed[1])):
        assert b"".join(r.data for r in records[1:]) == transport
        header = json.loads(base64.urlsafe_b64decode(base64.b64decode(transport).split(b".")[0]))
        assert header == {"alg": "ES256", "cty": "application/octet-stream", "typ": "JWS"}
    meta_classic = json.loads(classic[0].data)["metadata"]
    meta_signed = json.loads(signed[0].data)["metadata"]
    assert METADATA_KEY not in meta_classic
    assert {k: v for k, v in meta_signed.items() if k != METADATA_KEY} == meta_classic
    assert [(r.sequence, r.total) for r in signed] == [(r.sequence, r.total) for r in classic]


def _drop(extra: dict[str, Any]) -> None:
    del extra[METADATA_KEY]


def _flip(extra: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(extra[METADATA_KEY]))
    raw[100] ^= 0x01
    extra[METADATA_KEY] = base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("removed", "no post-quantum signature"),
        ("altered", "does not verify"),
        ("other-key", "does not verify"),
        ("garbage", "not standard base64"),
        ("short", "an ML-DSA-65 signature is 3309"),
    ],
)
def test_a_pq_node_refuses_at_stage_signature(how: str, message: str) -> None:
    node_key, signer, pq = setup()
    now = time.time()
    records = make(node_key, signer, pq, now)
    other = MldsaKey.generate()
    transport = b"".join(r.data for r in records[1:])

    def other_key(extra: dict[str, Any]) -> None:
        extra[METADATA_KEY] = other.sign(DIST, NODE.to_text(), transport)

    changes = {
        "removed": _drop,
        "altered": _flip,
        "other-key": other_key,
        "garbage": lambda e: e.__setitem__(METADATA_KEY, "!!"),
        "short": lambda e: e.__setitem__(METADATA_KEY, base64.b64encode(b"x" * 10).decode()),
    }
    bad = with_metadata(records, node_key, changes[how])
    with pytest.raises(SignatureError, match=message) as caught:
        opened(bad, node_key, signer, [pq.public_only()], now)
    assert stage_of(caught.value) == "signature"


def test_the_signature_binds_the_node_and_the_distribution() -> None:
    transport = b"T"
    base = signed_input(DIST, "ns1.edge.example.", transport)
    assert base != signed_input("0000000000000002", "ns1.edge.example.", transport)
    assert base != signed_input(DIST, "ns2.edge.example.", transport)
    assert base != signed_input(DIST, "ns1.edge.example.", b"U")
    assert base.startswith(b"krs-plugin distribution v1")


def test_key_files_round_trip_and_the_private_file_is_0600(tmp_path: Path) -> None:
    key = MldsaKey.generate()
    write_mldsa_private(tmp_path / "k", key)
    write_mldsa_public(tmp_path / "k.pub", key)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    again = load_mldsa_private(tmp_path / "k")
    assert again.fingerprint == key.fingerprint == load_mldsa_public(tmp_path / "k.pub").fingerprint
    assert key.private is not None
    assert key.private.private_bytes_raw().hex() not in repr(key)
