"""The KDC's /metrics at scale: how long one scrape takes on a kdc.db with many zones and nodes.

Run:  .venv/bin/python benchmarks/kdc_metrics.py [--zones 10000] [--nodes 10] [--rolling 100]

Builds the state with the real lifecycle engine (the policy of tests/unit/test_lifecycle_engine.py,
real keys, sealed and signed distributions to every node, each node's confirmation recorded as the
KDC records it), runs it until every zone is idle, and times the exposition of ``KdcMetrics``
(what ``krs-kdc serve --metrics`` answers): with every zone idle, then with ``--rolling`` zones in a
ZSK rollover held by one node that does not confirm (each such zone has series of its own and is
computed by ``Engine.view``), and before that with every zone in its first-keys rollover, which
is what a KDC that got 10,000 zones at once goes through. Prints the median and the worst of
``--scrapes`` scrapes (a third as many for the last), and the size of the exposition.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from krs_plugin.crypto import HpkeKey
from krs_plugin.kdc.engine import Engine, EngineOptions
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.metrics import KdcMetrics
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.store import Store

T0 = 1_900_000_000
POLICY = Policy(
    dnskey_ttl=10, max_zone_ttl=20, negative_ttl=10, signatures_validity=60,
    signatures_refresh=30, publish_safety=1, retire_safety=1, parent_ds_ttl=10,
    parent_propagation_delay=5, propagation_margin=0, zsk_lifetime=0,
)  # fmt: skip


class Bench:
    def __init__(self, root: Path, zones: int, nodes: int) -> None:
        self.store = Store(root / "kdc.db")
        self.now = T0
        self.down: set[str] = set()
        self.store.add_policy("fast", POLICY, now=T0)
        self.zones = [f"z{i:05d}.example." for i in range(zones)]
        self.nodes = [f"n{i:02d}.nodes.example." for i in range(nodes)]
        with self.store.transaction():
            for zone in self.zones:
                self.store.add_zone(zone, now=T0, policy="fast")
            for node in self.nodes:
                self.store.add_node(
                    node, notify_address="127.0.0.1:5399", backend="hpke",
                    hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None,
                    signing_pubkey=None, zones=self.zones, now=T0,
                )  # fmt: skip
        self.engine = Engine(self.store, create_identity(root / "keys"), EngineOptions())

    def serves(self, zone: str) -> dict[str, object]:
        keys = [k for k in self.store.keys(zone) if k.state in ("published", "active", "retired")]
        return {
            "zone": zone, "read_at": self.now, "dnskey_ttl": POLICY.dnskey_ttl,
            "dnskey": [[k.key_tag, k.algorithm, k.flags] for k in keys],
            "dnskey_signers": [k.key_tag for k in keys if k.state == "active" and k.flags == 257],
            "soa_signers": [k.key_tag for k in keys if k.state == "active" and k.flags == 256],
        }  # fmt: skip

    def confirm(self) -> None:
        served: dict[str, dict[str, object]] = {}
        with self.store.transaction():
            for d in self.store.distributions(status="pending"):
                if d.node_id in self.down or d.zone is None:
                    continue
                entry = served.get(d.zone) or served.setdefault(d.zone, self.serves(d.zone))
                self.store.set_distribution_status(
                    d.id, d.node_id, "confirmed", now=self.now, served=[entry]
                )

    def run(self, seconds: int, step: int = 30) -> None:
        for _ in range(0, seconds, step):
            self.engine.run_pass(self.now)
            self.confirm()
            self.now += step


def timed_scrapes(path: Path, now: int, count: int) -> tuple[list[float], int]:
    metrics = KdcMetrics(path, clock=lambda: now)
    times, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        size = len(metrics.exposition())
        times.append(time.perf_counter() - started)
    return times, size


def report(what: str, times: list[float], size: int) -> None:
    print(
        f"{what}: median {statistics.median(times) * 1000:.0f} ms, worst "
        f"{max(times) * 1000:.0f} ms over {len(times)} scrapes ({size:,} bytes)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rolling", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument(
        "--keep", type=Path, help="build the state in this (new) folder and keep it"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        if args.keep:
            args.keep.mkdir(parents=True)
        started = time.perf_counter()
        bench = Bench(Path(tmp), args.zones, args.nodes)
        bench.run(30)  # first keys: the pass at T0 begins them, every node confirms
        rows = bench.store.db.execute("SELECT COUNT(*) FROM distributions").fetchone()[0]
        print(
            f"prepared {args.zones:,} zones, {args.nodes} nodes, {rows:,} distribution rows "
            f"with the engine in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        report(
            f"{args.zones:,} zones in a rollover at once (their first keys, confirmed)",
            *timed_scrapes(bench.store.path, bench.now, max(1, args.scrapes // 3)),
        )
        bench.run(60)  # the passes at T0 + 30 (served and settled) and T0 + 60: all idle
        report(f"{args.zones:,} zones idle", *timed_scrapes(bench.store.path, bench.now,
                                                            args.scrapes))  # fmt: skip
        bench.down = {bench.nodes[-1]}
        for zone in bench.zones[: args.rolling]:
            bench.engine.start(zone, "ZSK", cause="benchmark", now=bench.now)
        bench.run(30)  # the rollovers begin; the node that is down holds each at step 1
        report(
            f"{args.rolling:,} of them in a ZSK rollover held by one node",
            *timed_scrapes(bench.store.path, bench.now, args.scrapes),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
