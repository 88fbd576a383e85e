"""Helpers shared by the integration tests (loopback only)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free for both UDP and TCP (DNS servers need the same number on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
