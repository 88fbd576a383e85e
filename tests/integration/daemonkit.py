"""Test helpers around ``krs_lab.deployment`` (the KDC + node pair as real processes):
timeouts fail the test, plus an HTTP getter, RSS and a counting DNS/TCP proxy."""

from __future__ import annotations

import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from krs_lab import deployment as _deployment
from krs_lab.deployment import BIN, CZ, NODE, ZONE, Deployment, run
from krs_lab.process import LabError

__all__ = ["BIN", "CZ", "NODE", "ZONE", "Deployment", "run"]


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> None:
    try:
        _deployment.wait_until(predicate, timeout, what)
    except LabError as exc:
        pytest.fail(str(exc))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class CountingProxy:
    """A DNS/TCP forwarder in front of a control-zone server that records every question and can
    run a hook after each answer (to kill the server behind it mid-fetch)."""

    def __init__(self, upstream_port: int, after_answer: Callable[[str], None] | None = None):
        self.questions: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(5)
                while True:
                    try:
                        query, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
                    except (EOFError, OSError, dns.exception.DNSException):
                        return
                    qname = query.question[0].name.to_text() if query.question else ""
                    proxy.questions.append(qname)
                    try:
                        reply = dns.query.tcp(query, "127.0.0.1", port=upstream_port, timeout=2)
                    except (OSError, EOFError, dns.exception.DNSException):
                        return  # the server behind is gone: the client sees a dropped connection
                    dns.query.send_tcp(sock, reply)
                    if after_answer is not None:
                        after_answer(qname)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
