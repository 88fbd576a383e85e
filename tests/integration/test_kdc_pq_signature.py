"""The KDC's ML-DSA-65 signature with real processes (docs/security.md, "Post-quantum sealing"):
`krs-kdc identity pq-enable`, `krs-kdc serve`, `krs run` nodes with and without
`kdc.pq_verification_key`; a node with the key refuses, at stage `signature`, a distribution
whose `pq_signature` was removed, altered or made by another ML-DSA key, installing nothing."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import pytest
import yaml
from daemonkit import BIN, NODE, ZONE, Deployment, wait_until
from test_enrollment import create, krs_enroll
from test_hybrid_node import add_node, folder_tags, kdc_keys, rows_of

from krs_plugin.crypto import load_hpke_private
from krs_plugin.crypto.pqsig import METADATA_KEY, MldsaKey, load_mldsa_public
from krs_plugin.enrollment import BootstrapPackage
from krs_plugin.protocol import CHUNK_TYPE, build_manifest_record, decode_manifest
from krs_plugin.protocol.manifest import Manifest, ManifestMetadata

pytestmark = pytest.mark.integration


def pq_deployment(root: Path) -> Deployment:
    """A KDC with its ML-DSA key and ns1, a node that requires it."""
    deployment = Deployment(root, "hpke")
    out = json.loads(deployment.kdc("--json", "identity", "pq-enable"))
    pubkey = deployment.state / "keys" / "kdc.mldsa.pubkey"
    assert out["pubkey_file"] == str(pubkey)
    assert (deployment.state / "keys" / "kdc.mldsa.privatekey").stat().st_mode & 0o777 == 0o600
    assert load_mldsa_public(pubkey).fingerprint == out["fingerprint"]
    kdc = {**deployment.config["kdc"], "pq_verification_key": str(pubkey)}
    deployment.write_config(kdc=kdc)
    return deployment


def stored(deployment: Deployment, dist_id: str, node: str) -> list[Any]:
    db = sqlite3.connect(deployment.state / "kdc.db", timeout=30)
    try:
        rows = db.execute(
            "SELECT rdata FROM records WHERE distribution_id = ? AND node_id = ? ORDER BY sequence",
            (dist_id, node),
        ).fetchall()
    finally:
        db.close()
    return [
        dns.rdata.from_wire(dns.rdataclass.IN, CHUNK_TYPE, bytes(r[0]), 0, len(r[0])) for r in rows
    ]


def test_a_pq_node_and_a_classic_node_apply_the_same_distribution(tmp_path: Path) -> None:
    deployment = pq_deployment(tmp_path)
    try:
        deployment.start_kdc()
        deployment.start_krs()
        classic = add_node(deployment, "ns2.edge.example.", "hpke")  # no pq key configured
        dist_id = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: {r["status"] for r in rows_of(deployment, dist_id).values()} == {"confirmed"},
            90,
            lambda: f"{dist_id} confirmed by both:\n{deployment.all_logs()}",
        )
        expected = set(kdc_keys(deployment))
        assert folder_tags(deployment.node_dir / "keys") == expected
        assert folder_tags(classic) == expected
        for node in (NODE, "ns2.edge.example."):  # both manifests carry it; only ns1 checks it
            manifest = decode_manifest(stored(deployment, dist_id, node)[0].data)
            assert len(base64.b64decode(manifest.metadata.extra[METADATA_KEY])) == 3309
        audit = deployment.kdc("--json", "audit", "list")
        assert "identity.pq.enable" in audit
    finally:
        deployment.close()


def _other_key(extra: dict[str, Any], transport: bytes, dist_id: str) -> None:
    extra[METADATA_KEY] = MldsaKey.generate().sign(dist_id, NODE, transport)


def _altered(extra: dict[str, Any], transport: bytes, dist_id: str) -> None:
    raw = bytearray(base64.b64decode(extra[METADATA_KEY]))
    raw[7] ^= 0x80
    extra[METADATA_KEY] = base64.b64encode(bytes(raw)).decode()


def _removed(extra: dict[str, Any], transport: bytes, dist_id: str) -> None:
    del extra[METADATA_KEY]


CHANGES = {"removed": _removed, "altered": _altered, "other-key": _other_key}


@pytest.mark.parametrize("how", sorted(CHANGES))
def test_a_pq_node_refuses_a_bad_pq_signature_and_installs_nothing(
    tmp_path: Path, how: str
) -> None:
    deployment = pq_deployment(tmp_path)
    folder = deployment.node_dir / "keys"
    try:
        deployment.start_kdc()
        deployment.start_krs()
        first = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(first, timeout=60)
        before = folder_tags(folder)
        assert before == set(kdc_keys(deployment))

        deployment.stop("krs")  # the tampering happens while the node is away
        deployment.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK")
        dist_id = deployment.distribute("--zone", ZONE)
        records = stored(deployment, dist_id, NODE)
        manifest = decode_manifest(records[0].data)
        transport = manifest.payload or b"".join(r.data for r in records[1:])
        extra = dict(manifest.metadata.extra)
        CHANGES[how](extra, transport, dist_id)
        meta = ManifestMetadata(**{**manifest.metadata.__dict__, "extra": extra})
        changed = Manifest(manifest.chunk_count, meta, manifest.chunk_size, manifest.payload)
        # What an attacker on the path can do: the manifest HMAC is keyed with the node's
        # public key, so it is recomputed and the manifest itself passes.
        hmac_key = load_hpke_private(deployment.node_dir / "node.key").hmac_key
        wire = build_manifest_record(changed, hmac_key).to_wire()
        db = sqlite3.connect(deployment.state / "kdc.db", timeout=30)
        try:
            with db:
                db.execute(
                    "UPDATE records SET rdata = ? WHERE distribution_id = ? AND node_id = ? "
                    "AND sequence = 0",
                    (wire, dist_id, NODE),
                )
        finally:
            db.close()

        deployment.start_krs()

        def refused() -> list[dict[str, Any]]:
            return [
                r
                for r in deployment.status()
                if r.get("id") == dist_id and r.get("stage") == "signature"
            ]

        wait_until(refused, 90, lambda: f"{dist_id} refused:\n{deployment.all_logs()}")
        error = refused()[0]["error"]
        if how == "removed":
            assert "no post-quantum signature" in error
        else:
            assert "post-quantum (ML-DSA-65) signature does not verify" in error
        assert folder_tags(folder) == before  # the new ZSK was not installed
    finally:
        deployment.close()


def test_a_node_enrolled_from_a_pq_kdc_requires_the_pq_signature(tmp_path: Path) -> None:
    """The package carries the KDC's ML-DSA key; `krs enroll` writes it and names it in
    krs.yaml; the node's first distribution is checked with it (and refused without it)."""
    deployment = Deployment(tmp_path / "kdc", "hpke")
    out = json.loads(deployment.kdc("--json", "identity", "pq-enable"))
    try:
        deployment.start_kdc()
        package = create(deployment, tmp_path)
        assert BootstrapPackage.parse(package.read_text()).kdc_pq_key() is not None
        node = tmp_path / "node"
        result = krs_enroll(package, node)
        assert result.returncode == 0, result.stderr
        config = yaml.safe_load((node / "krs.yaml").read_text())
        pq_file = Path(config["kdc"]["pq_verification_key"])
        assert load_mldsa_public(pq_file).fingerprint == out["fingerprint"]
        deployment.start("krs-new", [str(BIN / "krs"), "run", "-c", str(node / "krs.yaml")])

        def confirmed() -> bool:
            mine = [d for d in deployment.distributions() if d["node_id"] == "ns2.edge.example."]
            return bool(mine) and all(d["status"] == "confirmed" for d in mine)

        wait_until(confirmed, 60, lambda: f"ns2 confirmed:\n{deployment.all_logs()}")
    finally:
        deployment.close()
