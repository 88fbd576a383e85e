"""Shared by ``krs_latency.py`` and ``krs_bulk.py``: a NOTIFY relay that timestamps what the KDC
sends, the memory figures of a process, percentiles, and a line describing the machine.

Not a benchmark itself. The scripts import it from their own directory.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from pathlib import Path

import dns.exception
import dns.message

from krs_plugin.errors import KrsError
from krs_plugin.protocol import parse_notify_name


class NotifyRelay:
    """A UDP forwarder between the KDC and the KRS's NOTIFY listener (both on 127.0.0.1).

    The KDC's node record points at the relay; the relay notes ``time.perf_counter()`` the moment
    a NOTIFY datagram arrives (before it even parses it), forwards the datagram to the KRS and the
    KRS's answer back to the KDC. So "NOTIFY sent" is measured where the packet leaves the KDC's
    socket, give or take the loopback delivery (tens of microseconds); the forwarding itself
    (one recvfrom and one sendto in Python, about 0.1 ms) is inside the measured interval.
    """

    def __init__(self, control_zone: str, target_port: int) -> None:
        self.control_zone = control_zone
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.sent: dict[str, float] = {}  # distribution id -> perf_counter of its first NOTIFY
        self.count: dict[str, int] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="notify-relay", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.settimeout(2.0)
        with upstream:
            while not self.closed:
                try:
                    wire, source = self.sock.recvfrom(65535)
                except OSError:
                    return
                arrived = time.perf_counter()
                try:
                    message = dns.message.from_wire(wire)
                    dist_id = parse_notify_name(message.question[0].name, self.control_zone)
                except (dns.exception.DNSException, KrsError, IndexError, ValueError):
                    dist_id = ""
                with self.cond:
                    self.sent.setdefault(dist_id, arrived)
                    self.count[dist_id] = self.count.get(dist_id, 0) + 1
                    self.cond.notify_all()
                try:
                    upstream.sendto(wire, self.target)
                    reply = upstream.recv(65535)
                except OSError:
                    continue  # the KRS did not answer: the KDC retries
                try:
                    self.sock.sendto(reply, source)
                except OSError:
                    return

    def wait(self, dist_id: str, timeout: float) -> float:
        """perf_counter of the first NOTIFY for ``dist_id``; TimeoutError if none came."""
        with self.cond:
            if not self.cond.wait_for(lambda: dist_id in self.sent, timeout):
                raise TimeoutError(f"no NOTIFY for {dist_id} within {timeout} s")
            return self.sent[dist_id]

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def proc_status(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak RSS so far)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm") and value.strip().endswith("kB"):
            out[name] = int(value.split()[0])
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``: a value that was measured."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load:.2f} at start"
    )
