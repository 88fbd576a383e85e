"""Bulk onboarding on real servers: a new node serving N zones (KSK + ZSK each, algorithm 13)
gets all its keys in one distribution; how long until every zone is served and signed, next to
the server's own bulk floor.

Run:  .venv/bin/python benchmarks/bulk_servers.py --server bind9|bind920|knot|powerdns|nsd
                                                   [--zones 10000] [--path krs|adapter]
                                                   [--no-floor] [--no-krs]

For the server chosen (``bind920``: named 9.20 from the trixie debootstrap root, lab/krs_lab/
sysroot.py), twice from scratch, in temporary directories on free loopback ports:

1. Setup (not timed): the server with N small unsigned zones configured as an operator would
   for the KRS (named.conf zones with the KRS's settings, knot.conf zones under the manual
   policy, PowerDNS gsqlite3 zones loaded with zone2sql, NSD zones), started and answering.
2. Floor: the server's own tools load the same kind of keys in one batch, the clock running from
   the first tool call until every zone is served and signed:
   BIND: key files written, then ``rndc loadkeys`` zone by zone (named has no command for all
   zones); Knot: ``keymgr import-pem`` per key, then one ``knotc -b zone-reload`` for all zones;
   PowerDNS: the API's POST of each key and rectify of each zone, then one cache flush; NSD:
   key files written, ``dnssec-signzone`` per zone, then one ``nsd-control reload``.
3. KRS (``--path krs``, the default): real ``krs-kdc serve`` and ``krs run`` with the server's
   adapter; the KDC's state gets the N zones and their keys in one transaction (as
   benchmarks/krs_bulk.py does), ``distribute_node`` makes one distribution of all of them, and
   the clock runs from the NOTIFY (krs_harness.NotifyRelay) until the KRS state records it
   applied (every zone verified by the adapter), then until this script sees every zone served
   and signed. Peak RSS of ``krs run`` is VmHWM. ``--path adapter`` instead times
   ``apply_atomically`` on the plans, in this process, as the pipeline calls it.

"Served and signed" is checked here for every zone with dnspython, the questions pipelined over
one TCP connection: the DNSKEY RRset holds the KSK and ZSK, its RRSIG by the KSK and the SOA's
RRSIG by the ZSK validate. A harness that prints figures; it asserts nothing.
Goals (issue 24, item 4): within 1.5 x the floor; ``krs run`` under 150 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
from krs_bulk import add_zones, krs_failure, krs_outcome, vm_hwm
from krs_harness import NotifyRelay, machine, proc_status

from krs_lab.bind9 import Bind9Lab
from krs_lab.deployment import CZ, NODE, Deployment
from krs_lab.knot import KnotLab
from krs_lab.nsd import NsdLab
from krs_lab.powerdns import SCHEMA, PowerDnsLab
from krs_lab.sysroot import Sysroot
from krs_lab.zones import unsigned_zone_text
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bindstate import reset_state
from krs_plugin.adapters.dnsbatch import NoAnswer, query_many
from krs_plugin.adapters.keyfiles import write_key
from krs_plugin.adapters.registry import adapter_class
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.kdc.distribute import distribute_node
from krs_plugin.kdc.identity import load_identity
from krs_plugin.kdc.store import Store

SERVERS = ("bind9", "bind920", "knot", "powerdns", "nsd")
GOAL_RATIO = 1.5
GOAL_RSS_MB = 150.0
Lab = Bind9Lab | KnotLab | PowerDnsLab | NsdLab
ZoneKeys = list[tuple[str, DnssecKey, DnssecKey]]  # zone, KSK, ZSK


@dataclass
class Figures:
    what: str
    seconds: float | None
    applied_s: float | None = None  # KRS: NOTIFY -> recorded applied
    peak_mb: float | None = None
    unserved: int = 0


def zone_names(count: int) -> list[str]:
    return [f"z{i:05d}.bulk.example." for i in range(count)]


def log(text: str) -> None:
    print(text, flush=True)


# --- the servers, set up as an operator would ----------------------------------------------


def make_lab(server: str, root: Path, zones: Sequence[str]) -> Lab:
    """The server with ``zones`` configured, started and answering (not timed)."""
    lab: Lab
    if server in ("bind9", "bind920"):
        sysroot = Sysroot.find("trixie") if server == "bind920" else None
        if server == "bind920" and sysroot is None:
            raise SystemExit("no trixie root: ./run setup makes it (lab/krs_lab/sysroot.py)")
        lab = Bind9Lab(root, zones, sysroot=sysroot)
        if server == "bind920" and not lab.uses_policy:
            raise SystemExit("the trixie root's named is not 9.20")
        lab.start(timeout=max(60, len(zones) / 50))
    elif server == "knot":
        lab = KnotLab(root, zones)
        lab.start()
    elif server == "nsd":
        lab = NsdLab(root, zones)
        lab.start(timeout=max(60, len(zones) / 50))
    else:
        lab = PowerDnsLab(root, zones)
        bulk_gsqlite3(lab, zones)
        lab.start(timeout=max(60, len(zones) / 50))
    return lab


def bulk_gsqlite3(lab: PowerDnsLab, zones: Sequence[str]) -> None:
    """The gsqlite3 database with every zone, made the way bulk imports are: ``zone2sql`` from a
    named.conf (the lab's ``pdnsutil load-zone`` per zone would take minutes for 10,000)."""
    (lab.root / "zones").mkdir(parents=True, exist_ok=True)
    (lab.root / "db").mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = lab.root / "zone2sql.conf"
    with conf.open("w") as out:
        for zone in zones:
            lab.zone_file(zone).write_text(unsigned_zone_text(zone))
            out.write(f'zone "{zone}" {{ type master; file "{lab.zone_file(zone)}"; }};\n')
    sql = subprocess.run(
        ["zone2sql", "--gsqlite", f"--named-conf={conf}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    schema = SCHEMA.read_text()
    subprocess.run(["sqlite3", str(lab.database)], input=schema + sql, text=True, check=True)
    os.chmod(lab.database, 0o600)


def adapter_settings(server: str, lab: Lab, verify_timeout: float) -> dict[str, Any]:
    settings = dict(lab.adapter_settings())
    if isinstance(lab, PowerDnsLab):
        settings = {k: settings[k] for k in ("api_url", "api_key_file", "server")}
        settings["method"] = "api"
    settings["verify_timeout"] = verify_timeout
    return settings


def adapter_type(server: str) -> str:
    return "bind9" if server.startswith("bind") else server


# --- served and signed, every zone (dnspython; pipelined over one TCP connection) -----------


def unserved(lab: Lab, zones: Sequence[str], expected: dict[str, tuple[int, int]]) -> list[str]:
    """The zones not served as expected: DNSKEY RRset with the KSK and ZSK (``expected``: zone ->
    (KSK tag, ZSK tag); None tags: any KSK and ZSK), a valid RRSIG by the KSK over it and by
    the ZSK over the SOA."""
    questions = [
        (dns.name.from_text(z), t) for z in zones for t in (dns.rdatatype.DNSKEY, dns.rdatatype.SOA)
    ]
    replies = query_many(questions, lab.host, lab.port, timeout=10)
    bad = []
    for n, zone in enumerate(zones):
        keys_reply, soa_reply = replies[2 * n], replies[2 * n + 1]
        if isinstance(keys_reply, NoAnswer) or isinstance(soa_reply, NoAnswer):
            bad.append(zone)
            continue
        if not signed_as_expected(zone, keys_reply, soa_reply, expected.get(zone)):
            bad.append(zone)
    return bad


def signed_as_expected(
    zone: str, keys_reply: Any, soa_reply: Any, tags: tuple[int, int] | None
) -> bool:
    name = dns.name.from_text(zone)
    keys = keys_reply.get_rrset(keys_reply.answer, name, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    key_sigs = keys_reply.get_rrset(
        keys_reply.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY
    )
    soa = soa_reply.get_rrset(soa_reply.answer, name, dns.rdataclass.IN, dns.rdatatype.SOA)
    soa_sigs = soa_reply.get_rrset(
        soa_reply.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.SOA
    )
    if keys is None or key_sigs is None or soa is None or soa_sigs is None:
        return False
    ksks = {dns.dnssec.key_id(k) for k in keys if k.flags == 257}
    zsks = {dns.dnssec.key_id(k) for k in keys if k.flags == 256}
    if tags is not None and (tags[0] not in ksks or tags[1] not in zsks):
        return False
    return bool(ksks & valid(keys, key_sigs, keys, name)) and bool(
        zsks & valid(soa, soa_sigs, keys, name)
    )


def valid(rrset: Any, sigs: Any, keys: Any, name: dns.name.Name) -> set[int]:
    out = set()
    for sig in sigs:
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {name: keys})
        except dns.exception.ValidationFailure:
            continue
        out.add(sig.key_tag)
    return out


def wait_all_served(
    lab: Lab, zones: Sequence[str], expected: dict[str, tuple[int, int]], timeout: float
) -> int:
    """Poll until every zone is served and signed; how many are not when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    pending = list(zones)
    while pending:
        pending = unserved(lab, pending, expected)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return len(pending)


# --- the floor: the server's own tools, one batch --------------------------------------------


def make_keys(zones: Sequence[str]) -> ZoneKeys:
    """A KSK and a ZSK per zone, their tags distinct (one key file name each)."""
    out = []
    for zone in zones:
        ksk, zsk = generate_key(zone, 13, 257), generate_key(zone, 13, 256)
        while zsk.key_tag == ksk.key_tag:
            zsk = generate_key(zone, 13, 256)
        out.append((zone, ksk, zsk))
    return out


def now_timing() -> KeyTiming:
    now = int(time.time()) - 1
    return KeyTiming(created=now, publish=now, activate=now)


def run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")


def floor_bind9(lab: Bind9Lab, keys: ZoneKeys) -> None:
    """Key files written (9.20: with the .state giving each key its role), then ``rndc
    loadkeys`` zone by zone: named has no command that loads the keys of all zones."""
    rndc = lab.command("rndc", "-k", str(lab.rndc_key), "-s", lab.host, "-p", str(lab.control_port))
    timing = now_timing()
    for _zone, ksk, zsk in keys:
        for key, role in ((ksk, "KSK"), (zsk, "ZSK")):
            write_key(lab.key_directory, key, timing)
            if lab.uses_policy:
                reset_state(lab.key_directory, key, role, None)
    for zone, _, _ in keys:
        run([*rndc, "loadkeys", zone])


def floor_knot(lab: KnotLab, keys: ZoneKeys) -> None:
    """``keymgr import-pem`` for each key, then one ``knotc -b zone-reload`` of every zone (the
    zones never loaded: signing on and no keys). keymgr reads a binary copy of knot.conf, as
    docs/servers/knot.md shows an operator: with ``-c`` it would parse the 10,000 zones' text at
    every run (0.27 s each)."""
    now = int(time.time()) - 1
    with tempfile.TemporaryDirectory(prefix="bulk-pem-") as scratch:
        pem = Path(scratch) / "key.pem"
        confdb = Path(scratch) / "confdb"
        run(["knotc", "-C", str(confdb), "conf-import", str(lab.config)])
        for zone, ksk, zsk in keys:
            for key, flags in ((ksk, ("yes", "no")), (zsk, ("no", "yes"))):
                pem.write_bytes(key.to_pkcs8_pem())
                run(["keymgr", "-C", str(confdb), zone, "import-pem", str(pem),
                     "algorithm=13", f"ksk={flags[0]}", f"zsk={flags[1]}",
                     f"publish={now}", f"active={now}"])  # fmt: skip
    run(["knotc", "-c", str(lab.config), "-t", "600", "-b", "zone-reload"])


def floor_powerdns(lab: PowerDnsLab, keys: ZoneKeys) -> None:
    """The API: POST each key (active, published), rectify each zone, then one cache flush."""
    for zone, ksk, zsk in keys:
        for key, keytype in ((ksk, "ksk"), (zsk, "zsk")):
            body = {
                "keytype": keytype,
                "active": True,
                "published": True,
                "privatekey": key.to_bind_private(),
            }
            api(lab, "POST", f"/zones/{zone}/cryptokeys", body, 201)
        api(lab, "PUT", f"/zones/{zone}/rectify")
    api(lab, "PUT", "/cache/flush?domain=" + urllib.parse.quote("."))


def api(lab: PowerDnsLab, method: str, path: str, body: object = None, expect: int = 200) -> None:
    status, _ = lab.api(method, path, body)  # the reply may hold a private key: not shown
    if status != expect:
        raise SystemExit(f"PowerDNS API {method} {path}: HTTP {status}")


def floor_nsd(lab: NsdLab, keys: ZoneKeys) -> None:
    """Key files written, ``dnssec-signzone -S`` per zone into the served file, then one
    ``nsd-control reload`` (every changed zone)."""
    keydir = lab.root / "floor-keys"
    keydir.mkdir(mode=0o700, exist_ok=True)
    timing = now_timing()
    now = int(time.time())
    for zone, ksk, zsk in keys:
        write_key(keydir, ksk, timing)
        write_key(keydir, zsk, timing)
        run(["dnssec-signzone", "-S", "-x", "-O", "full", "-K", str(keydir), "-d", str(keydir),
             "-o", zone,
             "-N", "unixtime", "-s", str(now - 3600), "-e", str(now + 14 * 86400),
             "-f", str(lab.signed_file(zone)), str(lab.unsigned_file(zone))])  # fmt: skip
    run(["nsd-control", "-c", str(lab.config), "reload"])


FLOORS: dict[str, Callable[[Any, ZoneKeys], None]] = {
    "bind9": floor_bind9,
    "bind920": floor_bind9,
    "knot": floor_knot,
    "powerdns": floor_powerdns,
    "nsd": floor_nsd,
}
FLOOR_TEXT = {
    "bind9": "key files + rndc loadkeys per zone",
    "bind920": "key files + .state + rndc loadkeys per zone",
    "knot": "keymgr -C (a conf-import copy) import-pem per key + one knotc zone-reload",
    "powerdns": "API POST per key + rectify per zone + one flush",
    "nsd": "key files + dnssec-signzone per zone + one nsd-control reload",
}


def measure_floor(server: str, root: Path, zones: Sequence[str], timeout: float) -> Figures:
    with started(server, root / "floor", zones) as lab:
        keys = make_keys(zones)
        expected = {zone: (ksk.key_tag, zsk.key_tag) for zone, ksk, zsk in keys}
        start = time.perf_counter()
        FLOORS[server](lab, keys)
        told = time.perf_counter() - start
        left = wait_all_served(lab, zones, expected, timeout)
        seconds = time.perf_counter() - start
        log(f"  floor ({FLOOR_TEXT[server]}): tools done in {told:.1f} s, all served at "
            f"{seconds:.1f} s" + (f"; {left} zone(s) NOT served" if left else ""))  # fmt: skip
        return Figures("floor", None if left else seconds, unserved=left)


@contextlib.contextmanager
def started(server: str, root: Path, zones: Sequence[str]) -> Iterator[Lab]:
    start = time.perf_counter()
    lab = make_lab(server, root, zones)
    log(f"  {server} with {len(zones)} zones up in {time.perf_counter() - start:.0f} s (setup)")
    try:
        yield lab
    finally:
        lab.stop()


# --- the KRS: krs-kdc serve + krs run, or the adapter in this process ------------------------


def measure_krs(server: str, root: Path, zones: Sequence[str], args: argparse.Namespace) -> Figures:
    with started(server, root / "server", zones) as lab:
        settings = adapter_settings(server, lab, args.verify_timeout)
        if args.path == "adapter":
            return adapter_path(server, lab, settings, zones, args.timeout)
        return krs_run_path(server, lab, settings, root, zones, args.timeout)


def adapter_path(
    server: str, lab: Lab, settings: dict[str, Any], zones: Sequence[str], timeout: float
) -> Figures:
    """``apply_atomically`` on one plan per zone (KSK + ZSK), as the pipeline calls it."""
    names = [dns.name.from_text(z) for z in zones]
    adapter = adapter_class(adapter_type(server))(settings, zones=names)
    timing = now_timing()
    plans = [
        KeyPlan(name, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
        for name, (_, ksk, zsk) in zip(names, make_keys(zones), strict=True)
    ]
    expected = {
        p.zone.to_text(): (p.install[0].key.key_tag, p.install[1].key.key_tag) for p in plans
    }
    start = time.perf_counter()
    apply_atomically(adapter, plans)
    applied = time.perf_counter() - start
    left = wait_all_served(lab, zones, expected, timeout)
    seconds = time.perf_counter() - start
    peak = proc_status(os.getpid()).get("VmHWM", 0) / 1024
    log(f"  adapter: apply_atomically returned at {applied:.1f} s, all served at {seconds:.1f} s"
        f" (this process's peak RSS {peak:.0f} MB)")  # fmt: skip
    return Figures("KRS (adapter)", None if left else seconds, applied, peak, left)


def krs_run_path(
    server: str,
    lab: Lab,
    settings: dict[str, Any],
    root: Path,
    zones: Sequence[str],
    timeout: float,
) -> Figures:
    """Real ``krs-kdc serve`` and ``krs run``: NOTIFY to applied, then to all served."""
    relay = NotifyRelay(CZ, 0)
    adapter = {"type": adapter_type(server), "settings": settings}
    deployment = Deployment(
        root / "krs", "hpke", zones=(), generate_keys=False, kdc_notify_port=relay.port,
        adapter=adapter,
    )  # fmt: skip
    relay.target = ("127.0.0.1", deployment.notify_port)
    try:
        store = Store(deployment.state / "kdc.db")
        add_zones(store, list(zones), 13, "ksk+zsk")
        deployment.write_config(zones=list(zones), poll_interval=3600)
        deployment.start_kdc()
        krs = deployment.start_krs()
        log(
            f"  krs run idle with {len(zones)} zones: {proc_status(krs.pid)['VmRSS'] / 1024:.0f} MB"
        )
        summary = distribute_node(
            store, load_identity(deployment.state / "keys"), NODE, now=time.time()
        )
        notified = relay.wait(summary.distribution_id, 60)
        return follow(deployment, krs, lab, zones, summary.distribution_id, notified, timeout)
    finally:
        deployment.close()
        relay.close()


def follow(
    deployment: Deployment,
    krs: subprocess.Popen[bytes],
    lab: Lab,
    zones: Sequence[str],
    dist_id: str,
    notified: float,
    timeout: float,
) -> Figures:
    """Sample ``krs run``'s peak RSS until the KRS records the outcome, then check every zone."""
    peak, outcome = 0, None
    db = deployment.node_dir / "krs.db"
    while time.perf_counter() < notified + timeout and krs.poll() is None:
        peak = max(peak, vm_hwm(krs.pid))
        outcome = krs_outcome(db, dist_id)
        if outcome not in (None, "fetching"):
            break
        time.sleep(0.05)
    peak = max(peak, vm_hwm(krs.pid))
    applied = time.perf_counter() - notified
    if outcome != "applied":
        why = krs_failure(db, dist_id) if outcome else "nothing recorded"
        log(f"  NOT APPLIED: {outcome!r} after {applied:.0f} s: {why}\n"
            f"{deployment.log('krs')[-3000:]}")  # fmt: skip
        return Figures("KRS (krs run)", None, None, peak / 1024)
    left = wait_all_served(lab, zones, {}, 60)
    seconds = time.perf_counter() - notified
    missing = f"; {left} zone(s) NOT served" if left else ""
    log(f"  krs run: NOTIFY -> applied {applied:.1f} s, all served at {seconds:.1f} s, "
        f"peak RSS {peak / 1024:.0f} MB{missing}")  # fmt: skip
    return Figures("KRS (krs run)", None if left else seconds, applied, peak / 1024, left)


# --- the table ------------------------------------------------------------------------------


def table(server: str, zones: int, floor: Figures | None, krs: Figures | None) -> None:
    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    ratio = "-"
    if floor and krs and floor.seconds and krs.seconds:
        value = krs.seconds / floor.seconds
        ratio = f"{value:.2f} ({'PASS' if value <= GOAL_RATIO else 'FAIL'})"
    rss = "-"
    if krs and krs.peak_mb is not None:
        rss = f"{krs.peak_mb:.0f} MB ({'PASS' if krs.peak_mb < GOAL_RSS_MB else 'FAIL'})"
    log("")
    log("server    zones  floor      KRS applied  KRS served  ratio        peak RSS")
    log(f"{server:9} {zones:5}  {secs(floor.seconds if floor else None):9}  "
        f"{secs(krs.applied_s if krs else None):11}  {secs(krs.seconds if krs else None):10}  "
        f"{ratio:11}  {rss}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, required=True)
    parser.add_argument("--zones", type=int, default=10000)
    parser.add_argument("--path", choices=("krs", "adapter"), default="krs")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--no-krs", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds (default 3600)")
    parser.add_argument("--verify-timeout", type=float, default=60)
    args = parser.parse_args()
    zones = zone_names(args.zones)
    log(f"machine: {machine()}")
    log(f"{args.server}: {args.zones} zones, KSK + ZSK each, algorithm 13, path {args.path}")
    with tempfile.TemporaryDirectory(prefix="krs-bulk-servers-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        floor = None if args.no_floor else measure_floor(args.server, root, zones, args.timeout)
        krs = None if args.no_krs else measure_krs(args.server, root, zones, args)
        shutil.rmtree(root / "krs", ignore_errors=True)
    table(args.server, args.zones, floor, krs)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
