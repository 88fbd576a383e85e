"""One distribution with the keys of 10,000 zones for one node: KDC build time, NOTIFY-to-applied
time and the peak memory of ``krs run``, against the issue's targets.

Run:  .venv/bin/python benchmarks/krs_bulk.py [--zones 10000] [--keys csk|ksk+zsk|both]
                                               [--algorithm 13|15] [--backend hpke|jose]

For each key layout (``--keys``: one CSK per zone, as BIND's default dnssec-policy has it, and a
KSK plus a ZSK per zone; both by default):

1. Setup (not timed): a KDC state (``krs-kdc init`` and ``node add`` through the CLI), then, in
   this process through the KDC's store, ``--zones`` zones with their keys (algorithm 13, ECDSA
   P-256, by default), all served by the one node, and the node's krs.yaml listing every zone,
   with the default ``limits`` and ``poll_interval: 3600`` (so polling cannot help). Real
   ``krs-kdc serve`` and ``krs run`` (directory adapter) processes on 127.0.0.1, free ports.
2. KDC build: ``distribute_node`` (the node's keys of every zone as one payload, sealed, signed,
   cut into CHUNK records and stored in SQLite), timed in this process.
3. The clock then starts when ``krs-kdc serve`` sends the NOTIFY (the moment the datagram reaches
   a relay in this process, ``krs_harness.NotifyRelay``) and stops when the KRS state database
   records the distribution as applied (polled every 50 ms): every key file written and verified.
   Also shown: when the first key file appeared (inotify), and when the KDC's state shows the
   distribution confirmed.
4. Peak RSS of the ``krs run`` process: VmHWM from /proc/<pid>/status, sampled every 50 ms until
   the distribution is applied (VmHWM only grows, so the last sample is the peak so far).

Targets (issue): applied in under 60 s, KRS RSS under 150 MB. A harness that prints figures;
exit status 0 whatever the verdicts, 1 when a distribution was not applied at all.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags
from krs_harness import NotifyRelay, machine, proc_status

from krs_lab.deployment import CZ, NODE, Deployment
from krs_plugin.dnssec import generate_key, get_algorithm
from krs_plugin.kdc.distribute import distribute_node
from krs_plugin.kdc.identity import load_identity
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import Limits

TARGET_SECONDS = 60.0
TARGET_RSS_MB = 150.0
LAYOUTS = {"csk": (("CSK", 257),), "ksk+zsk": (("KSK", 257), ("ZSK", 256))}


@dataclass
class Result:
    layout: str
    keys: int
    build_s: float
    transport_mb: float
    records: int
    applied_s: float | None
    peak_mb: float
    confirmed_s: float | None


def zone_names(count: int) -> list[str]:
    return [f"z{i:05d}.bulk.example." for i in range(count)]


def add_zones(store: Store, zones: list[str], algorithm: int, layout: str) -> int:
    """Zones, their keys and the node's zone list, straight into the KDC's tables in one
    transaction (``krs-kdc zone add`` / ``key generate`` / ``node add --zone`` would take an
    hour for 10,000 zones). Returns the number of keys."""
    now = int(time.time())
    rows = []
    for zone in zones:
        tags: set[int] = set()
        for role, key_flags in LAYOUTS[layout]:
            key = generate_key(zone, algorithm, key_flags)
            while key.key_tag in tags:  # (zone, tag, algorithm) is unique at the KDC
                key = generate_key(zone, algorithm, key_flags)
            tags.add(key.key_tag)
            rows.append(
                (zone, key.key_tag, role, algorithm, key_flags, key.to_pkcs8_pem(), now, now, now)
            )
    with store.transaction():
        store.db.executemany(
            "INSERT INTO zones(name, created_at) VALUES (?, ?)", [(z, now) for z in zones]
        )
        store.db.executemany(
            "INSERT INTO keys(zone, key_tag, role, algorithm, flags, state, private_pem, "
            "created_at, publish_at, activate_at) VALUES (?, ?, ?, ?, ?, 'created', ?, ?, ?, ?)",
            rows,
        )
        store.db.executemany(
            "INSERT INTO node_zones(node_id, zone) VALUES (?, ?)", [(NODE, z) for z in zones]
        )
    return len(rows)


def krs_outcome(db: Path, dist_id: str) -> str | None:
    """The outcome the KRS recorded for ``dist_id`` (read-only; None while there is none)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            row = c.execute("SELECT outcome FROM distributions WHERE id = ?", (dist_id,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def krs_failure(db: Path, dist_id: str) -> str:
    """The stage and error the KRS recorded for ``dist_id`` (cut to 2,000 characters)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
        row = c.execute(
            "SELECT stage, error FROM distributions WHERE id = ?", (dist_id,)
        ).fetchone()
    return "no record" if row is None else f"stage {row[0]}: {str(row[1])[:2000]}"


def kdc_status(store: Store, dist_id: str) -> str:
    rows = store.distributions(dist_id=dist_id)
    return rows[0].status if rows else "missing"


def vm_hwm(pid: int) -> int:
    """Peak RSS so far in KiB; 0 once the process is gone (a zombie has no memory lines)."""
    try:
        return proc_status(pid).get("VmHWM", 0)
    except OSError:
        return 0


def mb(kib: int) -> float:
    return kib / 1024


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(args: argparse.Namespace, root: Path, layout: str) -> Result:
    zones = zone_names(args.zones)
    relay = NotifyRelay(CZ, 0)
    deployment = Deployment(
        root, args.backend, zones=(), generate_keys=False, kdc_notify_port=relay.port
    )
    relay.target = ("127.0.0.1", deployment.notify_port)
    keys_dir = deployment.node_dir / "keys"
    try:
        started = time.perf_counter()
        store = Store(deployment.state / "kdc.db")
        key_count = add_zones(store, zones, args.algorithm, layout)
        deployment.write_config(zones=zones, poll_interval=3600)
        print(
            f"{layout}: {key_count} keys generated and stored in the KDC state in "
            f"{time.perf_counter() - started:.1f} s (setup, not timed)"
        )
        deployment.start_kdc()
        started = time.perf_counter()
        krs = deployment.start_krs()
        idle = proc_status(krs.pid)
        print(
            f"  krs run started in {time.perf_counter() - started:.1f} s; RSS with "
            f"{len(zones)} zones configured, idle: {mb(idle['VmRSS']):.0f} MB"
        )

        inotify = INotify()
        inotify.add_watch(keys_dir, flags.MOVED_TO | flags.CREATE)
        identity = load_identity(deployment.state / "keys")
        started = time.perf_counter()
        summary = distribute_node(store, identity, NODE, now=time.time())
        built = time.perf_counter()
        dist_id = summary.distribution_id
        size, count = store.db.execute(
            "SELECT SUM(LENGTH(rdata)), COUNT(*) FROM records WHERE distribution_id = ?",
            (dist_id,),
        ).fetchone()
        print(
            f"  KDC build (distribute_node, stored in SQLite): {built - started:.2f} s for "
            f"{summary.key_count} keys of {len(summary.zones)} zones: {count} CHUNK records, "
            f"{size / 1e6:.1f} MB"
        )
        result = Result(layout, key_count, built - started, size / 1e6, count, None, 0.0, None)

        notified = relay.wait(dist_id, 30)
        print(f"  NOTIFY {dist_id} sent {notified - built:.2f} s after the build returned")
        first_file = applied = None
        outcome = None
        peak_kib = 0
        state_db = deployment.node_dir / "krs.db"
        while time.perf_counter() < notified + args.timeout:
            peak_kib = max(peak_kib, vm_hwm(krs.pid))
            if first_file is None and inotify.read(timeout=0):
                first_file = time.perf_counter()
                inotify.close()  # tens of thousands more events would only fill its queue
            outcome = krs_outcome(state_db, dist_id)
            if outcome not in (None, "fetching"):
                applied = time.perf_counter()
                peak_kib = max(peak_kib, vm_hwm(krs.pid))
                break
            if krs.poll() is not None:
                break
            time.sleep(0.05)
        result.peak_mb = mb(peak_kib)
        if first_file is not None:
            print(f"  NOTIFY -> first key file in the folder: {first_file - notified:.2f} s")
        if applied is None or outcome != "applied":
            waited = time.perf_counter() - notified
            print(f"  NOT APPLIED: outcome {outcome!r} after {waited:.0f} s")
            if krs.poll() is not None:
                print(f"  krs run exited with {krs.returncode}")
            print(deployment.log("krs")[-3000:])
            print(f"  krs run peak RSS so far: {result.peak_mb:.0f} MB")
            return result
        result.applied_s = applied - notified
        print(
            f"  NOTIFY -> applied (recorded in the KRS state): {result.applied_s:.2f} s   "
            f"[target < {TARGET_SECONDS:g} s: {verdict(result.applied_s < TARGET_SECONDS)}]"
        )
        print(
            f"  krs run peak RSS (VmHWM): {result.peak_mb:.0f} MB   "
            f"[target < {TARGET_RSS_MB:g} MB: {verdict(result.peak_mb < TARGET_RSS_MB)}]"
        )
        while time.perf_counter() < applied + 60 and krs.poll() is None:
            if kdc_status(store, dist_id) == "confirmed":
                result.confirmed_s = time.perf_counter() - notified
                break
            time.sleep(0.05)
        log = deployment.log("krs")
        own = re.findall(rf"distribution {dist_id} applied in ([0-9.]+) s", log)
        if own:
            print(f"  krs run's own log: fetch + check + apply took {float(own[-1]):.2f} s")
        if result.confirmed_s is not None:
            print(f"  NOTIFY -> confirmed at the KDC: {result.confirmed_s:.2f} s")
        else:
            print(f"  not confirmed at the KDC ({kdc_status(store, dist_id)})")
            if krs.poll() is not None:
                last = log.strip().splitlines()[-1:]
                print(f"  krs run exited with {krs.returncode} after applying: {last}")
        private = sum(1 for p in keys_dir.iterdir() if p.suffix == ".private")
        public = sum(1 for p in keys_dir.iterdir() if p.suffix == ".key")
        print(f"  key folder: {private} .private and {public} .key files (expected {key_count})")
        if not private == public == key_count:
            result.applied_s = None
        store.close()
        return result
    finally:
        deployment.close()
        relay.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--zones", type=int, default=10000)
    parser.add_argument("--keys", choices=(*LAYOUTS, "both"), default="both")
    parser.add_argument("--algorithm", type=int, choices=(13, 15), default=13)
    parser.add_argument("--backend", choices=("hpke", "jose"), default="hpke")
    parser.add_argument(
        "--timeout", type=float, default=240, help="seconds to wait for the apply (default 240)"
    )
    args = parser.parse_args()
    if args.zones < 1:
        parser.error("--zones must be at least 1")
    algorithm = get_algorithm(args.algorithm)
    limits = Limits()
    print(f"machine: {machine()}")
    print(
        f"{args.zones} zones, one node, algorithm {algorithm.number} ({algorithm.mnemonic}), "
        f"backend {args.backend}, directory adapter; the KRS's default limits "
        f"({limits.max_chunks} chunks, {limits.max_total_bytes / 2**20:g} MiB)"
    )
    results = []
    for layout in LAYOUTS if args.keys == "both" else (args.keys,):
        with tempfile.TemporaryDirectory(prefix="krs-bench-bulk-") as tmp:
            results.append(run(args, Path(tmp), layout))
    print()
    print("layout   keys   KDC build  transport   NOTIFY->applied  peak RSS  NOTIFY->confirmed")
    for r in results:
        applied = "not applied" if r.applied_s is None else f"{r.applied_s:.1f} s"
        confirmed = "-" if r.confirmed_s is None else f"{r.confirmed_s:.1f} s"
        print(
            f"{r.layout:8} {r.keys:5}  {r.build_s:7.2f} s  {r.transport_mb:6.1f} MB  "
            f"{applied:>15}  {r.peak_mb:5.0f} MB  {confirmed:>17}"
        )
    return 0 if all(r.applied_s is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
