"""KDC figures: building a distribution for many nodes, and control-zone query throughput.

Run:  .venv/bin/python benchmarks/kdc.py [--nodes 1000] [--backend hpke|jose] [--seconds 5]

1. Time and peak memory (max RSS of this process) to build and store one distribution of one ZSK
   for N nodes with ``distribute_zone`` (target for 1,000 nodes: under 10 s and under 200 MB).
2. Queries per second that a ``krs-kdc serve`` process answers over one TCP connection (manifest
   queries for random nodes), from one client on the same machine.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import create_identity, load_identity
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import CHUNK_TYPE, manifest_name

ZONE = "example.com."
CZ = "kdc.example."


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(state: Path, nodes: int, backend: str) -> tuple[Store, list[str]]:
    state.mkdir(parents=True)
    create_identity(state / "keys")
    store = Store(state / "kdc.db")
    store.set_meta("control_zone", CZ)
    store.add_zone(ZONE)
    key = generate_key(ZONE, 13, 256)
    store.add_key(
        ZONE,
        key_tag=key.key_tag,
        role="ZSK",
        algorithm=13,
        flags=256,
        private_pem=key.to_pkcs8_pem(),
        publish_at=int(time.time()),
        activate_at=int(time.time()),
    )
    names = []
    with store.transaction():
        for i in range(nodes):
            name = f"ns{i}.edge.example."
            hpke = HpkeKey.generate().public_hex if backend == "hpke" else None
            jose = None
            if backend == "jose":
                jose = json.dumps(JoseKey.generate().public_jwk)
            store.db.execute(
                "INSERT INTO nodes(id, notify_address, backend, hpke_pubkey, jose_pubkey, "
                "created_at) VALUES (?, '127.0.0.1:9', ?, ?, ?, 0)",
                (name, backend, hpke, jose),
            )
            store.db.execute("INSERT INTO node_zones VALUES (?, ?)", (name, ZONE))
            names.append(name)
    return store, names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query_throughput(state: Path, dist_id: str, names: list[str], seconds: float) -> float:
    port = free_port()
    kdc = str(Path(sys.executable).parent / "krs-kdc")
    server = subprocess.Popen(
        [kdc, "--state", str(state), "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        chunk = dns.rdatatype.RdataType.make(CHUNK_TYPE)
        rng = random.Random(1)
        count = 0
        start = time.perf_counter()
        with sock:
            while time.perf_counter() - start < seconds:
                name = manifest_name(rng.choice(names), dist_id, CZ)
                reply = dns.query.tcp(dns.message.make_query(name, chunk), None, sock=sock)
                assert reply.answer, "the KDC did not answer a published manifest"
                count += 1
        return count / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--backend", choices=("hpke", "jose"), default="hpke")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="krs-bench-") as tmp:
        state = Path(tmp) / "state"
        store, names = prepare(state, args.nodes, args.backend)
        rss_before = max_rss_mb()
        start = time.perf_counter()
        summary = distribute_zone(
            store, load_identity(state / "keys"), ZONE, now=time.time(), ttl=3600
        )
        elapsed = time.perf_counter() - start
        rss_after = max_rss_mb()
        print(
            f"build: one ZSK for {args.nodes} nodes ({args.backend}): {elapsed:.2f} s, "
            f"{args.nodes / elapsed:.0f} nodes/s, {summary.records} records; "
            f"max RSS {rss_after:.0f} MB (before building {rss_before:.0f} MB)"
        )
        ok_time, ok_mem = elapsed < 10, rss_after < 200
        print(
            f"target (1,000 nodes under 10 s and 200 MB): time {'PASS' if ok_time else 'FAIL'}, "
            f"memory {'PASS' if ok_mem else 'FAIL'}"
        )
        store.close()
        qps = query_throughput(state, summary.distribution_id, names, args.seconds)
        print(f"control zone over one TCP connection: {qps:.0f} manifest queries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
