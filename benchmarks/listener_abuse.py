"""Abuse of every listener of real ``krs run`` and ``krs-kdc serve`` processes (issue 20, Must
show): malformed messages, then idle connections past the connection cap; afterwards each must
still answer correctly, its RSS must be within 20 MB of the start, and its log must hold no
traceback.

Run:  .venv/bin/python benchmarks/listener_abuse.py [--count 20000] [--idle 1100] [--seed 20]
                                                     [--nofile 1024] [--rounds 1]

1. Setup (not measured): a KDC with one zone (KSK + ZSK) and one node (``krs_lab.deployment``),
   ``krs-kdc serve`` and ``krs run`` (directory adapter) on 127.0.0.1, free ports, each under
   ``prlimit --nofile`` (``--nofile``, default 1024: systemd's default soft limit; 0 leaves the
   shell's). One distribution is applied and confirmed first, so both processes are warm; then
   VmRSS of each is read from /proc/<pid>/status.
2. ``--count`` malformed messages to each listener over UDP and as many over TCP: seeded
   mutations (``krs_lab.abuse``: bit flips, truncation, lying section counts, compression
   loops, a hundred questions, odd EDNS, noise; over TCP also lying length prefixes and
   messages cut short) of valid messages: NOTIFYs for the KRS; for the KDC queries (SOA,
   manifest, ``_pending`` TXT, a name outside the zone), enrollment UPDATEs (a real package,
   SIG(0)-signed) and confirmation NOTIFYs (signed with the node's key). The first round also
   sends the first valid message with each of the 65,536 values of the header's flags word
   (dnspython would otherwise keep each for good: 27 MB). Over UDP every 100
   messages are followed by a valid query whose answer is awaited, so none is lost to a full
   socket buffer: all of them reach the listener.
3. ``--idle`` TCP connections to each listener, kept open for 5 s (reopened when closed).
   ``--rounds`` repeats 2 and 3, printing VmRSS after each round: memory that levels off is
   the allocator's high-water mark, memory that keeps growing would be a leak.
4. Checks: a new distribution is fetched, applied and confirmed (the KRS's NOTIFY listener and
   fetch, the KDC's queries and confirmations); a TCP NOTIFY is answered NOERROR; the KDC answers
   SOA over UDP and TCP and enrols a node with a fresh package. Then VmRSS again, and the number
   of tracebacks and ERROR lines in each log.

Prints one table; exit status 0 whatever the verdicts (a harness, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
from krs_harness import machine, proc_status

from krs_lab.abuse import IdleConnections, malformed, send_tcp
from krs_lab.deployment import BIN, CZ, NODE, ZONE, Deployment, wait_until
from krs_plugin.confirmation import confirmation_message
from krs_plugin.crypto import load_jose_key
from krs_plugin.enrollment import BootstrapPackage
from krs_plugin.protocol import CHUNK_TYPE, manifest_name, notify_name, pending_name
from krs_plugin.receiver.enroll import NodeKeys, build_request, exchange, signed_update

RSS_BUDGET_MB = 20.0
CHUNK = dns.rdatatype.RdataType.make(CHUNK_TYPE)


def notify(dist_id: str) -> dns.message.Message:
    message = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
    message.set_opcode(dns.opcode.NOTIFY)
    return message


def every_flags_value(wire: bytes) -> list[bytes]:
    """``wire`` with each of the 65,536 values of the header's flags word (dnspython keeps every
    value it parsed: docs/operations.md, "Resource limits")."""
    return [wire[:2] + struct.pack("!H", flags) + wire[4:] for flags in range(65536)]


def send_udp_checked(port: int, wires: list[bytes], probe: dns.message.Message) -> int:
    """Send ``wires`` 100 at a time, each hundred followed by ``probe``, whose answer is awaited
    (the listener has then read the hundred before it). Returns the probes that got no answer."""
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for start in range(0, len(wires), 100):
            for wire in wires[start : start + 100]:
                sock.sendto(wire, ("127.0.0.1", port))
            probe.id = (probe.id + 1) & 0xFFFF
            sock.sendto(probe.to_wire(), ("127.0.0.1", port))
            try:
                while True:
                    reply = sock.recv(65535)
                    if reply[:2] == probe.to_wire()[:2] and reply[2] & 0x80:
                        break
            except TimeoutError:
                lost += 1
    return lost


@dataclass
class Figures:
    name: str
    rss_before: int
    messages: int = 0
    rss_after: int = 0
    hwm_after: int = 0
    seconds: float = 0.0
    probes_lost: int = 0
    idle_opened: int = 0
    idle_closed: int = 0
    tracebacks: int = 0
    errors: int = 0


def log_problems(text: str) -> tuple[int, int]:
    """Tracebacks, and lines logged at ERROR or above (text or JSON lines)."""
    errors = sum(
        1
        for line in text.splitlines()
        if " ERROR " in line or " CRITICAL " in line or '"level": "error"' in line
    )
    return text.count("Traceback"), errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="per listener and transport")
    parser.add_argument("--idle", type=int, default=1100, help="idle connections per listener")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the abuse (does RSS level?)")
    parser.add_argument("--nofile", type=int, default=1024, help="descriptor limit (0: inherit)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(machine())
    print(f"descriptor limit of both daemons: {args.nofile or 'inherited'}")
    with tempfile.TemporaryDirectory(prefix="krs-abuse-") as tmp:
        deployment = Deployment(Path(tmp))
        try:
            return run(deployment, rng, args)
        finally:
            deployment.close()


def start(
    deployment: Deployment, name: str, argv: list[str], ready: str, nofile: int
) -> subprocess.Popen[bytes]:
    """``argv`` under ``prlimit --nofile`` (prlimit execs it: the pid is the daemon's)."""
    limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
    process = deployment.start(name, [*limit, *argv])
    wait_until(lambda: ready in deployment.log(name), 20, f"{name} to start")
    return process


def run(deployment: Deployment, rng: random.Random, args: argparse.Namespace) -> int:
    serve = [
        str(BIN / "krs-kdc"), "--state", str(deployment.state), "serve",
        "--listen", f"127.0.0.1:{deployment.kdc_port}", "--notify-retry", "0.3",
    ]  # fmt: skip
    kdc = start(deployment, "kdc", serve, "krs-kdc serving", args.nofile)
    deployment.write_config(log_format="json")
    krs = start(
        deployment,
        "krs",
        [str(BIN / "krs"), "run", "-c", str(deployment.config_path)],
        "listening for NOTIFY",
        args.nofile,
    )
    first = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(first, timeout=60)
    time.sleep(1)
    origin = dns.name.from_text(CZ)

    # Seeds: what each listener takes when nothing is wrong.
    package_file = Path(deployment.root) / "seed.enroll"
    deployment.kdc(
        "enroll", "create", "--node", "seed.edge.example.", "--zones", ZONE,
        "--output", str(package_file), "--kdc-address", f"127.0.0.1:{deployment.kdc_port}",
    )  # fmt: skip
    package = BootstrapPackage.parse(package_file.read_text())
    keys = NodeKeys.generate("hpke")
    now = time.time()
    update = signed_update(package, keys, build_request(package, keys, "127.0.0.1:9", now), now)
    signer = load_jose_key(deployment.node_dir / "signing.key")
    report = {"node_id": NODE, "successful_keys": [], "failed_keys": []}
    kdc_seeds = [
        dns.message.make_query(origin, dns.rdatatype.SOA).to_wire(),
        dns.message.make_query(manifest_name(NODE, first, origin), CHUNK).to_wire(),
        dns.message.make_query(
            pending_name(NODE, origin), dns.rdatatype.TXT, use_edns=0, payload=1232
        ).to_wire(),
        dns.message.make_query("www.example.org.", dns.rdatatype.A).to_wire(),
        update,
        confirmation_message(first, CZ, report, signer).to_wire(),
        confirmation_message(first, CZ, report, None).to_wire(),
    ]
    krs_seeds = [
        notify(first).to_wire(),
        notify("6b037da1").to_wire(),
        dns.message.make_query(notify_name(first, CZ), dns.rdatatype.SOA, use_edns=0).to_wire(),
    ]
    targets = [
        ("krs run (NOTIFY)", krs.pid, deployment.notify_port, krs_seeds, notify(first)),
        (
            "krs-kdc serve",
            kdc.pid,
            deployment.kdc_port,
            kdc_seeds,
            dns.message.make_query(origin, dns.rdatatype.SOA),
        ),
    ]
    results = []
    for name, pid, port, seeds, probe in targets:
        figures = Figures(name, proc_status(pid)["VmRSS"])
        for round_ in range(1, args.rounds + 1):
            started = time.monotonic()
            wires = list(malformed(rng, seeds, args.count))
            if round_ == 1:
                wires += every_flags_value(seeds[0])
            figures.messages += len(wires) + args.count
            figures.probes_lost += send_udp_checked(port, wires, probe)
            send_tcp(rng, port, list(malformed(rng, seeds, args.count)))
            figures.seconds += time.monotonic() - started
            idle = IdleConnections(port, args.idle)
            time.sleep(5)
            idle.close()
            figures.idle_opened += idle.opened
            figures.idle_closed += idle.closed_by_server
            print(
                f"{name}, round {round_}: {len(wires) + args.count} messages in "
                f"{time.monotonic() - started - 5:.1f} s, then {args.idle} idle connections for "
                f"5 s; VmRSS {proc_status(pid)['VmRSS'] / 1024:.1f} MB",
                flush=True,
            )
        results.append((figures, pid))

    # Still answering correctly?
    checks = []
    second = deployment.distribute("--zone", ZONE)
    try:
        deployment.wait_confirmed(second, timeout=60)
        applied = any(s["id"] == second and s["outcome"] == "applied" for s in deployment.status())
        checks.append(("new distribution fetched, applied, confirmed", applied))
    except Exception as exc:  # a harness reports, it does not stop
        checks.append((f"new distribution confirmed ({exc})", False))
    reply = dns.query.tcp(notify(second), "127.0.0.1", port=deployment.notify_port, timeout=5)
    checks.append(("krs run: TCP NOTIFY answered NOERROR", reply.rcode() == dns.rcode.NOERROR))
    for transport in (dns.query.udp, dns.query.tcp):
        reply = transport(
            dns.message.make_query(origin, dns.rdatatype.SOA),
            "127.0.0.1",
            port=deployment.kdc_port,
            timeout=5,
        )
        checks.append(
            (
                f"krs-kdc serve: SOA over {transport.__name__.upper()}",
                reply.rcode() == dns.rcode.NOERROR and bool(reply.answer),
            )
        )
    fresh_file = Path(deployment.root) / "fresh.enroll"
    deployment.kdc(
        "enroll", "create", "--node", "fresh.edge.example.", "--zones", ZONE,
        "--output", str(fresh_file), "--kdc-address", f"127.0.0.1:{deployment.kdc_port}",
    )  # fmt: skip
    fresh = BootstrapPackage.parse(fresh_file.read_text())
    keys = NodeKeys.generate("hpke")
    now = time.time()
    wire = signed_update(fresh, keys, build_request(fresh, keys, "127.0.0.1:9", now), now)
    with contextlib.suppress(Exception):
        reply = exchange(wire, "127.0.0.1", deployment.kdc_port, 10)
    checks.append(("krs-kdc serve: enrolment answered NOERROR", reply.rcode() == dns.rcode.NOERROR))

    time.sleep(1)
    logs = {"krs run (NOTIFY)": deployment.log("krs"), "krs-kdc serve": deployment.log("kdc")}
    print()
    print(
        f"{'listener':18} {'messages':>9} {'seconds':>8} {'probes lost':>11} "
        f"{'idle opened/closed':>18} {'RSS before':>11} {'RSS after':>10} {'delta':>8} "
        f"{'tracebacks':>10} {'ERROR lines':>11}"
    )
    ok = all(passed for _, passed in checks)
    for figures, pid in results:
        status = proc_status(pid)
        figures.rss_after, figures.hwm_after = status["VmRSS"], status["VmHWM"]
        figures.tracebacks, figures.errors = log_problems(logs[figures.name])
        delta = (figures.rss_after - figures.rss_before) / 1024
        ok = ok and delta <= RSS_BUDGET_MB and figures.tracebacks == 0
        print(
            f"{figures.name:18} {figures.messages:>9} {figures.seconds:>8.1f} "
            f"{figures.probes_lost:>11} {f'{figures.idle_opened}/{figures.idle_closed}':>18} "
            f"{figures.rss_before / 1024:>8.1f} MB {figures.rss_after / 1024:>7.1f} MB "
            f"{delta:>+5.1f} MB {figures.tracebacks:>10} {figures.errors:>11}"
        )
    print()
    for what, passed in checks:
        print(f"{'ok  ' if passed else 'FAIL'} {what}")
    print(
        f"verdict: {'both listeners survived' if ok else 'FAILED'} "
        f"(answers correct, RSS within {RSS_BUDGET_MB:.0f} MB, no traceback)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
