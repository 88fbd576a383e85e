"""Free loopback ports for servers that need the same number on UDP and TCP.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range every
outgoing query draws its source port from (the KRS, dig, Unbound and named asking the lab's
servers). Between the moment a port is found free and the moment the server binds it, such a
query could take it ("Address already in use", seen once in 2,200 tests under load). So the lab
draws its listening ports below the ephemeral range, where only explicit binds go, and never
hands the same port out twice in one process.

Under pytest-xdist several worker processes draw at once, each knowing only its own handed-out
ports: a port found free by one could be found free by another before either server binds it. So
each worker draws from its own share of the range (PYTEST_XDIST_WORKER gwN of
PYTEST_XDIST_WORKER_COUNT); docs/development.md, "Parallel tests".
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_LOWEST = 20000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _worker_share(lowest: int, highest: int) -> tuple[int, int]:
    """This process's part of ``lowest..highest``: all of it, except in a pytest-xdist worker,
    whose share no other worker draws from (two workers never race for one port)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        index = int(worker.removeprefix("gw"))
        count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    except (KeyError, ValueError):
        return lowest, highest
    if not 0 <= index < count:
        return lowest, highest
    size = (highest - lowest + 1) // count
    return lowest + index * size, lowest + (index + 1) * size - 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (DNS servers bind both), outside the
    ephemeral range when the kernel leaves room below it."""
    lowest, highest = _worker_share(_LOWEST, _ephemeral_low() - 1)
    if highest - lowest < 500:
        return _kernel_port(host)
    for _ in range(1000):
        port = random.randint(lowest, highest)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    return _kernel_port(host)


def _kernel_port(host: str) -> int:
    """A port the kernel picks, for a machine whose ephemeral range leaves nothing below."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
