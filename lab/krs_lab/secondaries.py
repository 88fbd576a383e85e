"""Standard secondaries of the KDC's control zone (issue 24, docs/scale.md): BIND, Knot or NSD,
each a plain process in ``root`` on a loopback port of its own, transferring the zone from
``krs-kdc serve`` with a TSIG key and taking its NOTIFYs. The configuration each one gets is the
one docs/scale.md gives operators, with the paths and ports of the lab.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdatatype

from krs_lab.ports import free_port
from krs_lab.process import LabError, ServerProcess, server_binary

KINDS = ("bind9", "knot", "nsd")
KEY_NAME = "kdc-transfer"


@dataclass(frozen=True)
class TransferKey:
    """The TSIG key the KDC and its secondaries share (hmac-sha256)."""

    name: str
    secret: str

    @classmethod
    def generate(cls, name: str = KEY_NAME) -> TransferKey:
        return cls(name, base64.b64encode(secrets.token_bytes(32)).decode())

    def bind_text(self) -> str:
        """The key as tsig-keygen writes it: for named.conf and ``krs-kdc serve --tsig-key``."""
        return f'key "{self.name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{self.secret}";\n}};\n'

    def write(self, path: Path) -> Path:
        path.touch(mode=0o600)
        path.write_text(self.bind_text())
        return path


def _named_options(key: TransferKey, root: Path, host: str, port: int) -> str:
    """The key and the options block of a lab named.conf: files in ``root``, one address."""
    return (
        key.bind_text() + "options {\n"
        f'    directory "{root}";\n'
        f'    pid-file "{root}/named.pid";\n'
        f'    session-keyfile "{root}/session.key";\n'
        f"    listen-on port {port} {{ {host}; }};\n"
        "    listen-on-v6 { none; };\n"
        "    recursion no;\n"
        "    notify no;\n"
        "};\n"
    )


class _OnePort:
    """What a lab server of the control zone on one loopback address offers the tests."""

    host: str
    port: int
    process: ServerProcess | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def tail(self) -> str:
        return self.process.tail() if self.process else ""


@dataclass
class Secondary(_OnePort):
    """One secondary of ``zone`` from the primary at ``primary`` (host, port)."""

    kind: str
    root: Path
    zone: str
    primary: tuple[str, int]
    key: TransferKey
    host: str = "127.0.0.1"
    port: int = 0
    process: ServerProcess | None = field(default=None, init=False)

    def start(self, timeout: float = 30) -> None:
        if self.kind not in KINDS:
            raise LabError(f"secondary kind {self.kind!r}: one of {', '.join(KINDS)}")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = self.port or free_port(self.host)
        argv = getattr(self, f"_{self.kind}")()
        self.process = ServerProcess(self.kind, argv, self.root / "server.log", self.root)
        self.process.start()
        self.wait_serial(None, timeout)

    def serial(self) -> int | None:
        """The SOA serial it serves, or None when it serves no zone (yet)."""
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        query.flags = 0
        try:
            reply = dns.query.tcp(query, self.host, port=self.port, timeout=2)
        except (OSError, EOFError, dns.exception.DNSException):
            return None
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None

    def wait_serial(self, wanted: int | None, timeout: float = 20) -> int:
        """Until it serves ``wanted`` (None: any serial, the first transfer done)."""
        deadline = time.monotonic() + timeout
        while True:
            serial = self.serial()
            if serial is not None and (wanted is None or serial == wanted):
                return serial
            if self.process is not None and not self.process.running:
                raise LabError(f"{self.kind} exited: {self.process.tail()}")
            if time.monotonic() > deadline:
                tail = self.process.tail() if self.process else ""
                raise LabError(f"{self.kind} serves serial {serial}, not {wanted}: {tail}")
            time.sleep(0.05)

    # --- each server's configuration (docs/scale.md) ----------------------------------------

    def _bind9(self) -> list[str]:
        named = server_binary("named")
        if named is None:
            raise LabError("named is not installed (apt-get install bind9)")
        host, port = self.primary
        (self.root / "named.conf").write_text(
            _named_options(self.key, self.root, self.host, self.port) + f'zone "{self.zone}" {{\n'
            "    type secondary;\n"
            f'    file "{self.root}/control.zone";\n'
            f'    primaries {{ {host} port {port} key "{self.key.name}"; }};\n'
            f"    allow-notify {{ {host}; }};\n"
            "};\n"
        )
        return [named, "-g", "-n", "1", "-c", str(self.root / "named.conf")]

    def _knot(self) -> list[str]:
        knotd = server_binary("knotd")
        if knotd is None:
            raise LabError("knotd is not installed (apt-get install knot)")
        host, port = self.primary
        for folder in ("run", "db", "zones"):
            (self.root / folder).mkdir(exist_ok=True)
        (self.root / "knot.conf").write_text(
            "server:\n"
            f'    rundir: "{self.root}/run"\n'
            f'    pidfile: "{self.root}/run/knot.pid"\n'
            f"    listen: {self.host}@{self.port}\n"
            "log:\n  - target: stderr\n    any: info\n"
            "database:\n"
            f'    storage: "{self.root}/db"\n'
            "key:\n"
            f"  - id: {self.key.name}\n    algorithm: hmac-sha256\n    secret: {self.key.secret}\n"
            "remote:\n"
            f"  - id: kdc\n    address: {host}@{port}\n    key: {self.key.name}\n"
            "acl:\n"
            f"  - id: kdc-notify\n    address: {host}\n    key: {self.key.name}\n"
            "    action: notify\n"
            "template:\n"
            "  - id: default\n"
            f'    storage: "{self.root}/zones"\n'
            "zone:\n"
            f"  - domain: {self.zone}\n"
            "    master: kdc\n"
            "    acl: kdc-notify\n"
        )
        return [knotd, "-c", str(self.root / "knot.conf")]

    def _nsd(self) -> list[str]:
        nsd = server_binary("nsd")
        if nsd is None:
            raise LabError("nsd is not installed (apt-get install nsd)")
        host, port = self.primary
        (self.root / "nsd.conf").write_text(
            "server:\n"
            f"    ip-address: {self.host}@{self.port}\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    zonesdir: "{self.root}"\n'
            '    database: ""\n'
            f'    zonelistfile: "{self.root}/zone.list"\n'
            f'    pidfile: "{self.root}/nsd.pid"\n'
            f'    xfrdfile: "{self.root}/xfrd.state"\n'
            f'    xfrdir: "{self.root}"\n'
            "    server-count: 1\n"
            "    verbosity: 2\n"
            "remote-control:\n"
            "    control-enable: no\n"
            "key:\n"
            f'    name: "{self.key.name}"\n'
            "    algorithm: hmac-sha256\n"
            f'    secret: "{self.key.secret}"\n'
            "zone:\n"
            f'    name: "{self.zone}"\n'
            f'    zonefile: "{self.root}/control.zone"\n'
            f"    request-xfr: {host}@{port} {self.key.name}\n"
            f"    allow-notify: {host} {self.key.name}\n"
        )
        return [nsd, "-d", "-c", str(self.root / "nsd.conf")]


@dataclass
class UpdatedPrimary(_OnePort):
    """A BIND primary of the control zone that takes TSIG-signed UPDATEs: what ``krs-kdc serve
    --publish-to`` publishes into (docs/scale.md). It starts with the apex only."""

    root: Path
    zone: str
    key: TransferKey
    host: str = "127.0.0.1"
    port: int = 0
    process: ServerProcess | None = field(default=None, init=False)

    def start(self, timeout: float = 30) -> None:
        named = server_binary("named")
        if named is None:
            raise LabError("named is not installed (apt-get install bind9)")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = self.port or free_port(self.host)
        (self.root / "control.zone").write_text(
            f"$ORIGIN {self.zone}\n$TTL 300\n"
            "@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 127.0.0.1\n"
        )
        (self.root / "named.conf").write_text(
            _named_options(self.key, self.root, self.host, self.port) + f'zone "{self.zone}" {{\n'
            "    type primary;\n"
            f'    file "{self.root}/control.zone";\n'
            f'    allow-update {{ key "{self.key.name}"; }};\n'
            f'    allow-transfer {{ key "{self.key.name}"; }};\n'
            "};\n"
        )
        argv = [named, "-g", "-n", "1", "-c", str(self.root / "named.conf")]
        self.process = ServerProcess("named", argv, self.root / "server.log", self.root)
        self.process.start()
        self.process.wait_answering(self.host, self.port, [self.zone], timeout)


def check_config(secondary: Secondary) -> subprocess.CompletedProcess[str] | None:
    """The server's own configuration check where it has one (named-checkconf, knotc
    conf-check, nsd-checkconf), for the docs' snippets."""
    tool = {
        "bind9": ["named-checkconf", str(secondary.root / "named.conf")],
        "knot": ["knotc", "-c", str(secondary.root / "knot.conf"), "conf-check"],
        "nsd": ["nsd-checkconf", str(secondary.root / "nsd.conf")],
    }[secondary.kind]
    return subprocess.run(tool, capture_output=True, text=True, timeout=30)
