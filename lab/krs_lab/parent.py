"""A lab parent that takes signed UPDATEs of the child's DS (issue 23): the parent zone
(``lab.example.``) signed by Knot, which accepts TSIG-signed RFC 2136 UPDATEs of DS records at the
child's delegation only, and an NSD secondary fed by AXFR from Knot that is HELD BACK: Knot sends
it no NOTIFY and the SOA refresh is an hour, so it keeps the zone it transferred at start until
``release()`` forces a transfer. A test thus sees one parent address with the new DS and one
without, as when a real parent's servers lag (docs/lifecycle.md, "Seeing the DS").

Knot was chosen over BIND because its automatic signing and its update ACL work the same on
Debian 12 (Knot 3.2) and 13 (3.4); BIND 9.20 dropped the auto-dnssec 9.18 needs for this.

Both servers use one port: Knot on 127.0.0.1, NSD on ::1, and the zone's NS set names them (ns1
A 127.0.0.1, ns2 AAAA ::1), so a resolver that looks the NS set up finds both addresses on that
port (``ParentConfig.port``). Everything is in ``root``; ``close()`` stops both processes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY

from krs_lab.ports import free_port
from krs_lab.process import LabError, ServerProcess, server_binary

PARENT = "lab.example."
CHILD = "child.lab.example."
TSIG_NAME = "ds-push"


def _free_on_both() -> int:
    """A port free on 127.0.0.1 (free_port) that is also free on ::1, UDP and TCP."""
    for _ in range(100):
        port = free_port("127.0.0.1")
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET6, kind) as probe:
                    probe.bind(("::1", port))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                raise LabError("::1 is not available (IPv6 off on loopback?)") from None
            continue
        return port
    raise LabError("no port free on both 127.0.0.1 and ::1")


def _ask(host: str, port: int, name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    query.flags &= ~dns.flags.RD
    return dns.query.tcp(query, host, port=port, timeout=3)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class LabParent:
    """The parent's two servers; ``start()`` brings them up signed and in step."""

    root: Path
    zone: str = PARENT
    child: str = CHILD
    child_ns: Sequence[tuple[str, str]] = (("ns1.child", "127.0.0.1"),)  # (name, glue A)
    ttl: int = 60  # every record's TTL, the DS's as pushed aside
    port: int = 0
    denial: str = "nsec"  # "nsec", "nsec3" or "nsec3-opt-out": how Knot proves absence
    knot: ServerProcess | None = field(default=None, init=False)
    nsd: ServerProcess | None = field(default=None, init=False)
    trust_anchor: str = field(default="", init=False)
    """The parent's KSK as a DS line ("lab.example. IN DS tag 13 2 hex"), for Unbound's
    trust-anchor and ParentConfig.trust_anchor."""

    # --- what tests use ---------------------------------------------------------------------

    @property
    def primary(self) -> str:
        """Knot's address, host:port: takes UPDATEs, serves every change at once."""
        return f"127.0.0.1:{self.port}"

    @property
    def secondary(self) -> str:
        """NSD's address, [::1]:port: lags until ``release()``."""
        return f"[::1]:{self.port}"

    @property
    def addresses(self) -> tuple[str, str]:
        return self.primary, self.secondary

    @property
    def tsig_file(self) -> Path:
        """The TSIG key in BIND's format (tsig-keygen's), mode 0600."""
        return self.root / f"{TSIG_NAME}.key"

    def ds_at(self, address: str, owner: str | None = None) -> set[str]:
        """The DS rdata texts ("tag alg dt digest") ``address`` serves for the child (or
        ``owner``), unvalidated."""
        name = owner or self.child
        reply = _ask(*_host_port(address), name, dns.rdatatype.DS)
        rrset = reply.get_rrset(
            reply.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.DS
        )
        return {r.to_text() for r in rrset or ()}

    def serial_at(self, address: str) -> int:
        reply = _ask(*_host_port(address), self.zone, dns.rdatatype.SOA)
        soa = reply.get_rrset(
            reply.answer, dns.name.from_text(self.zone), dns.rdataclass.IN, dns.rdatatype.SOA
        )
        if soa is None:
            raise LabError(f"{address} serves no SOA for {self.zone}")
        return int(soa[0].serial)

    def release(self, timeout: float = 20) -> None:
        """Let the held-back secondary catch up: a forced AXFR, waited for until it serves the
        primary's serial."""
        done = self._nsd_control("force_transfer", self.zone)
        if done.returncode != 0:
            raise LabError(f"nsd-control force_transfer: {done.stdout}{done.stderr}")
        self.wait_in_step(timeout)

    def wait_in_step(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, EOFError, dns.exception.DNSException, LabError):
                if self.serial_at(self.secondary) == self.serial_at(self.primary):
                    return
            if time.monotonic() > deadline:
                raise LabError(f"the secondary did not catch up: {self.tails()}")
            time.sleep(0.1)

    def wait_signed_ds(self, address: str, wanted: set[str], timeout: float = 20) -> None:
        """Until ``address`` serves exactly ``wanted`` (Knot signs an UPDATE before serving)."""
        deadline = time.monotonic() + timeout
        while self.ds_at(address) != wanted:
            if time.monotonic() > deadline:
                raise LabError(f"{address} serves {self.ds_at(address)}, not {wanted}")
            time.sleep(0.1)

    # --- start and stop ---------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        for binary, package in (("knotd", "knot"), ("nsd", "nsd")):
            if server_binary(binary) is None:
                raise LabError(f"{binary} is not installed (apt-get install {package})")
        self.port = self.port or _free_on_both()
        for folder in ("knot", "knot/db", "knot/run", "knot/zones", "nsd"):
            (self.root / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tsig_file.touch(mode=0o600)
        self.tsig_file.write_text(
            f'key "{TSIG_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'
        )
        self._write_knot(secret)
        self._write_nsd()
        knotd = server_binary("knotd")
        assert knotd is not None
        self.knot = ServerProcess(
            "knotd",
            [knotd, "-c", str(self.root / "knot" / "knot.conf")],
            self.root / "knot" / "knotd.log",
            self.root / "knot",
        )
        self.knot.start()
        self.knot.wait_answering("127.0.0.1", self.port, [self.zone], timeout)
        self.trust_anchor = self._wait_anchor(timeout)
        nsd = server_binary("nsd")
        assert nsd is not None
        self.nsd = ServerProcess(
            "nsd",
            [nsd, "-d", "-c", str(self.root / "nsd" / "nsd.conf")],
            self.root / "nsd" / "nsd.log",
            self.root / "nsd",
        )
        self.nsd.start()
        self.nsd.wait_answering("::1", self.port, [self.zone], timeout)
        self.wait_in_step(timeout)

    def _zone_text(self) -> str:
        child = dns.name.from_text(self.child).relativize(dns.name.from_text(self.zone))
        glue = "".join(
            f"{child} NS {name}\n{name} A {address}\n" for name, address in self.child_ns
        )
        return (
            f"$ORIGIN {self.zone}\n$TTL {self.ttl}\n"
            f"@ SOA ns1 hostmaster 1 3600 900 1209600 {self.ttl}\n"
            "@ NS ns1\n@ NS ns2\nns1 A 127.0.0.1\nns2 AAAA ::1\n" + glue
        )

    def _write_knot(self, secret: str) -> None:
        knot = self.root / "knot"
        (knot / "zones" / f"{self.zone}zone").write_text(self._zone_text())
        self_config = (
            "server:\n"
            f'    rundir: "{knot}/run"\n'
            f'    pidfile: "{knot}/run/knot.pid"\n'
            f"    listen: 127.0.0.1@{self.port}\n"
            "control:\n"
            f'    listen: "{knot}/run/knot.sock"\n'
            "log:\n  - target: stderr\n    any: info\n"
            "database:\n"
            f'    storage: "{knot}/db"\n'
            "key:\n"
            f"  - id: {TSIG_NAME}\n    algorithm: hmac-sha256\n    secret: {secret}\n"
            "acl:\n"
            # The child's DS only: what a registry lets a registrar's DS push change.
            "  - id: ds-update\n"
            f"    key: {TSIG_NAME}\n"
            "    action: update\n"
            "    update-type: DS\n"
            "    update-owner: name\n"
            "    update-owner-match: equal\n"
            f"    update-owner-name: {self.child}\n"
            "  - id: transfer\n    address: [127.0.0.1, ::1]\n    action: transfer\n"
            "policy:\n"
            "  - id: parent\n    algorithm: ecdsap256sha256\n    zsk-lifetime: 0\n"
            f"{self._denial_options()}"
            "template:\n"
            "  - id: default\n"
            f'    storage: "{knot}/zones"\n'
            "    zonefile-sync: -1\n"
            "    zonefile-load: difference-no-serial\n"
            "    journal-content: all\n"
            "zone:\n"
            f"  - domain: {self.zone}\n"
            "    dnssec-signing: on\n"
            "    dnssec-policy: parent\n"
            "    acl: [ds-update, transfer]\n"
        )
        (knot / "knot.conf").write_text(self_config)

    def _denial_options(self) -> str:
        if self.denial == "nsec":
            return ""
        if self.denial not in ("nsec3", "nsec3-opt-out"):
            raise LabError(f"denial {self.denial!r}: expected nsec, nsec3 or nsec3-opt-out")
        opt_out = "on" if self.denial == "nsec3-opt-out" else "off"
        return f"    nsec3: on\n    nsec3-salt-length: 8\n    nsec3-opt-out: {opt_out}\n"

    def _write_nsd(self) -> None:
        nsd = self.root / "nsd"
        (nsd / "nsd.conf").write_text(
            "server:\n"
            f"    ip-address: ::1@{self.port}\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    zonesdir: "{nsd}"\n'
            '    database: ""\n'
            f'    zonelistfile: "{nsd}/zone.list"\n'
            f'    pidfile: "{nsd}/nsd.pid"\n'
            f'    xfrdfile: "{nsd}/xfrd.state"\n'
            f'    xfrdir: "{nsd}"\n'
            "    server-count: 1\n"
            "    verbosity: 2\n"
            "remote-control:\n"
            "    control-enable: yes\n"
            f'    control-interface: "{nsd}/nsd.ctl"\n'
            "zone:\n"
            f'    name: "{self.zone}"\n'
            f'    zonefile: "{nsd}/{self.zone}zone"\n'
            f"    request-xfr: AXFR 127.0.0.1@{self.port} NOKEY\n"
            "    allow-notify: 127.0.0.1 NOKEY\n"
        )

    def _nsd_control(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsd-control", "-c", str(self.root / "nsd" / "nsd.conf"), *command],
            capture_output=True,
            text=True,
            timeout=10,
        )

    def _wait_anchor(self, timeout: float) -> str:
        """The DS line of Knot's KSK once the zone is served signed."""
        deadline = time.monotonic() + timeout
        name = dns.name.from_text(self.zone)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, EOFError, dns.exception.DNSException):
                reply = _ask("127.0.0.1", self.port, self.zone, dns.rdatatype.DNSKEY)
                keys = reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
                ksks = [k for k in keys or () if k.flags & 0x0001]
                if ksks:
                    assert isinstance(ksks[0], dns.rdtypes.ANY.DNSKEY.DNSKEY)
                    ds = dns.dnssec.make_ds(name, ksks[0], "SHA256")
                    return f"{self.zone} IN DS {ds.to_text()}"
            time.sleep(0.1)
        raise LabError(f"Knot did not serve {self.zone} signed: {self.tails()}")

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.tail()}" for p in (self.knot, self.nsd) if p is not None
        )

    def stop(self) -> None:
        for process in (self.nsd, self.knot):
            if process is not None:
                process.stop()

    close = stop
