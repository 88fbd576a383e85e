"""Seal and open throughput of the envelope, next to the raw cost of its primitives (the floor).

Run:  .venv/bin/python benchmarks/envelope.py [--seconds 1] [--repeats 5] [--json]

For each backend (hpke, jose, hpke-pq) and payload size (1 KiB, 64 KiB, 1 MiB) it times
``seal_envelope`` and ``open_envelope`` (docs/protocol.md section 4: T =
base64(JWS_ES256(inner))) and the same primitives called directly in ``cryptography``, with keys
and AEAD contexts set up in advance:

- open floor: one ECDSA P-256 verify over a message as long as the real JWS signing input, one key
  agreement (X25519 for hpke, P-256 ECDH for jose; for hpke-pq an ML-KEM-768 decapsulation and an
  X25519 exchange), one AES-256-GCM open of the payload size;
- seal floor: one ECDSA P-256 sign over the same length, one ephemeral key generation and key
  agreement (X25519 or P-256; for hpke-pq an ML-KEM-768 encapsulation and an ephemeral X25519
  exchange), one AES-256-GCM seal of the payload size.

"T bytes" is the size of the transport string (what the chunks carry) for each payload size.

The KDC's ML-DSA-65 signature (``pq_signature``, docs/security.md "Post-quantum sealing") is
timed apart, for the transport string of a 1 KiB payload: ours (``MldsaKey.sign`` and
``verify_distribution``: SHA-256 of T, base64) against ML-DSA-65 sign and verify called directly
over the same input; with the signature's size and how much it adds to the manifest.

Everything else the envelope does (base64/base64url, JSON headers, HKDF or Concat KDF, key
wrapping in library objects) is what "ours" pays on top of the floor. Each cell is timed with
``time.perf_counter`` after a warm-up, for a fixed time budget split into ``--repeats`` runs that
alternate between ours and the floor (so drift hits both alike); the table shows medians.

This is a harness that prints figures; it asserts nothing and is not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krs_plugin.crypto import BACKENDS, Backend, JoseKey, open_envelope, seal_envelope
from krs_plugin.crypto.nodekey import generate_node_key
from krs_plugin.crypto.pqsig import CONTEXT, MldsaKey, signed_input, verify_distribution

Op = Callable[[], object]

SIZES: tuple[tuple[str, int], ...] = (
    ("1 KiB", 1024),
    ("64 KiB", 64 * 1024),
    ("1 MiB", 1024 * 1024),
)
TARGET_SIZE = "1 KiB"
TARGET_RATIO = 3.0
TARGET = (
    "envelope open of a 1 KiB payload within 3x of the sum of its primitives "
    "(one ECDSA verify, one key agreement, one AEAD open)"
)
_ECDSA = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class Row:
    """One line of the table: our operation and its floor, in operations per second."""

    backend: Backend
    operation: str
    size: str
    payload_bytes: int
    signing_input_bytes: int
    ours_per_s: float
    floor_per_s: float
    transport_bytes: int = 0

    @property
    def ratio(self) -> float:
        """Our time per operation divided by the floor's (how many floors one operation costs)."""
        return self.floor_per_s / self.ours_per_s

    def as_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "operation": self.operation,
            "size": self.size,
            "payload_bytes": self.payload_bytes,
            "signing_input_bytes": self.signing_input_bytes,
            "transport_bytes": self.transport_bytes,
            "ours_per_s": round(self.ours_per_s, 1),
            "floor_per_s": round(self.floor_per_s, 1),
            "ratio": round(self.ratio, 3),
        }


# --- timing -----------------------------------------------------------------------------------


def _run_for(fn: Op, seconds: float) -> float:
    """Call ``fn`` until ``seconds`` have passed (at least once); operations per second."""
    count = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while now < deadline or count == 0:
        fn()
        count += 1
        now = time.perf_counter()
    return count / (now - start)


def time_pair(ours: Op, floor: Op, seconds: float, repeats: int) -> tuple[float, float]:
    """Median ops/s of ``ours`` and of ``floor``, each given ``seconds`` in ``repeats`` slices.

    Both are warmed up first (a tenth of the budget each), then the slices alternate between
    the two so that a noisy neighbour or a frequency change affects both sides of the ratio.
    """
    warm_up = seconds / 10
    _run_for(ours, warm_up)
    _run_for(floor, warm_up)
    ours_rates: list[float] = []
    floor_rates: list[float] = []
    for _ in range(repeats):
        ours_rates.append(_run_for(ours, seconds / repeats))
        floor_rates.append(_run_for(floor, seconds / repeats))
    return statistics.median(ours_rates), statistics.median(floor_rates)


# --- the floor: the same primitives, straight from cryptography --------------------------------


def _agreement(backend: Backend) -> tuple[Op, Op]:
    """(static key agreement as the recipient does it, ephemeral keygen + agreement to seal)."""
    if backend == "hpke":
        mine = x25519.X25519PrivateKey.generate()
        peer = x25519.X25519PrivateKey.generate().public_key()

        def agree_x25519() -> bytes:
            return mine.exchange(peer)

        def ephemeral_x25519() -> bytes:
            return x25519.X25519PrivateKey.generate().exchange(peer)

        return agree_x25519, ephemeral_x25519

    if backend == "hpke-pq":  # ML-KEM-768 and X25519, both halves (the SHA3 combiner is noise)
        kem = mlkem.MLKEM768PrivateKey.generate()
        kem_public = kem.public_key()
        _, kem_ciphertext = kem_public.encapsulate()
        mine_x = x25519.X25519PrivateKey.generate()
        peer_x = x25519.X25519PrivateKey.generate().public_key()

        def agree_hybrid() -> bytes:
            return kem.decapsulate(kem_ciphertext) + mine_x.exchange(peer_x)

        def ephemeral_hybrid() -> bytes:
            secret, _ = kem_public.encapsulate()
            return secret + x25519.X25519PrivateKey.generate().exchange(peer_x)

        return agree_hybrid, ephemeral_hybrid

    mine_ec = ec.generate_private_key(ec.SECP256R1())
    peer_ec = ec.generate_private_key(ec.SECP256R1()).public_key()
    ecdh = ec.ECDH()

    def agree_p256() -> bytes:
        return mine_ec.exchange(ecdh, peer_ec)

    def ephemeral_p256() -> bytes:
        return ec.generate_private_key(ec.SECP256R1()).exchange(ecdh, peer_ec)

    return agree_p256, ephemeral_p256


def floor_open(backend: Backend, size: int, signing_input: bytes) -> Op:
    """One ECDSA verify over ``signing_input``, one key agreement, one AES-256-GCM open."""
    signer = ec.generate_private_key(ec.SECP256R1())
    verifier = signer.public_key()
    signature = signer.sign(signing_input, _ECDSA)
    agree, _ = _agreement(backend)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, os.urandom(size), b"")

    def run() -> bytes:
        verifier.verify(signature, signing_input, _ECDSA)
        agree()
        return aead.decrypt(nonce, sealed, b"")

    return run


def floor_seal(backend: Backend, size: int, signing_input: bytes) -> Op:
    """One ECDSA sign over ``signing_input``'s length, ephemeral keygen + agreement, one seal."""
    signer = ec.generate_private_key(ec.SECP256R1())
    _, ephemeral_agree = _agreement(backend)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    plaintext = os.urandom(size)

    def run() -> bytes:
        ephemeral_agree()
        aead.encrypt(nonce, plaintext, b"")
        return signer.sign(signing_input, _ECDSA)

    return run


# --- ours -------------------------------------------------------------------------------------


def jws_signing_input(transport: bytes) -> bytes:
    """The bytes the KDC's ES256 signature covers: ``header_b64 "." payload_b64`` of the JWS."""
    return base64.b64decode(transport).rsplit(b".", 1)[0]


def measure(seconds: float, repeats: int, progress: bool = False) -> list[Row]:
    kdc = JoseKey.generate()
    verifier = kdc.public_only()
    rows: list[Row] = []
    for backend in BACKENDS:
        node = generate_node_key(backend)
        public = node.public_only()
        for label, size in SIZES:
            plaintext = os.urandom(size)
            transport = seal_envelope(plaintext, backend=backend, recipient=public, signer=kdc)
            opened = open_envelope(transport, backend=backend, recipient=node, verifier=verifier)
            if opened.plaintext != plaintext or not opened.signed:
                raise RuntimeError(f"{backend} {label}: the envelope does not round-trip")
            signing_input = jws_signing_input(transport)

            def ours_seal(
                backend: Backend = backend, plaintext: bytes = plaintext, public: Any = public
            ) -> bytes:
                return seal_envelope(plaintext, backend=backend, recipient=public, signer=kdc)

            def ours_open(
                backend: Backend = backend, transport: bytes = transport, node: Any = node
            ) -> object:
                return open_envelope(transport, backend=backend, recipient=node, verifier=verifier)

            for operation, ours, floor in (
                ("seal", ours_seal, floor_seal(backend, size, signing_input)),
                ("open", ours_open, floor_open(backend, size, signing_input)),
            ):
                ours_rate, floor_rate = time_pair(ours, floor, seconds, repeats)
                row = Row(
                    backend, operation, label, size, len(signing_input), ours_rate, floor_rate,
                    len(transport),
                )  # fmt: skip
                rows.append(row)
                if progress:
                    print(f"  {backend} {operation} {label}: {row.ratio:.2f}x", file=sys.stderr)
    return rows


# --- report -----------------------------------------------------------------------------------


def measure_pq(seconds: float, repeats: int) -> dict[str, Any]:
    """The ML-DSA-65 distribution signature: sign and verify per second, ours and the floor."""
    key = MldsaKey.generate()
    assert key.private is not None
    recipient = generate_node_key("hpke")
    transport = seal_envelope(
        os.urandom(1024), backend="hpke", recipient=recipient.public_only(),
        signer=JoseKey.generate(),
    )  # fmt: skip
    dist, node = "6b150be4", "ns1.edge.example."
    value = key.sign(dist, node, transport)
    data = signed_input(dist, node, transport)
    raw = key.private.sign(data, CONTEXT)
    private, public = key.private, key.public
    sign = time_pair(
        lambda: key.sign(dist, node, transport), lambda: private.sign(data, CONTEXT),
        seconds, repeats,
    )  # fmt: skip
    verify = time_pair(
        lambda: verify_distribution([key], value, dist, node, transport, "bench"),
        lambda: public.verify(raw, data, CONTEXT),
        seconds, repeats,
    )  # fmt: skip
    return {
        "transport_bytes": len(transport),
        "signature_bytes": len(raw),
        "metadata_value_bytes": len(value),
        # '"pq_signature":"…",' in the compact manifest JSON
        "manifest_growth_bytes": len(json.dumps({"pq_signature": value}, separators=(",", ":")))
        - 1,
        "public_key_bytes": len(key.public_raw),
        "sign_per_s": sign[0],
        "sign_floor_per_s": sign[1],
        "verify_per_s": verify[0],
        "verify_floor_per_s": verify[1],
    }


def print_pq(pq: dict[str, Any]) -> None:
    print()
    print(
        f"pq_signature (ML-DSA-65) over T of {pq['transport_bytes']} bytes: signature "
        f"{pq['signature_bytes']} bytes, {pq['metadata_value_bytes']} in base64, manifest "
        f"+{pq['manifest_growth_bytes']} bytes; public key {pq['public_key_bytes']} bytes"
    )
    for op in ("sign", "verify"):
        ours, floor = pq[f"{op}_per_s"], pq[f"{op}_floor_per_s"]
        print(f"  {op:6} ours {ours:9.1f}/s  floor {floor:9.1f}/s  ours/floor {floor / ours:.2f}x")


def verdicts(rows: list[Row]) -> dict[str, tuple[float, bool]]:
    return {
        r.backend: (r.ratio, r.ratio <= TARGET_RATIO)
        for r in rows
        if r.operation == "open" and r.size == TARGET_SIZE
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    return {
        "cpu": f"{cpu_model()} ({os.cpu_count()} CPUs)",
        "python": platform.python_version(),
        "cryptography": version("cryptography"),
        "pyhpke": version("pyhpke"),
        "jwcrypto": version("jwcrypto"),
    }


def print_table(rows: list[Row], env: dict[str, str], seconds: float, repeats: int) -> None:
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"{seconds:g} s per cell in {repeats} runs, median; ratio = our time / floor time")
    print()
    header = (
        f"{'backend':7} {'op':4} {'payload':>7} {'JWS input':>10} {'T bytes':>9} "
        f"{'ours ops/s':>11} {'floor ops/s':>12} {'ours/floor':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.backend:7} {r.operation:4} {r.size:>7} {r.signing_input_bytes:>10} "
            f"{r.transport_bytes:>9} "
            f"{r.ours_per_s:>11.1f} {r.floor_per_s:>12.1f} {r.ratio:>9.2f}x"
        )
    print()
    print(f"target: {TARGET}")
    for backend, (ratio, ok) in verdicts(rows).items():
        print(f"  {backend}: {ratio:.2f}x  {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="time budget per cell and side (default 1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs per cell; the median is kept (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be positive and --repeats at least 1")
    rows = measure(args.seconds, args.repeats, progress=not args.json and sys.stderr.isatty())
    pq = measure_pq(args.seconds, args.repeats)
    env = environment()
    if args.json:
        document = {
            "environment": env,
            "seconds_per_cell": args.seconds,
            "repeats": args.repeats,
            "rows": [r.as_json() for r in rows],
            "target": TARGET,
            "target_ratio": TARGET_RATIO,
            "verdicts": {
                backend: {"ratio": round(ratio, 3), "pass": ok}
                for backend, (ratio, ok) in verdicts(rows).items()
            },
            "pq_signature": pq,
        }
        print(json.dumps(document, indent=2))
    else:
        print_table(rows, env, args.seconds, args.repeats)
        print_pq(pq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
