"""Can keymgr write Knot's KASP database while knotd runs? Cycles of import, keys-load and delete
against a running knotd, with a second keymgr writer and DNS queries going on at the same time.

Run:  .venv/bin/python benchmarks/knot_kasp_writes.py [--cycles 100]

Prints the cycles, the failures of each tool (with Knot's message), the DNS answers that were not
NOERROR, and the time per cycle. The knot adapter relies on the answer being "yes, safely"
(docs/servers/knot.md): it writes the KASP database without stopping knotd.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from krs_lab.knot import KnotLab
from krs_plugin.dnssec import generate_key

ZONES = ("example.com.", "example.net.")


def keymgr(lab: KnotLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["keymgr", "-c", str(lab.config), *args], capture_output=True, text=True)


def import_csk(lab: KnotLab, zone: str, folder: Path) -> subprocess.CompletedProcess[str]:
    pem = folder / f"{zone}pem"
    pem.write_bytes(generate_key(zone, 13, 257).to_pkcs8_pem())
    now = int(time.time()) - 1
    return keymgr(
        lab, zone, "import-pem", str(pem), "algorithm=13", "ksk=yes", "zsk=yes",
        f"publish={now}", f"active={now}",
    )  # fmt: skip


def cycles(lab: KnotLab, zone: str, count: int, folder: Path, errors: Counter[str]) -> None:
    for _ in range(count):
        added = import_csk(lab, zone, folder)
        if added.returncode != 0:
            errors[f"import: {added.stderr.strip()}"] += 1
            continue
        key_id = added.stdout.split()[0]
        for argv in (
            ["knotc", "-c", str(lab.config), "-b", "zone-keys-load", zone],
            ["keymgr", "-c", str(lab.config), zone, "delete", f"id={key_id}"],
            ["knotc", "-c", str(lab.config), "-b", "zone-keys-load", zone],
        ):
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0:
                errors[
                    f"{argv[3] if argv[0] == 'knotc' else 'delete'}: {result.stderr.strip()}"
                ] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="krs-bench-kasp-") as tmp:
        lab = KnotLab(Path(tmp) / "knot", ZONES)
        lab.start()
        errors: Counter[str] = Counter()
        rcodes: Counter[str] = Counter()
        stop = threading.Event()

        def query() -> None:
            while not stop.is_set():
                for zone in ZONES:
                    q = dns.message.make_query(zone, "SOA", want_dnssec=True)
                    try:
                        reply = dns.query.udp(q, lab.host, port=lab.port, timeout=1)
                        rcodes[dns.rcode.to_text(reply.rcode())] += 1
                    except Exception as exc:
                        rcodes[type(exc).__name__] += 1

        for zone in ZONES:  # a key that stays, so the zone is served throughout
            import_csk(lab, zone, Path(tmp))
            lab.knotc("-b", "zone-reload", zone)
        try:
            writers = [
                threading.Thread(target=cycles, args=(lab, zone, args.cycles, Path(tmp), errors))
                for zone in ZONES
            ]
            querier = threading.Thread(target=query)
            start = time.perf_counter()
            querier.start()
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join()
            elapsed = time.perf_counter() - start
            stop.set()
            querier.join()
            log = lab.log()
        finally:
            lab.stop()
    total = args.cycles * len(ZONES)
    print(f"{total} cycles (import, keys-load, delete, keys-load) by {len(ZONES)} writers at once")
    print(f"  {elapsed:.1f} s, {1000 * elapsed / args.cycles:.0f} ms per cycle per writer")
    print(f"  tool failures: {sum(errors.values())} {dict(errors) or ''}")
    print(f"  DNS answers during the run: {dict(rcodes)}")
    lock_lines = [line for line in log.splitlines() if "lock" in line.lower() or "lmdb" in line]
    print(f"  knotd log lines about locks/LMDB: {len(lock_lines)}")
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
