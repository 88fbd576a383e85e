"""Start a server process, wait until it answers DNS, stop it, keep its log for error messages."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from krs_plugin.errors import KrsError


class LabError(KrsError):
    """A lab server did not start or answer; the message carries the end of its log."""


def answers_soa(host: str, port: int, zone: str, timeout: float = 0.5) -> bool:
    query = dns.message.make_query(dns.name.from_text(zone), dns.rdatatype.SOA)
    try:
        reply = dns.query.tcp(query, host, port=port, timeout=timeout)
    except (OSError, EOFError, dns.exception.DNSException):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def server_binary(name: str) -> str | None:
    """A server from the OS packages: on PATH, or in /usr/sbin (not on a plain user's PATH)."""
    sbin = Path("/usr/sbin") / name
    return shutil.which(name) or (str(sbin) if sbin.exists() else None)


class ServerProcess:
    """One foreground server process whose output goes to ``log``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # A process group of its own, so that stop() reaches the server itself and not only
        # the process started: named run through bwrap (sysroot.py) with -u bind outlived
        # bwrap, since changing its user cleared the parent-death signal bwrap had set.
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip

    def wait_answering(self, host: str, port: int, zones: Sequence[str], timeout: float) -> None:
        """Until every zone answers its SOA; on failure the process is stopped, then LabError."""
        try:
            self._wait_answering(host, port, zones, timeout)
        except LabError:
            self.stop()
            raise

    def _wait_answering(self, host: str, port: int, zones: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(zones)
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            if answers_soa(host, port, pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise LabError(f"{self.name} did not answer for {pending[0]}: {self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; also when the process
        started has exited but left the server running (the group outlives it)."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        deadline = time.monotonic() + timeout
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _group_alive(self) -> bool:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LabServer:
    """What every lab does the same way with its ``ServerProcess``."""

    process: ServerProcess | None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        """The server's own log (empty before the first start)."""
        if self.process is None:
            return ""
        return self.process.log.read_text(errors="replace")
