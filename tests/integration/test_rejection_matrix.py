"""Issue 4's acceptance matrix for the pipeline: what it must accept and what it must refuse.

Accepted: the tdns golden vector (Go output, a ping) and a JWS(JWE) built entirely by joserfc.
Refused, each with its own error and stage: flipped byte, wrong signer, other recipient, sealed to
another key, replay, older serial, expired window, zone not served here, unsigned without opt-in.
Every case runs through the real pipeline, state store and directory adapter of `krs fetch`/`krs
run`; the outcome must show in `krs status` (the real CLI), and a refusal must leave the key
directory byte for byte as it was. The same refusals in front of a real named (9.18 and 9.20)
leave it serving, and signing with, exactly the keys it served.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.name
import pytest
from joserfc import jwe as rfc_jwe
from joserfc import jws as rfc_jws
from joserfc.jwk import ECKey

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters import make_adapter
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.keyfiles import KeyFolder
from krs_plugin.config import load_config
from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    load_jose_key,
    write_hpke_private,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.dnssec import KeyTiming, generate_key, read_bind_key_pair, write_bind_key_pair
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import encode_payload, roll_key_entry
from krs_plugin.protocol import CHUNK, ManifestMetadata, build_chunk_records
from krs_plugin.receiver.pipeline import Outcome, Pipeline, load_identity
from krs_plugin.receiver.store import ReceiverStore
from tests.adapters.servers import Served

BIN = Path(sys.executable).parent
VECTORS = Path(__file__).resolve().parent.parent / "data" / "tdns-transport"
ZONE = "example.com."
CZ = "kdc.example."


@dataclass
class Node:
    """One KRS node on disk (krs.yaml, keys, state) with the KDC key that signs for it."""

    folder: Path
    node_id: dns.name.Name
    backend: str
    key: HpkeKey | JoseKey
    kdc: JoseKey

    @property
    def config_path(self) -> Path:
        return self.folder / "krs.yaml"

    @property
    def keys(self) -> Path:
        return self.folder / "keys"

    def key_directory(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.keys.iterdir())}

    def process(self, dist_id: str, records: list[CHUNK]) -> Outcome:
        config = load_config(self.config_path)
        identity, verifier, _ = load_identity(config)
        store = ReceiverStore(config.state)
        try:
            pipeline = Pipeline(config, make_adapter(config), store, identity, verifier)
            return pipeline.process(dist_id, records[0], tuple(records[1:]))
        finally:
            store.close()

    def status(self) -> dict[str, dict[str, str]]:
        """``krs status --json`` by the real command, keyed by distribution id."""
        result = subprocess.run(
            [str(BIN / "krs"), "status", "-c", str(self.config_path), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return {row["id"]: row for row in json.loads(result.stdout)}

    def recipient(self, node_id: str | None = None) -> NodeRecipient:
        name = dns.name.from_text(node_id) if node_id else self.node_id
        return NodeRecipient(name, self.backend, self.key.public_only())  # type: ignore[arg-type]


def make_node(
    folder: Path,
    backend: str,
    *,
    node_id: str = "ns1.edge.example.",
    key: HpkeKey | JoseKey | None = None,
    kdc: JoseKey | None = None,
    adapter: dict[str, object] | None = None,
) -> Node:
    (folder / "keys").mkdir(parents=True)
    kdc = kdc or JoseKey.generate()
    if backend == "hpke":
        key = key or HpkeKey.generate()
        write_hpke_private(folder / "node.key", key)  # type: ignore[arg-type]
    else:
        key = key or JoseKey.generate()
        write_jose_private(folder / "node.key", key)  # type: ignore[arg-type]
    write_jose_public(folder / "kdc.pub", kdc.public_only(), use="sig")
    (folder / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": node_id,
                "keys": {backend: "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": CZ,
                "control_servers": ["127.0.0.1:9"],
                "adapter": adapter or {"type": "directory", "settings": {"path": "keys"}},
                "zones": [ZONE],
                "state": "krs.db",
            }
        )
    )
    # A key already installed: a refusal must leave it exactly as it is.
    write_bind_key_pair(folder / "keys", generate_key(ZONE, 13, 257))
    return Node(folder, dns.name.from_text(node_id), backend, key, kdc)


def new_id(offset: int = 0) -> str:
    return f"{int(time.time()) + offset:x}"


def key_distribution(
    node: Node,
    dist_id: str,
    *,
    zone: str = ZONE,
    signer: JoseKey | None = None,
    recipient: NodeRecipient | None = None,
    now: float | None = None,
    window: dict[str, int] | None = None,
) -> list[CHUNK]:
    """A ZSK for ``zone`` as our KDC builds it, split into several chunks."""
    moment = time.time() if now is None else now
    entry = roll_key_entry(
        generate_key(zone, 13, 256), "ZSK", distribution_id=dist_id, **(window or {})
    )
    return build_distribution(
        encode_payload([entry]),
        recipient or node.recipient(),
        signer or node.kdc,
        dist_id,
        now=moment,
        chunk_size=200,
        inline_max=0,
    )


def wrap(node: Node, dist_id: str, transport: bytes, node_id: str | None = None) -> list[CHUNK]:
    """Records around a transport string sealed elsewhere (tdns, joserfc, unsigned)."""
    metadata = ManifestMetadata(
        distribution_id=dist_id,
        content="key_operations",
        receiver_id=node_id or node.node_id.to_text(),
        timestamp=int(time.time()),
        distribution_ttl=300,
        retire_time=None,
        crypto=node.backend,
        counts={},
    )
    return build_chunk_records(transport, metadata, node.key.hmac_key, chunk_size=300)


def installed(node: Node) -> set[int]:
    return {read_bind_key_pair(p)[0].key_tag for p in node.keys.glob("*.private")}


# --- accepted ---------------------------------------------------------------------------------


def test_the_tdns_golden_vector_is_accepted_and_confirmed_as_a_ping(tmp_path: Path) -> None:
    # Sealed by tdns's Go code for node b.example., signed with a.pub.json's key.
    node = make_node(
        tmp_path,
        "jose",
        node_id="b.example.",
        key=load_jose_key(VECTORS / "b.priv.json"),
        kdc=load_jose_key(VECTORS / "a.pub.json"),
    )
    before = node.key_directory()
    dist_id = new_id()
    transport = (VECTORS / "a-to-b.wire").read_bytes().rstrip(b"\n")
    outcome = node.process(dist_id, wrap(node, dist_id, transport))
    assert (outcome.outcome, outcome.error) == ("applied", None)
    assert outcome.report["successful_keys"] == [{"zone_name": "ping", "key_id": "nonce-n-1"}]
    assert node.key_directory() == before  # a ping installs nothing
    assert node.status()[dist_id]["outcome"] == "applied"


def test_an_envelope_built_entirely_by_joserfc_installs_its_key(tmp_path: Path) -> None:
    node = make_node(tmp_path, "jose")
    dist_id = new_id()
    key = generate_key(ZONE, 15, 256)
    cleartext = encode_payload([roll_key_entry(key, "ZSK", distribution_id=dist_id)])
    recipient = ECKey.import_key(node.key.public_jwk)  # type: ignore[union-attr]
    inner = rfc_jwe.encrypt_compact(
        {"alg": "ECDH-ES", "enc": "A256GCM", "typ": "tdns-distribution"},
        cleartext,
        recipient,
        registry=rfc_jwe.JWERegistry(algorithms=["ECDH-ES", "A256GCM"], strict_check_header=False),
    )
    signed = rfc_jws.serialize_compact(
        {"alg": "ES256", "cty": "application/octet-stream", "typ": "JWS"},
        inner,
        ECKey.import_key(node.kdc.private_jwk()),
        algorithms=["ES256"],
    )
    transport = base64.b64encode(signed.encode())
    outcome = node.process(dist_id, wrap(node, dist_id, transport))
    assert (outcome.outcome, outcome.error) == ("applied", None)
    assert key.key_tag in installed(node)
    written = read_bind_key_pair(next(node.keys.glob(f"*+015+{key.key_tag:05d}.private")))[0]
    assert written.dnskey == key.dnskey
    assert node.status()[dist_id]["outcome"] == "applied"


# --- refused ------------------------------------------------------------------------------------


def flipped_manifest_byte(node: Node, dist_id: str) -> list[CHUNK]:
    records = key_distribution(node, dist_id)
    manifest = records[0]
    altered = manifest.data.replace(b"168h0m0s", b"169h0m0s")  # retire a day later
    return [manifest.replace(data=altered), *records[1:]]


def flipped_chunk_byte(node: Node, dist_id: str) -> list[CHUNK]:
    """One character of the signed content changed, by someone who re-made the manifest: its
    HMAC key is the node's public key, so only the KDC's signature can catch this."""
    records = key_distribution(node, dist_id)
    header, content, signature = base64.b64decode(b"".join(r.data for r in records[1:])).split(b".")
    middle = len(content) // 2
    flipped = b"B" if content[middle : middle + 1] != b"B" else b"C"
    content = content[:middle] + flipped + content[middle + 1 :]
    return wrap(node, dist_id, base64.b64encode(b".".join((header, content, signature))))


def wrong_signer(node: Node, dist_id: str) -> list[CHUNK]:
    return key_distribution(node, dist_id, signer=JoseKey.generate())


def other_recipient(node: Node, dist_id: str) -> list[CHUNK]:
    return key_distribution(node, dist_id, recipient=node.recipient("ns2.edge.example."))


def sealed_to_another_key(node: Node, dist_id: str) -> list[CHUNK]:
    stranger = HpkeKey.generate() if node.backend == "hpke" else JoseKey.generate()
    recipient = NodeRecipient(node.node_id, node.backend, stranger.public_only())  # type: ignore[arg-type]
    records = key_distribution(node, dist_id, recipient=recipient)
    # The manifest HMAC is keyed by the node's public key, which anyone may know.
    transport = b"".join(r.data for r in records[1:])
    return wrap(node, dist_id, transport)


def stale_manifest(node: Node, dist_id: str) -> list[CHUNK]:
    return key_distribution(node, dist_id, now=time.time() - 3 * 86400)


def expired_window(node: Node, dist_id: str) -> list[CHUNK]:
    # A fresh manifest around content whose signed validity window has ended.
    now = int(time.time())
    return key_distribution(node, dist_id, window={"issued_at": now - 7200, "expires_at": now - 60})


def zone_not_served(node: Node, dist_id: str) -> list[CHUNK]:
    return key_distribution(node, dist_id, zone="other.example.")


def unsigned(node: Node, dist_id: str) -> list[CHUNK]:
    from krs_plugin.crypto import seal_envelope

    entry = roll_key_entry(generate_key(ZONE, 13, 256), "ZSK", distribution_id=dist_id)
    transport = seal_envelope(
        encode_payload([entry]),
        backend=node.backend,  # type: ignore[arg-type]
        recipient=node.key.public_only(),
        signer=None,
    )
    return wrap(node, dist_id, transport)


REFUSALS: dict[str, tuple[Callable[[Node, str], list[CHUNK]], str, str]] = {
    "flipped byte in the manifest": (flipped_manifest_byte, "integrity", "HMAC"),
    "flipped byte in a chunk": (flipped_chunk_byte, "signature", "does not verify"),
    "wrong signer": (wrong_signer, "signature", "does not verify"),
    "other recipient": (other_recipient, "policy", "addressed to node ns2.edge.example."),
    "sealed to another key": (sealed_to_another_key, "decryption", "to this key, or altered"),
    "stale manifest": (stale_manifest, "policy", "stale manifest"),
    "expired window": (expired_window, "policy", "expired"),
    "zone not served": (zone_not_served, "policy", "not served by this node: other.example."),
    "unsigned without opt-in": (unsigned, "signature", "unsigned"),
}


@pytest.mark.parametrize("backend", ["hpke", "jose"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_distribution_is_refused_recorded_and_writes_nothing(
    tmp_path: Path, backend: str, case: str
) -> None:
    make_records, stage, fragment = REFUSALS[case]
    node = make_node(tmp_path, backend)
    before = node.key_directory()
    dist_id = new_id()
    outcome = node.process(dist_id, make_records(node, dist_id))
    assert outcome.outcome == "rejected", outcome
    assert outcome.stage == stage, outcome.error
    assert fragment in (outcome.error or ""), outcome.error
    assert node.key_directory() == before
    row = node.status()[dist_id]
    assert (row["outcome"], row["stage"], row["error"]) == ("rejected", stage, outcome.error)


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_replay_and_an_older_serial_are_refused_after_a_newer_one(
    tmp_path: Path, backend: str
) -> None:
    node = make_node(tmp_path, backend)
    older, newer = new_id(-10), new_id()
    older_records = key_distribution(node, older)
    newer_records = key_distribution(node, newer)
    assert node.process(newer, newer_records).outcome == "applied"
    before = node.key_directory()
    replayed = node.process(newer, newer_records)
    stale = node.process(older, older_records)
    assert (replayed.outcome, replayed.stage) == ("rejected", "policy")
    assert "already applied (replay)" in (replayed.error or "")
    assert (stale.outcome, stale.stage) == ("rejected", "policy")
    assert "not newer than the last applied" in (stale.error or "")
    assert node.key_directory() == before
    rows = node.status()
    assert rows[newer]["outcome"] == "applied"  # the replay did not overwrite the good record
    assert (rows[older]["outcome"], rows[older]["stage"]) == ("rejected", "policy")


def test_unsigned_is_accepted_only_with_the_explicit_opt_in(tmp_path: Path) -> None:
    node = make_node(tmp_path, "hpke")
    settings = json.loads(node.config_path.read_text())
    settings["kdc"]["allow_unsigned"] = True
    node.config_path.write_text(json.dumps(settings))
    dist_id = new_id()
    outcome = node.process(dist_id, unsigned(node, dist_id))
    assert (outcome.outcome, outcome.error) == ("applied", None)
    assert len(installed(node)) == 2


# --- the same refusals in front of a real named, both generations ------------------------------


def test_every_refusal_leaves_named_serving_the_keys_it_served(
    tmp_path: Path, bind9_named: Bind9Lab
) -> None:
    settings = {**bind9_named.adapter_settings(), "verify_timeout": 5}
    node = make_node(tmp_path / "node", "hpke", adapter={"type": "bind9", "settings": settings})
    zone = dns.name.from_text(ZONE)
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    plan = KeyPlan(zone, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
    Bind9Adapter(settings, zones=[zone]).apply(zone, plan)
    before = Served(bind9_named.host, bind9_named.port, ZONE)
    assert before.tags == {ksk.key_tag, zsk.key_tag}
    keys_before = KeyFolder(bind9_named.key_directory).read_keys(zone)
    for offset, (case, (make_records, stage, fragment)) in enumerate(REFUSALS.items()):
        dist_id = new_id(offset)
        outcome = node.process(dist_id, make_records(node, dist_id))
        assert (outcome.outcome, outcome.stage) == ("rejected", stage), (case, outcome.error)
        assert fragment in (outcome.error or ""), (case, outcome.error)
    after = Served(bind9_named.host, bind9_named.port, ZONE)
    assert after.tags == before.tags
    assert after.soa_signers == {zsk.key_tag} and after.dnskey_signers == {ksk.key_tag}
    assert [
        (p.name, k.key_tag, t) for p, k, t in KeyFolder(bind9_named.key_directory).read_keys(zone)
    ] == [(p.name, k.key_tag, t) for p, k, t in keys_before]
