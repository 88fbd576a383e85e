"""NSD: NOTIFY-to-served latency of a ZSK roll against zone size, next to the signer alone.

Run:  .venv/bin/python benchmarks/nsd_zone_size.py [--records 100,10000,100000] [--runs N]
      [--signer dnssec-signzone|ldns-signzone] [--backend hpke|jose]

NSD does not sign: the nsd adapter signs the whole unsigned zone file on every key change, so
its latency grows with the zone. For each size, an unsigned zone of that many records (the lab
zone plus one A record per name) is served by a real ``nsd``, and:

1. KRS: ``server_latency.notify_to_served`` with the nsd adapter (a real ``krs-kdc serve`` and
   ``krs run``; the script sends the NOTIFY): each run is a ZSK roll (a new ZSK, the previous
   one retired and still published, the one before removed), so the zone is always signed by
   one KSK and one ZSK (algorithm 13). The clock stops when NSD answers an SOA whose RRSIG by
   the new ZSK validates. It includes the fetch and checks, the key files, signing, the
   adapter's ``nsd-checkzone``, ``nsd-control reload``, NSD loading the signed file, and the
   adapter's own verification queries until our poll sees the answer.
2. Floor, after each KRS run while everything is idle: the signer on the same unsigned file
   with the same key files (the KRS's key directory), through ``zonesign.sign_zone``, which is
   the signer's command line as the adapter runs it. dnssec-signzone checks its own output;
   ldns-signzone does not, so its floor is ldns-signzone + ``ldns-verify-zone``, as the adapter
   runs them (the verifier is timed once more on its own to show its share). ``nsd-checkzone``
   on the output is timed separately, and the KRS's own signing time is read from its log, so
   the second table says where the rest of the KRS's time goes.

The poll for the served key looks every 10 ms, not every millisecond as server_latency does for
the other servers: on two cores a 1 ms poll (two TCP queries each) took CPU from the signer and
made the KRS's signing 40 % slower than the floor's at 2,000 records.

The default run (dnssec-signzone, 20 / 10 / 5 runs) takes about 6 minutes on 2 cores, with
--signer ldns-signzone about 10. Figures and how to read them: docs/benchmarks.md, "NSD".
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.name
from krs_harness import machine
from server_latency import ZONE, notify_to_served, summary

from krs_lab.nsd import NsdLab
from krs_lab.zones import unsigned_zone_text
from krs_plugin.adapters.zonesign import (
    SIGNERS,
    VERIFIER,
    check_zone_file,
    run,
    sign_zone,
    signer_available,
)

VALIDITY = 14 * 86400  # the adapter's default signature_validity
POLL = 0.01  # s between looks at NSD: a 1 ms poll would take CPU from the signer (2 cores)
SIGNED = re.compile(r"signed with \S+ in ([0-9.]+) s")


def zone_text(zone: str, records: int) -> str:
    """The lab's unsigned zone grown to ``records`` records with A records ``h<i>``."""
    base = unsigned_zone_text(zone)
    have = sum(1 for line in base.splitlines() if line and not line.startswith("$"))
    extra = range(max(0, records - have))
    return base + "".join(f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in extra)


def default_runs(records: int) -> int:
    return 20 if records <= 1000 else 10 if records <= 10_000 else 5


def measure(root: Path, records: int, runs: int, signer: str, backend: str) -> dict[str, Any]:
    lab = NsdLab(root / "nsd", [ZONE])
    unsigned = lab.unsigned_file(ZONE)
    unsigned.parent.mkdir(parents=True)
    unsigned.write_text(zone_text(ZONE, records))  # NsdLab keeps an unsigned file it finds
    lab.start(timeout=120)
    zone = dns.name.from_text(ZONE)
    scratch = root / "floor.signed"
    floor: list[float] = []
    checkzone: list[float] = []
    verify: list[float] = []
    verifier = VERIFIER[signer]

    def signer_alone() -> None:
        signed = sign_zone(signer, zone, unsigned, lab.root / "keys", scratch,
                           serial=int(time.time()), validity=VALIDITY, timeout=600)  # fmt: skip
        floor.append(signed.seconds)
        start = time.perf_counter()
        check_zone_file(zone, scratch, 600)
        checkzone.append(time.perf_counter() - start)
        if verifier:  # inside the floor too: timed alone once more to show its share
            start = time.perf_counter()
            run([verifier, str(scratch)], verifier, 600)
            verify.append(time.perf_counter() - start)
        scratch.unlink()

    settings = {**lab.adapter_settings(), "signer": signer, "verify_timeout": 120}
    try:
        adapter = {"type": "nsd", "settings": settings}
        krs = notify_to_served(
            root, lab, runs, backend, adapter, roll=True, timeout=300, interval=POLL,
            after_run=signer_alone,
        )  # fmt: skip
    finally:
        lab.stop()
    krs_log = (root / "kdc-and-node" / "logs" / "krs.log").read_text()
    krs_sign = [float(s) for s in SIGNED.findall(krs_log)][1:]  # [0] is the warm-up
    print(f"{records:,} records, {signer}, {runs} runs:")
    krs_p50, krs_p95 = summary("  KRS: NOTIFY to served", krs)
    floor_p50, floor_p95 = summary(f"  floor: {floor_name(signer)}", floor)
    return {
        "records": records,
        "runs": runs,
        "krs": (krs_p50, krs_p95),
        "floor": (floor_p50, floor_p95),
        "krs_sign": statistics.median(krs_sign) * 1000 if krs_sign else float("nan"),
        "checkzone": statistics.median(checkzone) * 1000,
        "verify": statistics.median(verify) * 1000 if verify else None,
        "signed_mb": lab.signed_file(ZONE).stat().st_size / 1e6,
    }


def table(rows: list[dict[str, Any]], signer: str) -> None:
    print(f"\nNSD, floor {floor_name(signer)} (ms; ratio = KRS / floor)")
    print("| records | runs | KRS p50 | KRS p95 | floor p50 | floor p95 | ratio p50 | ratio p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        (krs_p50, krs_p95), (floor_p50, floor_p95) = row["krs"], row["floor"]
        print(
            f"| {row['records']:,} | {row['runs']} | {krs_p50:.0f} | {krs_p95:.0f} | "
            f"{floor_p50:.0f} | {floor_p95:.0f} | {krs_p50 / floor_p50:.2f} | "
            f"{krs_p95 / floor_p95:.2f} |"
        )
    verifier = VERIFIER[signer]
    print(
        "\nWhere the KRS's p50 goes (ms, medians; rest: nsd-control reload, NSD loading the file,"
    )
    print("fetch, checks, key files, the adapter's and this script's DNS polling)")
    print(
        "| records | signed file | KRS p50 | signing (KRS log) |"
        + (f" of which {verifier} |" if verifier else "")
        + " nsd-checkzone | rest |"
    )
    print("|---:" * (6 if verifier else 5) + "|---:|")
    for row in rows:
        krs_p50, sign, check = row["krs"][0], row["krs_sign"], row["checkzone"]
        print(
            f"| {row['records']:,} | {row['signed_mb']:.2f} MB | {krs_p50:.0f} | {sign:.0f} | "
            + (f"{row['verify']:.0f} | " if verifier else "")
            + f"{check:.0f} | {krs_p50 - sign - check:.0f} |"
        )


def floor_name(signer: str) -> str:
    verifier = VERIFIER[signer]
    return f"{signer} + {verifier}" if verifier else f"{signer} alone"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="100,10000,100000", help="comma-separated sizes")
    parser.add_argument("--runs", type=int, help="runs per size (default: 20, 10, 5 by size)")
    parser.add_argument("--signer", choices=SIGNERS, default="dnssec-signzone")
    parser.add_argument("--backend", choices=("hpke", "jose"), default="hpke")
    args = parser.parse_args()
    if not signer_available(args.signer):
        raise SystemExit(f"{args.signer} not found: apt-get install bind9-utils ldnsutils")
    sizes = [int(n) for n in args.records.replace("_", "").split(",")]
    print(machine())
    rows = []
    for records in sizes:
        runs = args.runs or default_runs(records)
        with tempfile.TemporaryDirectory(prefix=f"krs-bench-nsd-{records}-") as tmp:
            rows.append(measure(Path(tmp), records, runs, args.signer, args.backend))
    table(rows, args.signer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
