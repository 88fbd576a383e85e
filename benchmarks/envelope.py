"""Seal and open throughput of the envelope, next to the raw cost of its primitives (the floor).

Run:  .venv/bin/python benchmarks/envelope.py [--seconds 0.5] [--json]

For each backend (hpke, jose) and payload size (1 KiB, 64 KiB, 1 MiB) it measures
``seal_envelope`` and ``open_envelope`` and the same work done directly with ``cryptography``:

- open floor: one ECDSA P-256 verify (over a message the size of the JWS signing input), one key
  agreement (X25519 for hpke, P-256 ECDH for jose) and one AES-256-GCM open of the payload;
- seal floor: one ECDSA sign, one ephemeral key generation, one key agreement, one AES-256-GCM seal.

The issue's target: opening a 1 KiB payload within 3x of the sum of its primitives.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krs_plugin.crypto import HpkeKey, JoseKey, open_envelope, seal_envelope

SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
TARGET_RATIO = 3.0


@dataclass
class Row:
    backend: str
    operation: str
    size: str
    ours_per_s: float
    floor_per_s: float

    @property
    def ratio(self) -> float:
        return self.floor_per_s / self.ours_per_s


def rate(fn: Callable[[], object], seconds: float, repeats: int = 3) -> float:
    """Median operations per second over ``repeats`` runs of about ``seconds`` each."""
    fn()  # warm up (imports, caches)
    results = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds / repeats
        while True:
            fn()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(count / (now - start))
    return statistics.median(results)


def floor_open(backend: str, size: int) -> Callable[[], object]:
    signer = ec.generate_private_key(ec.SECP256R1())
    # The JWS signing input is base64url of the inner object, about 4/3 of the (base64) payload.
    message = os.urandom(size * 4 // 3 + 100)
    signature = signer.sign(message, ec.ECDSA(hashes.SHA256()))
    verifier = signer.public_key()
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, os.urandom(size), b"")
    if backend == "hpke":
        mine_x, peer_x = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        peer_x_public = peer_x.public_key()

        def agree() -> bytes:
            return mine_x.exchange(peer_x_public)

    else:
        mine_e, peer_e = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        peer_e_public = peer_e.public_key()

        def agree() -> bytes:
            return mine_e.exchange(ec.ECDH(), peer_e_public)

    def run() -> bytes:
        verifier.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        agree()
        return aead.decrypt(nonce, sealed, b"")

    return run


def floor_seal(backend: str, size: int) -> Callable[[], object]:
    signer = ec.generate_private_key(ec.SECP256R1())
    message = os.urandom(size * 4 // 3 + 100)
    plaintext = os.urandom(size)
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    if backend == "hpke":
        recipient_x = x25519.X25519PrivateKey.generate().public_key()

        def agree() -> bytes:
            return x25519.X25519PrivateKey.generate().exchange(recipient_x)

    else:
        recipient_e = ec.generate_private_key(ec.SECP256R1()).public_key()

        def agree() -> bytes:
            return ec.generate_private_key(ec.SECP256R1()).exchange(ec.ECDH(), recipient_e)

    def run() -> bytes:
        agree()
        aead.encrypt(nonce, plaintext, b"")
        return signer.sign(message, ec.ECDSA(hashes.SHA256()))

    return run


def measure(seconds: float) -> list[Row]:
    kdc = JoseKey.generate()
    verifier = kdc.public_only()
    nodes: dict[str, HpkeKey | JoseKey] = {"hpke": HpkeKey.generate(), "jose": JoseKey.generate()}
    rows = []
    for backend, node in nodes.items():
        public = node.public_only()
        for label, size in SIZES.items():
            plaintext = os.urandom(size)
            transport = seal_envelope(
                plaintext,
                backend=backend,  # type: ignore[arg-type]
                recipient=public,
                signer=kdc,
            )

            def do_seal(plaintext: bytes = plaintext, public: HpkeKey | JoseKey = public) -> bytes:
                return seal_envelope(
                    plaintext,
                    backend=backend,  # type: ignore[arg-type]  # noqa: B023
                    recipient=public,
                    signer=kdc,
                )

            def do_open(transport: bytes = transport, node: HpkeKey | JoseKey = node) -> object:
                return open_envelope(
                    transport,
                    backend=backend,  # type: ignore[arg-type]  # noqa: B023
                    recipient=node,
                    verifier=verifier,
                )

            rows.append(
                Row(
                    backend,
                    "seal",
                    label,
                    rate(do_seal, seconds),
                    rate(floor_seal(backend, size), seconds),
                )
            )
            rows.append(
                Row(
                    backend,
                    "open",
                    label,
                    rate(do_open, seconds),
                    rate(floor_open(backend, size), seconds),
                )
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.6, help="time budget per cell")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = measure(args.seconds)
    verdicts = {
        r.backend: (r.ratio, r.ratio <= TARGET_RATIO)
        for r in rows
        if r.operation == "open" and r.size == "1 KiB"
    }
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
                    "target_ratio": TARGET_RATIO,
                    "verdicts": {b: {"ratio": v[0], "pass": v[1]} for b, v in verdicts.items()},
                },
                indent=2,
            )
        )
        return 0
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"{'backend':8} {'op':5} {'payload':>8} {'ours/s':>10} {'floor/s':>10} {'ours/floor':>11}"
    )
    for r in rows:
        print(
            f"{r.backend:8} {r.operation:5} {r.size:>8} {r.ours_per_s:10.1f} "
            f"{r.floor_per_s:10.1f} {r.ratio:10.2f}x"
        )
    print()
    for backend, (ratio, ok) in verdicts.items():
        print(
            f"target: {backend} open of 1 KiB within {TARGET_RATIO:.0f}x of its primitives: "
            f"{ratio:.2f}x {'PASS' if ok else 'FAIL'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
