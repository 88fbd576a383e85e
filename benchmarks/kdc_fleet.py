"""``krs-kdc status --nodes`` at scale: how long reading the fleet takes with many nodes and a long
history of distributions.

Run:  .venv/bin/python benchmarks/kdc_fleet.py [--nodes 1000] [--zones 10] [--history 50]

Fills a kdc.db (through ``Store``, as ``distribute`` and ``serve`` write it) with ``--nodes``
nodes serving ``--zones`` zones each, and ``--history`` distributions per zone per node, each
carrying a KSK and a ZSK, each confirmed with a served report; one node in ten missed every fifth
distribution (expired, then superseded by a confirmed one: old lags that must not count), and
one in twenty has its newest one pending (behind) or failed. Times ``node_lags`` without the
served key sets (what the metrics read at each scrape) and with them (``status --nodes``), and
the whole command with ``--json``. Prints the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from krs_plugin.kdc.cli import main
from krs_plugin.kdc.fleet import counts, node_lags
from krs_plugin.kdc.store import Store

T0 = 1_900_000_000
KEYS = [[30872, 13, 257], [63667, 13, 256]]


def fill(store: Store, nodes: int, zones: int, history: int) -> None:
    names = [f"z{z:05d}.example." for z in range(zones)]
    for zone in names:
        store.add_zone(zone, now=T0)
    serial = T0
    with store.transaction():
        for n in range(nodes):
            node = f"n{n:05d}.nodes.test."
            store.add_node(node, notify_address="127.0.0.1:5399", backend="hpke",
                           hpke_pubkey="00" * 32, jose_pubkey=None, signing_pubkey=None,
                           zones=names, now=T0)  # fmt: skip
            for h in range(history):
                for zone in names:
                    serial += 1
                    dist = f"{serial:x}"
                    at = T0 + h * 100
                    store.add_distribution(
                        dist, serial, node, zone=zone, content="{}", created_at=at,
                        expires_at=at + 300, records=[b"m"],
                        keys=[(zone, str(k[0])) for k in KEYS],
                    )  # fmt: skip
                    last = h == history - 1
                    if n % 10 == 0 and h % 5 == 4 and not last:
                        status = "expired"
                    elif last and n % 20 == 1:
                        status = "pending"
                    elif last and n % 20 == 2:
                        status = "failed"
                    else:
                        status = "confirmed"
                    _record(store, dist, node, zone, status, at + 1)


def _record(store: Store, dist: str, node: str, zone: str, status: str, at: int) -> None:
    if status == "pending":
        return
    if status == "expired":
        store.db.execute("UPDATE distributions SET status = 'expired' WHERE id = ? AND "
                         "node_id = ?", (dist, node))  # fmt: skip
        return
    served = [{"zone": zone, "read_at": at, "dnskey": KEYS, "soa_signers": [KEYS[1][0]]}]
    store.db.execute(
        "UPDATE distributions SET status = ?, confirmed_at = ?, failed_at = ? WHERE id = ? "
        "AND node_id = ?",
        (status, at if status == "confirmed" else None, at if status == "failed" else None,
         dist, node),
    )  # fmt: skip
    if status == "confirmed":
        store.db.execute(
            "INSERT INTO served_state(distribution_id, node_id, zone, read_at, recorded_at, "
            "soa_serial, state) VALUES (?, ?, ?, ?, ?, NULL, ?)",
            (dist, node, zone, at, at, json.dumps(served[0], sort_keys=True)),
        )


def median(runs: int, job: object) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        job()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--zones", type=int, default=10)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "kdc.db")
        started = time.perf_counter()
        fill(store, args.nodes, args.zones, args.history)
        rows = store.db.execute("SELECT COUNT(*) FROM distributions").fetchone()[0]
        print(f"{args.nodes} nodes x {args.zones} zones x {args.history} distributions: "
              f"{rows} rows, filled in {time.perf_counter() - started:.1f} s, "
              f"kdc.db {(Path(tmp) / 'kdc.db').stat().st_size / 1e6:.0f} MB")  # fmt: skip
        now = T0 + args.history * 100 + 3600
        print("counts:", counts(node_lags(store.db, now)))
        bare = median(args.runs, lambda: node_lags(store.db, now))
        served = median(args.runs, lambda: node_lags(store.db, now, served=True))
        out = io.StringIO()

        def command() -> None:
            with contextlib.redirect_stdout(out):
                main(["--state", tmp, "status", "--nodes", "--json"])

        whole = median(args.runs, command)
        print(f"node_lags: {bare * 1000:.0f} ms; with served: {served * 1000:.0f} ms; "
              f"krs-kdc status --nodes --json: {whole * 1000:.0f} ms")  # fmt: skip
        store.close()


if __name__ == "__main__":
    run()
