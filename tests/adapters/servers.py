"""The adapter test harness: one lab per nameserver, behind one small interface, so the scenario
table runs unchanged against each. A lab starts the real server (from the OS packages) as a
process in a temporary directory on free loopback ports, with unsigned test zones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_lab.bind9 import Bind9Lab, version_tuple
from krs_lab.knot import KnotLab
from krs_lab.nsd import NsdLab
from krs_lab.powerdns import PowerDnsLab
from krs_lab.process import server_binary
from krs_lab.sysroot import Sysroot, other_generation, sysroot_dir
from krs_plugin.adapters.base import Adapter
from krs_plugin.adapters.keyfiles import KeyFolder

ZONES = ("example.com.", "example.net.")
UNSERVED = "not-served.example."


class ServerLab(Protocol):
    name: str
    host: str
    port: int
    zsk_needs_ksk: bool
    """The server refuses a ZSK without an active KSK of its algorithm (Knot)."""
    serves_last_keys_when_emptied: bool
    """With its keys all taken away, the server goes on serving the zone as last signed (Knot
    cannot load a signed zone without keys; docs/servers/knot.md)."""
    reload_failure: str
    """Text the adapter's error carries when the server does not take the keys (see
    ``break_reload``)."""
    reload_break_seen_first: bool
    """The adapter sees ``break_reload``'s break before writing: refused, nothing changed
    (PowerDNS through pdnsutil, which reads the zone's PRESIGNED as stored)."""
    lone_zsk_refusal: str
    """Text of the refusal of a ZSK without a KSK of its algorithm (when ``zsk_needs_ksk``)."""
    reload_break_roles: tuple[str, ...]
    """The keys ``break_reload``'s scenario installs (a lone ZSK, or a KSK and a ZSK where a
    lone ZSK is refused before the server is asked)."""

    def adapter(self) -> Adapter: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...
    def stored(self) -> object:
        """Everything the server keeps about keys (files, KASP rows), to compare before/after."""
        ...

    def stored_tags(self) -> set[int]: ...
    def break_reload(self) -> None:
        """Make the server fail to take a lone new ZSK: BIND cannot read it (a permission
        problem), Knot refuses a ZSK without a KSK by itself."""
        ...


def other_generation_root() -> Sysroot:
    """The debootstrap root of the Debian release beside the host's (BIND 9.20 on a Debian 12
    host, 9.18 on Debian 13): ``./run setup`` makes it. Missing, its labs skip with the reason,
    or fail under KRS_REQUIRE_SYSROOTS (which ``./run tests`` and so CI set)."""
    suite = other_generation()
    root = Sysroot.find(suite)
    if root is None:
        reason = f"no {suite} root in {sysroot_dir()} (./run setup makes it)"
        if os.environ.get("KRS_REQUIRE_SYSROOTS"):
            pytest.fail(f"the {suite} tier is required here and cannot run: {reason}")
        pytest.skip(reason)
    return root


def host_bind_version() -> tuple[int, int] | None:
    named = server_binary("named")
    if named is None:
        return None
    return version_tuple(subprocess.run([named, "-v"], capture_output=True, text=True).stdout)


def bind9_root(policy: bool) -> Sysroot | None:
    """Where to run a named that takes keys through dnssec-policy manual-mode (``policy``, BIND
    9.20 and later) or through auto-dnssec (9.18): the host's packages (None) when they are that
    generation, else the other Debian generation's root."""
    host = host_bind_version()
    if host is not None and (host >= (9, 20)) == policy:
        return None
    return other_generation_root()


# Every shape of key the scenario table installs: KSK+ZSK and CSK of algorithms 13, 15 and 16.
# An operator's policy names only what their KDC sends (docs/servers/bind9.md).
SCENARIO_POLICY_KEYS = tuple(
    (role, algorithm)
    for algorithm in ("ecdsap256sha256", "ed25519", "ed448")
    for role in ("ksk", "zsk", "csk")
)


class Bind9ServerLab:
    name = "bind9"
    serves_last_keys_when_emptied = False
    reload_failure = "not served"
    reload_break_seen_first = False
    lone_zsk_refusal = "no active KSK or CSK"

    def __init__(self, root: Path) -> None:
        self.lab = Bind9Lab(root, ZONES, sysroot=self.root(), policy_keys=SCENARIO_POLICY_KEYS)
        self.lab.start()
        self.host = self.lab.host
        self.port = self.lab.port

    def root(self) -> Sysroot | None:
        return None

    @property
    def zsk_needs_ksk(self) -> bool:
        """BIND 9.20 signs the DNSKEY set only with keys in the KSK role; 9.18 with the ZSKs
        when there is no KSK. The adapter refuses what 9.20 would leave unsigned."""
        return self.lab.uses_policy

    @property
    def reload_break_roles(self) -> tuple[str, ...]:
        return ("KSK", "ZSK") if self.lab.uses_policy else ("ZSK",)

    def adapter(self) -> Adapter:
        from krs_plugin.adapters.bind9 import Bind9Adapter

        settings = {**self.lab.adapter_settings(), "verify_timeout": 3}
        return Bind9Adapter(settings, zones=[dns.name.from_text(z) for z in ZONES])

    def stop(self) -> None:
        self.lab.stop()

    def start(self) -> None:
        self.lab.start()

    def stored(self) -> dict[str, object]:
        """The key files. Under BIND 9.20 named keeps its own bookkeeping in them (``.state``
        files, a ``SyncPublish`` it adds), rewritten as its states settle: there each key is
        compared by what the KRS wrote, its DNSKEY and timing."""
        files = sorted(self.lab.key_directory.iterdir())
        if not self.lab.uses_policy:
            return {p.name: p.read_bytes() for p in files}
        stored: dict[str, object] = {
            path.name: (key.dnskey_text(), timing)
            for zone in ZONES
            for path, key, timing in KeyFolder(self.lab.key_directory).read_keys(
                dns.name.from_text(zone)
            )
        }
        stored.update({p.name: "present" for p in files if p.suffix in (".key", ".krs-timing")})
        return stored

    def stored_tags(self) -> set[int]:
        return {int(n.split("+")[2][:5]) for n in self.stored() if n.endswith(".private")}

    def break_reload(self) -> None:
        # named running as bind cannot enter a root-owned 0700 key directory: loadkeys "succeeds"
        # and nothing is published, the pitfall SERVERS.md describes. (The lab root must be
        # reachable by bind, see the fixture.)
        # BIND 9.20 says so itself when it cannot enter the directory (the zone check then
        # refuses the zone); what it cannot tell is a key file it cannot read: root's 0600.
        self.lab.stop()
        self.lab.user = "bind"
        os.chown(self.lab.key_directory, 0, 0)
        os.chmod(self.lab.key_directory, 0o755 if self.lab.uses_policy else 0o700)
        self.lab.start()


class Bind9OtherGenerationLab(Bind9ServerLab):
    """named from the other Debian release's packages (sysroot.py): BIND 9.20 on Debian 12."""

    name = f"bind9-{other_generation()}"

    def root(self) -> Sysroot | None:
        return other_generation_root()


class KnotServerLab:
    name = "knot"
    zsk_needs_ksk = True
    serves_last_keys_when_emptied = True
    reload_failure = "missing active KSK or ZSK"
    reload_break_seen_first = False
    lone_zsk_refusal = reload_failure
    reload_break_roles = ("ZSK",)

    def __init__(self, root: Path) -> None:
        self.lab = KnotLab(root, ZONES)
        self.lab.start()
        self.host = self.lab.host
        self.port = self.lab.port

    def adapter(self) -> Adapter:
        from krs_plugin.adapters.knot import KnotAdapter

        settings = {**self.lab.adapter_settings(), "verify_timeout": 3}
        return KnotAdapter(settings, zones=[dns.name.from_text(z) for z in ZONES])

    def stop(self) -> None:
        self.lab.stop()

    def start(self) -> None:
        self.lab.start()

    def stored(self) -> list[str]:
        listing = subprocess.run(
            ["keymgr", "-c", str(self.lab.config), "-l"], capture_output=True, text=True
        ).stdout.split()
        rows = []
        for zone in sorted(listing):
            rows += subprocess.run(
                ["keymgr", "-c", str(self.lab.config), "-e", zone, "list"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
        pems = sorted(p.name for p in (self.lab.kasp_db / "keys").glob("*.pem"))
        return sorted(rows) + pems

    def stored_tags(self) -> set[int]:
        return {
            int(word[4:]) for row in self.stored() for word in row.split() if word[:4] == "tag="
        }

    def break_reload(self) -> None:
        pass  # a lone ZSK is refused by Knot itself


class NsdServerLab:
    name = "nsd"
    zsk_needs_ksk = False
    serves_last_keys_when_emptied = False
    reload_failure = "unexpected end of input"  # the signer refuses the broken unsigned file
    reload_break_seen_first = False
    lone_zsk_refusal = ""
    reload_break_roles = ("ZSK",)

    signer = "dnssec-signzone"

    def __init__(self, root: Path) -> None:
        self.lab = NsdLab(root, ZONES)
        self.lab.start()
        self.host = self.lab.host
        self.port = self.lab.port

    def adapter(self) -> Adapter:
        from krs_plugin.adapters.nsd import NsdAdapter

        settings = {**self.lab.adapter_settings(), "verify_timeout": 3, "signer": self.signer}
        return NsdAdapter(settings, zones=[dns.name.from_text(z) for z in ZONES])

    def stop(self) -> None:
        self.lab.stop()

    def start(self) -> None:
        self.lab.start()

    def stored(self) -> dict[str, object]:
        """The key files, and the DNSKEYs in each served file (its signatures change with every
        signing, so they are not compared; test_nsd.py checks the bytes where it matters)."""
        stored: dict[str, object] = {
            p.name: p.read_bytes() for p in (self.lab.root / "keys").iterdir()
        }
        for zone in ZONES:
            text = self.lab.signed_file(zone).read_text()
            stored[zone] = sorted(
                line.split()[-1] for line in text.splitlines() if " DNSKEY " in line
            )
        return stored

    def stored_tags(self) -> set[int]:
        names = (p.name for p in (self.lab.root / "keys").iterdir())
        return {int(n.split("+")[2][:5]) for n in names if n.endswith(".private")}

    def break_reload(self) -> None:
        # The operator's unsigned file breaks: signing fails, and the served file must stay.
        unsigned = self.lab.unsigned_file(ZONES[0])
        unsigned.write_text(unsigned.read_text() + "bad IN TYPE65534 \\# 2 00\n")


class NsdLdnsServerLab(NsdServerLab):
    """NSD with ldns-signzone as the adapter's signer."""

    name = "nsd-ldns"
    signer = "ldns-signzone"
    reload_failure = "ldns-signzone"
    reload_break_seen_first = False


class PowerDnsServerLab:
    """pdns_server with the gsqlite3 backend, keys through the HTTP API."""

    name = "powerdns-api"
    zsk_needs_ksk = False
    serves_last_keys_when_emptied = False
    # break_reload marks the zone PRESIGNED (an operator's mistake check() reports). The API
    # answers from PowerDNS's metadata cache (60 s) that it is not, until the adapter reads the
    # zone's whole metadata after writing the key (the fresh zone's): rolled back. pdnsutil
    # reads what is stored: refused before anything is written.
    reload_failure = "marked PRESIGNED"
    reload_break_seen_first = False
    lone_zsk_refusal = ""
    reload_break_roles = ("ZSK",)
    backend = "gsqlite3"
    method = "api"

    def __init__(self, root: Path) -> None:
        self.lab = PowerDnsLab(root, ZONES, backend=self.backend)  # type: ignore[arg-type]
        self.lab.start()
        self.host = self.lab.host
        self.port = self.lab.port

    def adapter(self) -> Adapter:
        from krs_plugin.adapters.powerdns import PowerDnsAdapter

        lab = self.lab.adapter_settings()
        settings: dict[str, object] = {"method": self.method, "server": lab["server"]}
        if self.method == "api":
            settings.update(api_url=lab["api_url"], api_key_file=lab["api_key_file"])
        else:
            settings.update(pdnsutil=lab["pdnsutil"], pdns_control=lab["pdns_control"])
        settings["verify_timeout"] = 3
        return PowerDnsAdapter(settings, zones=[dns.name.from_text(z) for z in ZONES])

    def stop(self) -> None:
        self.lab.stop()

    def start(self) -> None:
        self.lab.start()

    def stored(self) -> list[str]:
        """Every key row (id, state, tag) and the timing metadata, read with pdnsutil, which
        needs no running server."""
        rows = []
        for zone in ZONES:
            listing = self.lab.pdnsutil("list-keys", zone).stdout.splitlines()[2:]
            # Zone Type Act Pub Size Algorithm ID Location Keytag: the id is PowerDNS's row
            # number (a restored key gets a new one), the key is its tag and state.
            rows += sorted(
                f"{zone} {' '.join(w for i, w in enumerate(line.split()) if i not in (0, 6))}"
                for line in listing
            )
            rows.append(self.lab.pdnsutil("get-meta", zone, "X-KRS-KEY-TIMING").stdout)
        return rows

    def stored_tags(self) -> set[int]:
        return {int(row.split()[-1]) for row in self.stored() if " cryptokeys " in row}

    def break_reload(self) -> None:
        self.lab.pdnsutil("set-presigned", ZONES[0])


class PowerDnsBindServerLab(PowerDnsServerLab):
    name = "powerdns-api-bind"
    backend = "bind"


class PowerDnsUtilServerLab(PowerDnsServerLab):
    name = "powerdns-pdnsutil"
    method = "pdnsutil"
    reload_break_seen_first = True


class PowerDnsUtilBindServerLab(PowerDnsUtilServerLab):
    name = "powerdns-pdnsutil-bind"
    backend = "bind"


LABS = {
    "bind9": Bind9ServerLab,
    Bind9OtherGenerationLab.name: Bind9OtherGenerationLab,
    "knot": KnotServerLab,
    "nsd": NsdServerLab,
    "nsd-ldns": NsdLdnsServerLab,
    "powerdns-api": PowerDnsServerLab,
    "powerdns-api-bind": PowerDnsBindServerLab,
    "powerdns-pdnsutil": PowerDnsUtilServerLab,
    "powerdns-pdnsutil-bind": PowerDnsUtilBindServerLab,
}


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
