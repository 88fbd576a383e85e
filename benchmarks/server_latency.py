"""NOTIFY-to-served latency for a new ZSK with a real nameserver, next to the server's own floor.

Run:  .venv/bin/python benchmarks/server_latency.py --server bind9|knot [--runs 20]
      [--backend hpke|jose]

1. Floor: what the server itself needs, with the tools an operator would type.
   BIND 9: the key files of a new ZSK are written into the key directory (not timed), then the
   clock runs from ``rndc loadkeys``. Knot: the clock runs from ``keymgr import-pem`` (the KASP
   database is the server's key store) through ``knotc -b zone-keys-load``. Both stop when the
   server answers an SOA whose RRSIG by the new ZSK validates (dnspython), polled every
   millisecond over TCP.
2. KRS: a real ``krs-kdc serve``, the server and ``krs run`` (its adapter) on loopback. For each
   run the KDC makes a new ZSK and stores a distribution (not timed); the clock starts when the
   NOTIFY for it is sent to the KRS (by this script, so that the KDC's 0.5 s scheduling tick is
   not counted) and stops at the same served-and-valid SOA answer.
Target (issues 5 and 6): KRS p50 and p95 within 1.5 x the floor + 200 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rdataclass
import dns.rdatatype

from krs_plugin.adapters.keyfiles import write_key
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.lab.bind9 import Bind9Lab
from krs_plugin.lab.deployment import CZ, Deployment
from krs_plugin.lab.knot import KnotLab
from krs_plugin.lab.ports import free_port
from krs_plugin.protocol import notify_name

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)
Lab = Bind9Lab | KnotLab


def signed_by(lab: Lab, tag: int) -> bool:
    """named answers SOA with a valid RRSIG by key ``tag``."""
    try:
        replies = {}
        for rdtype in (dns.rdatatype.DNSKEY, dns.rdatatype.SOA):
            query = dns.message.make_query(NAME, rdtype, want_dnssec=True)
            replies[rdtype] = dns.query.tcp(query, lab.host, port=lab.port, timeout=2)
    except (OSError, EOFError, dns.exception.DNSException):
        return False
    keys = replies[dns.rdatatype.DNSKEY].get_rrset(
        replies[dns.rdatatype.DNSKEY].answer, NAME, dns.rdataclass.IN, dns.rdatatype.DNSKEY
    )
    soa_reply = replies[dns.rdatatype.SOA]
    soa = soa_reply.get_rrset(soa_reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.SOA)
    sigs = soa_reply.get_rrset(
        soa_reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.SOA
    )
    if keys is None or soa is None or sigs is None:
        return False
    for sig in sigs:
        if sig.key_tag == tag:
            try:
                dns.dnssec.validate_rrsig(soa, sig, {NAME: keys})
            except dns.exception.ValidationFailure:
                return False
            return True
    return False


def wait_signed(lab: Lab, tag: int, timeout: float = 30) -> float:
    start = time.perf_counter()
    while not signed_by(lab, tag):
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"key {tag} not served after {timeout} s:\n{lab.log()[-2000:]}")
        time.sleep(0.001)
    return time.perf_counter()


def bind9_floor(root: Path, runs: int) -> list[float]:
    lab = Bind9Lab(root / "floor", [ZONE])
    lab.start()
    rndc = ["rndc", "-k", str(lab.rndc_key), "-s", lab.host, "-p", str(lab.control_port)]
    try:
        ksk = generate_key(ZONE, 13, 257)
        now = int(time.time()) - 1
        write_key(lab.key_directory, ksk, KeyTiming(now, now, now))
        times = []
        for _ in range(runs):
            zsk = generate_key(ZONE, 13, 256)
            now = int(time.time()) - 1
            write_key(lab.key_directory, zsk, KeyTiming(now, now, now))
            start = time.perf_counter()
            subprocess.run([*rndc, "loadkeys", ZONE], check=True, capture_output=True)
            times.append(wait_signed(lab, zsk.key_tag) - start)
        return times
    finally:
        lab.stop()


def knot_floor(root: Path, runs: int) -> list[float]:
    lab = KnotLab(root / "floor", [ZONE])
    lab.start()
    keymgr = ["keymgr", "-c", str(lab.config), ZONE]

    def import_key(flags: int, role: str) -> int:
        key = generate_key(ZONE, 13, flags)
        pem = root / "key.pem"
        pem.write_bytes(key.to_pkcs8_pem())
        now = int(time.time()) - 1
        ksk, zsk = ("yes" if role in ("KSK", "CSK") else "no"), ("yes" if role != "KSK" else "no")
        times = [f"publish={now}", f"active={now}"]
        run([*keymgr, "import-pem", str(pem), "algorithm=13", f"ksk={ksk}", f"zsk={zsk}", *times])
        return key.key_tag

    def run(argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    try:
        import_key(257, "KSK")
        import_key(256, "ZSK")
        run(["knotc", "-c", str(lab.config), "-b", "zone-reload", ZONE])
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            tag = import_key(256, "ZSK")
            run(["knotc", "-c", str(lab.config), "-b", "zone-keys-load", ZONE])
            times.append(wait_signed(lab, tag) - start)
        return times
    finally:
        lab.stop()


FLOORS = {"bind9": (bind9_floor, "rndc loadkeys"), "knot": (knot_floor, "keymgr + keys-load")}


def start_lab(server: str, root: Path) -> Lab:
    lab: Lab = Bind9Lab(root / "named", [ZONE]) if server == "bind9" else KnotLab(root, [ZONE])
    lab.start()
    return lab


def krs_path(root: Path, runs: int, backend: str, server: str) -> list[float]:
    lab = start_lab(server, root / server)
    deployment = Deployment(
        root / "kdc-and-node",
        backend,
        zones=(ZONE,),
        adapter={"type": server, "settings": lab.adapter_settings()},
        kdc_notify_port=free_port(),  # the KDC's own NOTIFY goes nowhere: this script sends it
    )
    try:
        deployment.write_config(poll_interval=3600)
        deployment.start_kdc()
        deployment.start_krs()
        times = []
        for _ in range(runs + 1):  # the first distribution (KSK + first ZSK) is a warm-up
            out = deployment.kdc("--json", "key", "generate", "--zone", ZONE, "--role", "ZSK")
            tag = int(json.loads(out)["key_tag"])
            dist_id = deployment.distribute("--zone", ZONE)
            notify = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
            notify.set_opcode(dns.opcode.NOTIFY)
            start = time.perf_counter()
            dns.query.udp(notify, "127.0.0.1", port=deployment.notify_port, timeout=2)
            times.append(wait_signed(lab, tag) - start)
            deployment.wait_confirmed(dist_id)
        return times[1:]
    finally:
        deployment.close()
        lab.stop()


def summary(name: str, times: list[float]) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(
        f"{name:28} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
        f"min {ms[0]:7.1f}  max {ms[-1]:7.1f}  (n={len(ms)})"
    )
    return p50, p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=sorted(FLOORS), default="bind9")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backend", choices=("hpke", "jose"), default="hpke")
    args = parser.parse_args()
    floor, floor_name = FLOORS[args.server]
    with tempfile.TemporaryDirectory(prefix=f"krs-bench-{args.server}-") as tmp:
        root = Path(tmp)
        floor_p50, floor_p95 = summary(f"floor: {floor_name}", floor(root, args.runs))
        krs_p50, krs_p95 = summary(
            f"KRS ({args.backend}): NOTIFY to served",
            krs_path(root, args.runs, args.backend, args.server),
        )
    ok = True
    for what, value, base in (("p50", krs_p50, floor_p50), ("p95", krs_p95, floor_p95)):
        target = 1.5 * base + 200
        verdict = "ok" if value <= target else "MISSED"
        ok &= value <= target
        print(
            f"target {what}: {value:.1f} ms <= 1.5 x {base:.1f} + 200 = {target:.1f} ms: {verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
