"""The adapter test harness: one lab per nameserver, behind one small interface, so the scenario
table runs unchanged against each. A lab starts the real server (from the OS packages) as a
process in a temporary directory on free loopback ports, with unsigned test zones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype

from krs_plugin.adapters.base import Adapter
from krs_plugin.lab.bind9 import Bind9Lab

ZONES = ("example.com.", "example.net.")
UNSERVED = "not-served.example."


class ServerLab(Protocol):
    name: str
    host: str
    port: int

    def adapter(self) -> Adapter: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def break_key_access(self) -> None:
        """Make the server unable to read newly installed keys (a reload that fails)."""
        ...


class Bind9ServerLab:
    name = "bind9"

    def __init__(self, root: Path) -> None:
        self.lab = Bind9Lab(root, ZONES)
        self.lab.start()
        self.host = self.lab.host
        self.port = self.lab.port

    def adapter(self) -> Adapter:
        from krs_plugin.adapters.bind9 import Bind9Adapter

        settings = {**self.lab.adapter_settings(), "verify_timeout": 3}
        return Bind9Adapter(settings, zones=[dns.name.from_text(z) for z in ZONES])

    def stop(self) -> None:
        self.lab.stop()

    def start(self) -> None:
        self.lab.start()

    def break_key_access(self) -> None:
        # named running as bind cannot enter a root-owned 0700 key directory: loadkeys "succeeds"
        # and nothing is published, the pitfall SERVERS.md describes. (The lab root must be
        # reachable by bind, see the fixture.)
        self.lab.stop()
        self.lab.user = "bind"
        os.chown(self.lab.key_directory, 0, 0)
        os.chmod(self.lab.key_directory, 0o700)
        self.lab.start()


LABS = {"bind9": Bind9ServerLab}


# --- what the server really serves, checked with dnspython only -----------------------------


class Served:
    """The DNSKEY tags a server publishes for a zone and which keys' RRSIGs validate."""

    def __init__(self, host: str, port: int, zone: str) -> None:
        self.zone = dns.name.from_text(zone)
        self.dnskey, dnskey_sigs = self._get(host, port, dns.rdatatype.DNSKEY)
        soa, soa_sigs = self._get(host, port, dns.rdatatype.SOA)
        self.tags = {dns.dnssec.key_id(k) for k in self.dnskey} if self.dnskey else set()
        self.dnskey_signers = self._valid(self.dnskey, dnskey_sigs)
        self.soa_signers = self._valid(soa, soa_sigs)

    def _get(self, host: str, port: int, rdtype: dns.rdatatype.RdataType):  # type: ignore[no-untyped-def]
        reply = dns.query.tcp(
            dns.message.make_query(self.zone, rdtype, want_dnssec=True), host, port=port, timeout=3
        )
        rrset = reply.get_rrset(reply.answer, self.zone, dns.rdataclass.IN, rdtype)
        sigs = reply.get_rrset(
            reply.answer, self.zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype
        )
        return rrset, sigs

    def _valid(self, rrset, sigs) -> set[int]:  # type: ignore[no-untyped-def]
        if rrset is None or sigs is None or self.dnskey is None:
            return set()
        valid = set()
        for sig in sigs:
            try:
                dns.dnssec.validate_rrsig(rrset, sig, {self.zone: self.dnskey})
            except dns.exception.ValidationFailure:
                continue
            valid.add(sig.key_tag)
        return valid
