"""`krs run` and `krs-kdc serve` as real processes against the abuse of issue 20: idle TCP
connections past the descriptor limit (finding 7) and a NOTIFY flood in the KDC's name
(finding 8). Loopback only; the limits are docs/operations.md, "Resource limits"."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from daemonkit import BIN, CZ, ZONE, Deployment, wait_until
from test_krs_daemon import kdc_dnskeys, node_dnskeys

from krs_lab.abuse import IdleConnections
from krs_plugin.protocol import notify_name

pytestmark = pytest.mark.integration

NOFILE = 400  # the descriptor limit the daemons run with: 144 connections per listener


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.close()


def limited(argv: list[str]) -> list[str]:
    return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", *argv]


def start_krs_limited(deployment: Deployment) -> None:
    deployment.write_config()
    deployment.start("krs", limited([str(BIN / "krs"), "run", "-c", str(deployment.config_path)]))
    wait_until(lambda: "listening for NOTIFY" in deployment.log("krs"), 20, "krs run to start")


def start_kdc_limited(deployment: Deployment) -> None:
    argv = [
        str(BIN / "krs-kdc"), "--state", str(deployment.state), "serve",
        "--listen", f"127.0.0.1:{deployment.kdc_port}", "--notify-retry", "0.3",
    ]  # fmt: skip
    deployment.start("kdc", limited(argv))
    wait_until(lambda: "krs-kdc serving" in deployment.log("kdc"), 20, "krs-kdc serve to start")


def notify(dist_id: str) -> dns.message.Message:
    query = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
    query.set_opcode(dns.opcode.NOTIFY)
    return query


def test_idle_connections_to_the_notify_port_leave_the_fetch_its_descriptors(
    deployment: Deployment,
) -> None:
    """600 idle connections, kept open, against `krs run` limited to 400 descriptors: the
    distribution is fetched, applied and confirmed, TCP NOTIFY is still answered, and the log
    has a warning about the closed connections and no traceback."""
    deployment.start_kdc()
    start_krs_limited(deployment)
    idle = IdleConnections(deployment.notify_port, 600)
    try:
        wait_until(lambda: idle.opened >= 600, 20, "600 connections")
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id, timeout=30)
        reply = dns.query.tcp(notify(dist_id), "127.0.0.1", port=deployment.notify_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
    finally:
        idle.close()
    assert node_dnskeys(deployment) == kdc_dnskeys(deployment)
    log = deployment.log("krs")
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert "closed to stay within 144 open at once" in log
    print(f"opened {idle.opened}, closed by krs run {idle.closed_by_server}")


def test_idle_connections_to_the_kdc_leave_it_serving(deployment: Deployment) -> None:
    """The same against `krs-kdc serve`: its NOTIFY goes out, the node's fetch over TCP is
    answered, the confirmation taken."""
    start_kdc_limited(deployment)
    deployment.start_krs()
    idle = IdleConnections(deployment.kdc_port, 600)
    try:
        wait_until(lambda: idle.opened >= 600, 20, "600 connections")
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id, timeout=30)
    finally:
        idle.close()
    assert node_dnskeys(deployment) == kdc_dnskeys(deployment)
    log = deployment.log("kdc")
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert "closed to stay within 144 open at once" in log


class Flood:
    """NOTIFYs for made-up ids at about ``rate`` a second, sent from 127.0.0.1, the KDC's own
    address (to `krs run` a forged one is the same), until ``close``."""

    def __init__(self, port: int, rate: int = 3000) -> None:
        self.port = port
        self.rate = rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(8)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            while not self._stop.is_set():
                started = time.monotonic()
                for _ in range(self.rate // 100):
                    wire = notify(f"{rng.getrandbits(31) | 1 << 31:08x}").to_wire()
                    sock.sendto(wire, ("127.0.0.1", self.port))
                    self.sent += 1
                    try:
                        while sock.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                time.sleep(max(0.0, 0.01 - (time.monotonic() - started)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def without_made_up_ids(deployment: Deployment) -> str:
    """The logs of both daemons without the lines about the flood's made-up ids."""
    return "\n".join(
        line for line in deployment.all_logs().splitlines() if "not published" not in line
    )[-5000:]


def test_a_notify_flood_in_the_kdcs_name_delays_a_distribution_by_seconds(
    deployment: Deployment,
) -> None:
    """3,000 NOTIFYs a second from the KDC's address use up its budget, so the KDC's own NOTIFY
    is refused; the refusal brings the poll forward (poll_interval is 600 s here) and the
    distribution's keys are installed within seconds, then confirmed."""
    deployment.start_kdc()
    deployment.start_krs()
    flood = Flood(deployment.notify_port)
    try:
        wait_until(lambda: flood.sent > 3000, 10, "the flood to start")
        started = time.monotonic()
        dist_id = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: node_dnskeys(deployment) == kdc_dnskeys(deployment),
            15,
            lambda: f"{dist_id} applied under the flood:\n{without_made_up_ids(deployment)}",
        )
        took = time.monotonic() - started
        deployment.wait_confirmed(dist_id, timeout=15)
    finally:
        flood.close()
    assert "Traceback" not in deployment.log("krs")
    print(f"applied {took:.1f} s after distribute, under {flood.sent} NOTIFYs")
