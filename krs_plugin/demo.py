"""``krs demo``: one key distribution from a KDC to a node and back to key files, on this machine.

It runs the same code the daemons will: ``kdc.build`` seals, signs and splits; the records go
through DNS wire form; ``receiver.unpack`` checks and opens them; ``payload`` validates every key
against its DNSKEY; the keys are written as BIND key files. Later issues replace the in-memory
hand-over with a real KDC, NOTIFY, DNS/TCP fetch and a nameserver.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import dns.name

from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, write_jose_private
from krs_plugin.crypto.nodekey import generate_node_key, write_node_private
from krs_plugin.dnssec import KeyTiming, generate_key, write_bind_key_pair
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import RollKey, encode_payload, parse_payload, roll_key_entry
from krs_plugin.protocol import CHUNK, CHUNK_TYPE, manifest_name, parse_chunk_wire
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

_K = TypeVar("_K")
CONTROL_ZONE = "kdc.example."
NODE_ID = "ns1.edge.example."


def _say(step: str, text: str) -> None:
    print(f"[{step:>4}] {text}", flush=True)


def run_demo(
    *,
    backends: Sequence[str] = ("hpke", "jose"),
    zone: str = "example.com.",
    algorithm: int = 13,
    keep: str | None = None,
) -> int:
    """Run one distribution per backend; returns the process exit code."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _run(Path(keep), backends, zone, algorithm)
    with tempfile.TemporaryDirectory(prefix="krs-demo-") as tmp:
        return _run(Path(tmp), backends, zone, algorithm)


def _run(workdir: Path, backends: Sequence[str], zone: str, algorithm: int) -> int:
    zone_name = dns.name.from_text(zone)
    node_id = dns.name.from_text(NODE_ID)
    _say("kdc", f"work directory {workdir}")
    signer = JoseKey.generate()
    # The node's key for each backend shown, made and written as krs enroll does (nodekey.py).
    node_keys = {backend: generate_node_key(backend) for backend in backends}
    for backend, node_key in node_keys.items():
        write_node_private(workdir / f"node.{backend}.privatekey", backend, node_key)
    write_jose_private(workdir / "kdc.signing.privatekey", signer, use="sig", comment="KDC")
    _say("kdc", f"KDC signing key (P-256) {signer.thumbprint}")
    kinds = {"hpke": "X25519", "jose": "P-256", "hpke-pq": "ML-KEM-768 + X25519"}
    held = ", ".join(f"{kinds[b]} {k.fingerprint}" for b, k in node_keys.items())
    _say("kdc", f"node {NODE_ID}: {held}")

    now = time.time()
    ksk = generate_key(zone_name, algorithm, 257)
    zsk = generate_key(zone_name, algorithm, 256)
    timing = KeyTiming(created=int(now), publish=int(now), activate=int(now))
    for role, key in (("KSK", ksk), ("ZSK", zsk)):
        _say("kdc", f"generated {role} for {zone_name}: algorithm {algorithm}, tag {key.key_tag}")

    node = NodeIdentity(
        node_id,
        hpke=_of(node_keys.get("hpke"), HpkeKey),
        jose=_of(node_keys.get("jose"), JoseKey),
        hybrid=_of(node_keys.get("hpke-pq"), HybridKey),
    )
    for number, backend in enumerate(backends):
        dist_id = f"{int(now) + number:x}"
        entries = [
            roll_key_entry(ksk, "KSK", timing=timing, distribution_id=dist_id, issued_at=int(now)),
            roll_key_entry(zsk, "ZSK", timing=timing, distribution_id=dist_id, issued_at=int(now)),
        ]
        cleartext = encode_payload(entries)
        recipient = NodeRecipient(node_id, backend, node_keys[backend].public_only())  # type: ignore[arg-type]
        records = build_distribution(
            cleartext,
            recipient,
            signer,
            dist_id,
            now=now,
            counts={"zone_count": 1, "key_count": 2, "operation_count": 2},
            chunk_size=1000,
        )
        owner = manifest_name(node_id, dist_id, CONTROL_ZONE)
        _say(
            "kdc",
            f"distribution {dist_id} ({backend}): {len(cleartext)} bytes of cleartext sealed and "
            f"signed into {len(records) - 1} data chunks under {owner}",
        )
        _say("kdc", f"  {owner} 300 IN CHUNK {_short(records[0])}")
        _say("kdc", f"  1.{owner} 300 IN CHUNK {_short(records[1])}")

        # Across the wire: the node sees only DNS wire-form RDATA.
        received = [parse_chunk_wire(r.to_wire() or b"", CHUNK_TYPE) for r in records]
        unpacked = unpack_distribution(
            dist_id, received[0], received[1:], node, signer.public_only(), now=time.time()
        )
        _say(
            "krs",
            f"manifest HMAC ok, fresh, {unpacked.manifest.chunk_count} chunks reassembled; "
            f"KDC signature {'verified' if unpacked.signed else 'ABSENT'}; decrypted with "
            f"{backend}",
        )
        payload = parse_payload(
            unpacked.plaintext, now=time.time(), expected_distribution_id=dist_id
        )
        keydir = workdir / f"keys-{backend}"
        keydir.mkdir(exist_ok=True)
        for entry in payload.entries:
            if not isinstance(entry, RollKey):
                continue
            key_path, private_path = write_bind_key_pair(keydir, entry.key, timing)
            mode = private_path.stat().st_mode & 0o777
            _say(
                "krs",
                f"{entry.key_type} {entry.zone} tag {entry.key_tag}: private key matches its "
                f"DNSKEY; wrote {key_path.name} and {private_path.name} (mode {mode:04o})",
            )
    _say("done", f"{len(backends)} distribution(s) received, verified and installed as key files")
    return 0


def _of(key: object, kind: type[_K]) -> _K | None:
    return key if isinstance(key, kind) else None


def _short(rdata: CHUNK) -> str:
    text = rdata.to_text(origin=None)
    return text if len(text) <= 90 else text[:87] + "..."


__all__ = ["run_demo"]
