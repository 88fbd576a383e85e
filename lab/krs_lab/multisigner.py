"""A multi-signer lab for rollovers watched by a validating resolver (issue 22).

On loopback, as plain processes in one directory: a parent zone (``lab.example.``) on NSD,
signed with dnssec-signzone by a key of its own, holding the child's delegation and the DS the
test sets (``set_ds``); a KDC (``krs-kdc serve``) with the child zone (``child.lab.example.``)
and its KSK + ZSK; four nodes, named, knotd, nsd and pdns_server, each serving the child with
its own ``krs run``; Unbound validating from the parent's DS as trust anchor, with a stub-zone
for the parent and one for the child listing the four servers; and a ``Prober`` asking Unbound
for a signed name of the child every 200 ms, counting answers by rcode.

The child zone's TTLs are seconds (2 s, the probed name 1 s), and Unbound caps every TTL at
``cache_max_ttl``. What the four servers serve for the same zone differs: BIND (9.18) and NSD
(signed by dnssec-signzone) serve the DNSKEY RRset with the TTL of the key files, 3600, whatever
the zone's TTL; Knot and PowerDNS serve it with the zone's 2 s. Without the cap a resolver that
asked BIND or NSD holds the DNSKEY set an hour, so RFC 7583's T_dnskey is the largest DNSKEY TTL
any node serves (``waits()`` reads it from each node, then applies the cap). A resolver's view
thus depends on which server it asked: the careless control (test_multisigner_harness.py)
makes sure Unbound took its DNSKEY set from a server that gave the long TTL
(``cached_dnskey_ttl``).

With ``policy`` (options of ``krs-kdc policy add``) the child has a key policy and no keys: the
KDC's engine makes the first keys at its first pass of ``krs-kdc serve`` and every later key by
itself (docs/lifecycle.md). The engine sends every key with the policy's dnskey-ttl, which BIND
9.18 and NSD take from the key files; Knot and BIND 9.20 serve their policy's ``dnskey-ttl`` and
PowerDNS the SOA's minimum field, so the lab sets those to the policy's (docs/servers/). The
parent starts with an insecure delegation, so Unbound's view is valid before the child is
signed; ``first_ds()`` puts the first KSK's DS in and says ``ds seen``.

With ``pushable_parent`` the parent is krs_lab/parent.py's instead: Knot signing the parent and
taking TSIG UPDATEs of the child's DS, and an NSD secondary that lags until released. ``set_ds``
then pushes by UPDATE (``push_config()``), and ``parent_config()`` says where the KDC sees the DS
(both addresses, the parent's trust anchor).

Start-up takes about 5 s (with a policy, about 20 s: the first keys' step settles first).
Everything listens on 127.0.0.1 on ports from ``free_port``;
``close()`` stops every process started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from krs_lab.bind9 import Bind9Lab
from krs_lab.deployment import BIN, CZ, run, wait_until
from krs_lab.knot import KnotLab
from krs_lab.nodekeys import write_node_keys
from krs_lab.nsd import NsdLab
from krs_lab.parent import LabParent
from krs_lab.ports import free_port
from krs_lab.powerdns import PowerDnsLab
from krs_lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_lab.softhsm import lab_init_options
from krs_plugin.kdc.cli import key_json
from krs_plugin.kdc.dspush import PushConfig, push_ds
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.parent import ParentConfig
from krs_plugin.kdc.store import Store

HOST = "127.0.0.1"
PARENT = "lab.example."
CHILD = "child.lab.example."
PROBE_NAME = f"www.{CHILD}"
ZONE_TTL = 2  # every record of the child zone, and the SOA's negative TTL
PROBE_TTL = 1  # the probed name: shorter than the DNSKEY's, so its signatures change first
SERVERS = ("bind9", "knot", "nsd", "powerdns")
POLICY = "lab"  # the child's key policy, when the lab runs with one


def child_zone_text(zone: str = CHILD, soa_minimum: int = ZONE_TTL) -> str:
    """The child zone; PowerDNS serves the DNSKEY RRset with the SOA's minimum field as TTL
    (docs/servers/powerdns.md, section 1), so a lab with a policy sets it to its dnskey-ttl."""
    return (
        f"$ORIGIN {zone}\n"
        f"$TTL {ZONE_TTL}\n"
        f"@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 900 1209600 {soa_minimum}\n"
        f"@ IN NS ns1.{zone}\n"
        f"ns1 IN A {HOST}\n"
        f"www {PROBE_TTL} IN A 192.0.2.80\n"
    )


def query(
    host: str, port: int, name: str, rdtype: dns.rdatatype.RdataType, timeout: float = 3
) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, want_dnssec=True)
    return dns.query.tcp(message, host, port=port, timeout=timeout)


@dataclass(frozen=True)
class Served:
    """What one server serves for the child: DNSKEY tags and TTL, the key tags of the RRSIGs
    over the SOA and the probed name, and its CDS and CDNSKEY RRsets (rdata texts); for an
    algorithm rollover also (tag, algorithm) of the DNSKEYs and of the SOA's RRSIGs, and the
    tags of the RRSIGs over the DNSKEY RRset."""

    tags: frozenset[int]
    dnskey_ttl: int
    soa_signers: frozenset[int]
    probe_signers: frozenset[int]
    cds: frozenset[str] = frozenset()
    cdnskey: frozenset[str] = frozenset()
    dnskeys: frozenset[tuple[int, int]] = frozenset()  # (tag, algorithm)
    soa_signatures: frozenset[tuple[int, int]] = frozenset()  # (tag, algorithm) of the RRSIGs
    dnskey_signers: frozenset[int] = frozenset()

    @classmethod
    def read(cls, host: str, port: int, zone: str = CHILD) -> Served:
        def signatures(
            name: str, rdtype: dns.rdatatype.RdataType, reply: dns.message.Message | None = None
        ) -> frozenset[tuple[int, int]]:
            reply = reply or query(host, port, name, rdtype)
            sigs = reply.get_rrset(
                reply.answer,
                dns.name.from_text(name),
                dns.rdataclass.IN,
                dns.rdatatype.RRSIG,
                rdtype,
            )
            return frozenset((s.key_tag, int(s.algorithm)) for s in sigs or ())

        def signers(name: str, rdtype: dns.rdatatype.RdataType) -> frozenset[int]:
            return frozenset(tag for tag, _ in signatures(name, rdtype))

        reply = query(host, port, zone, dns.rdatatype.DNSKEY)
        dnskey = reply.get_rrset(
            reply.answer, dns.name.from_text(zone), dns.rdataclass.IN, dns.rdatatype.DNSKEY
        )
        dnskeys = frozenset((dns.dnssec.key_id(k), int(k.algorithm)) for k in dnskey or ())
        tags = frozenset(tag for tag, _ in dnskeys)
        dnskey_signers = frozenset(t for t, _ in signatures(zone, dns.rdatatype.DNSKEY, reply))
        soa = signatures(zone, dns.rdatatype.SOA)

        def texts(rdtype: dns.rdatatype.RdataType) -> frozenset[str]:
            reply = query(host, port, zone, rdtype)
            rrset = reply.get_rrset(
                reply.answer, dns.name.from_text(zone), dns.rdataclass.IN, rdtype
            )
            return frozenset(r.to_text() for r in rrset or ())

        return cls(
            tags,
            dnskey.ttl if dnskey else 0,
            frozenset(tag for tag, _ in soa),
            signers(PROBE_NAME, dns.rdatatype.A),
            texts(dns.rdatatype.CDS),
            texts(dns.rdatatype.CDNSKEY),
            dnskeys,
            soa,
            dnskey_signers,
        )


class UnboundLab(LabServer):
    """A validating unbound: trust anchor the parent's DS, stub-zones to the lab servers."""

    def __init__(
        self,
        root: Path,
        trust_anchor: str,
        stubs: dict[str, list[tuple[str, int]]],
        cache_max_ttl: int,
    ) -> None:
        self.root, self.trust_anchor, self.stubs = root, trust_anchor, stubs
        self.cache_max_ttl = cache_max_ttl
        self.host, self.port = HOST, 0
        self.process: ServerProcess | None = None

    @property
    def config(self) -> Path:
        return self.root / "unbound.conf"

    def write_config(self) -> None:
        if server_binary("unbound") is None:
            raise LabError("unbound is not installed (apt-get install unbound)")
        self.port = self.port or free_port(self.host)
        self.root.mkdir(parents=True, exist_ok=True)
        stubs = "".join(
            f'stub-zone:\n    name: "{zone}"\n'
            + "".join(f"    stub-addr: {host}@{port}\n" for host, port in servers)
            for zone, servers in self.stubs.items()
        )
        self.config.write_text(
            "server:\n"
            f"    interface: {self.host}@{self.port}\n"
            f"    port: {self.port}\n"
            "    do-ip6: no\n"
            # its queries take source ports above the lab's listening ports (krs_lab.ports)
            "    outgoing-port-avoid: 0-32767\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    directory: "{self.root}"\n'
            '    pidfile: ""\n'
            "    use-syslog: no\n"
            '    logfile: ""\n'
            "    verbosity: 1\n"
            "    val-log-level: 2\n"
            "    log-servfail: yes\n"
            "    ede: yes\n"
            "    num-threads: 1\n"
            '    module-config: "validator iterator"\n'
            "    do-not-query-localhost: no\n"
            "    qname-minimisation: no\n"
            "    prefetch: no\n"
            "    prefetch-key: no\n"
            f"    cache-max-ttl: {self.cache_max_ttl}\n"
            f"    cache-max-negative-ttl: {self.cache_max_ttl}\n"
            "    access-control: 127.0.0.0/8 allow\n"
            f'    trust-anchor: "{self.trust_anchor}"\n'
            "remote-control:\n"
            "    control-enable: no\n" + stubs
        )

    def start(self, timeout: float = 20) -> None:
        self.write_config()
        unbound = server_binary("unbound")
        assert unbound is not None
        self.process = ServerProcess(
            "unbound",
            [unbound, "-d", "-p", "-c", str(self.config)],
            self.root / "unbound.log",
            self.root,
        )
        self.process.start()
        self.process.wait_answering(self.host, self.port, [PARENT], timeout)


@dataclass
class Prober:
    """Asks ``host``:``port`` for PROBE_NAME/A every ``interval`` seconds in a thread; counts the
    answers by rcode and keeps, for each SERVFAIL, its time and extended errors."""

    host: str
    port: int
    interval: float = 0.2
    counts: Counter[str] = field(default_factory=Counter)
    servfails: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="prober")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            message = dns.message.make_query(PROBE_NAME, dns.rdatatype.A, use_edns=0)
            try:
                reply = dns.query.udp(message, self.host, port=self.port, timeout=2)
            except (OSError, dns.exception.DNSException):
                self.counts["TIMEOUT"] += 1
                continue
            rcode = dns.rcode.to_text(reply.rcode())
            self.counts[rcode] += 1
            if reply.rcode() == dns.rcode.SERVFAIL:
                texts = [
                    f"EDE {o.code}: {o.text}"
                    for o in reply.options
                    if isinstance(o, dns.edns.EDEOption)
                ]
                self.servfails.append((time.time(), "; ".join(texts) or "no EDE"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Node:
    name: str
    server: Bind9Lab | KnotLab | NsdLab | PowerDnsLab
    adapter_type: str
    directory: Path
    notify_port: int = 0


class MultiSigner:
    """The whole lab; ``start()`` brings it up with the child's first keys distributed and
    confirmed by every node, the DS at the parent and Unbound answering. ``close()`` stops
    every process it started."""

    def __init__(
        self,
        root: Path,
        cache_max_ttl: int = 6,
        policy: Sequence[str] | None = None,
        serve_options: Sequence[str] = (),
        pushable_parent: bool = False,
        servers: Sequence[str] = SERVERS,
        bind_algorithms: Sequence[str] = ("ecdsap256sha256",),
    ) -> None:
        self.root = root
        # The algorithms BIND 9.20's dnssec-policy names for the KDC's KSK and ZSK (its keys
        # clause; 9.18 needs none): an algorithm rollover names both (docs/servers/bind9.md).
        self.bind_algorithms = tuple(bind_algorithms)
        # The child's nameservers, each with its KRS: all four by default, or some of them
        # (e.g. those that sign with a key whose DNSKEY is not published).
        if not servers or set(servers) - set(SERVERS):
            raise LabError(f"servers {list(servers)}: expected some of {', '.join(SERVERS)}")
        self.server_names = tuple(servers)
        # True: the parent is krs_lab.parent's (Knot taking TSIG UPDATEs of the DS, an NSD
        # secondary held back until released) instead of NSD signed by dnssec-signzone.
        self.pushable_parent = pushable_parent
        self.lab_parent: LabParent | None = None
        self.serve_options = serve_options
        self.dnskey_ttl: int | None = None  # the policy's, which Knot is configured to serve
        self.policy = policy  # options of krs-kdc policy add: the engine makes the keys
        self.state = root / "kdc"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cache_max_ttl = cache_max_ttl
        self.kdc_port = free_port(HOST)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.servers: list[LabServer] = []
        self.nodes: list[Node] = []
        self.parent: NsdLab | None = None
        self.unbound: UnboundLab | None = None
        self.prober: Prober | None = None
        self.stack = contextlib.ExitStack()
        self._store: Store | None = None

    # --- the KDC ------------------------------------------------------------------------------

    def kdc(self, *args: str) -> str:
        return run("krs-kdc", "--state", str(self.state), *args)

    def kdc_json(self, *args: str) -> Any:
        return json.loads(self.kdc("--json", *args))

    def keys(self) -> dict[int, dict[str, Any]]:
        """The child's keys as ``krs-kdc --json key list`` shows them, read from kdc.db in this
        process: the tests read them while the engine moves on, and starting a ``krs-kdc``
        process for each read took long enough on a busy machine to see a step late."""
        return {r.key_tag: key_json(r) for r in self.store().keys(CHILD)}

    def store(self) -> Store:
        """kdc.db, opened once in this process for reading (``keys``, ``history``)."""
        if self._store is None:
            self._store = Store(self.state / "kdc.db")
            self.stack.callback(self._store.close)
        return self._store

    def distribute(self, timeout: float = 60) -> float:
        """Distribute the child's keys and wait until every node confirmed; the seconds taken."""
        began = time.monotonic()
        dist_id = str(self.kdc_json("distribute", "--zone", CHILD)["distribution_id"])

        def confirmed() -> bool:
            rows = self.kdc_json("distribution", "list")
            return any(r["id"] == dist_id and r["status"] == "confirmed" for r in rows)

        wait_until(confirmed, timeout, lambda: f"{dist_id} confirmed:\n{self.tails()}")
        return time.monotonic() - began

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        self.kdc("init", "--control-zone", CZ, *lab_init_options(self.state))
        if self.policy is not None:
            made = self.kdc_json("policy", "add", POLICY, *self.policy)
            self.dnskey_ttl = int(made["dnskey_ttl"])
            self.kdc("zone", "add", CHILD, "--policy", POLICY)
        else:
            self.kdc("zone", "add", CHILD)
            self.kdc("key", "generate", "--zone", CHILD, "--role", "KSK")
            self.kdc("key", "generate", "--zone", CHILD, "--role", "ZSK")
        for name in self.server_names:
            self._start_node(name)
        self._start_process(
            "kdc",
            [
                str(BIN / "krs-kdc"),
                "--state",
                str(self.state),
                "serve",
                "--listen",
                f"{HOST}:{self.kdc_port}",
                "--notify-retry",
                "0.3",
                *self.serve_options,
            ],
            "krs-kdc serving",
        )
        for node in self.nodes:
            self.start_krs(node.name)
        if self.policy is None:
            self.distribute()
            self._start_parent()
        else:
            # The engine makes the first keys at its first pass and distributes them; the
            # parent starts with an insecure delegation (no DS) until every node serves them
            # (first_ds()), so Unbound's view is valid throughout.
            wait_until(
                lambda: "rollover-done" in self.events(),
                90,
                lambda: f"the engine's first keys served:\n{self.tails()}",
            )
            self._start_parent(with_ds=False)
        if self.lab_parent is not None:
            parent_server = ("127.0.0.1", self.lab_parent.port)  # Unbound here asks over IPv4
        else:
            assert self.parent is not None
            parent_server = (self.parent.host, self.parent.port)
        self.unbound = UnboundLab(
            self.root / "unbound",
            self.parent_trust_anchor,
            {
                PARENT: [parent_server],
                CHILD: [(n.server.host, n.server.port) for n in self.nodes],
            },
            self.cache_max_ttl,
        )
        self.servers.append(self.unbound)
        self.unbound.start()
        wait_until(
            lambda: self.resolve().rcode() == dns.rcode.NOERROR,
            20,
            lambda: f"Unbound to validate {PROBE_NAME}:\n{self.unbound_log()}",
        )

    def _start_node(self, name: str) -> None:
        directory = self.root / f"node-{name}"
        server_root = self.root / name
        server_root.mkdir(parents=True)
        text = child_zone_text(soa_minimum=self.dnskey_ttl or ZONE_TTL)
        server: Bind9Lab | KnotLab | NsdLab | PowerDnsLab
        if name == "bind9":
            keys = [(role, a) for a in self.bind_algorithms for role in ("ksk", "zsk")]
            server = Bind9Lab(server_root, [CHILD], dnskey_ttl=self.dnskey_ttl, policy_keys=keys)
            (server_root / f"{CHILD}zone").write_text(text)
        elif name == "knot":
            server = KnotLab(server_root, [CHILD], dnskey_ttl=self.dnskey_ttl)
            (server_root / "zones").mkdir()
            (server_root / "zones" / f"{CHILD}zone").write_text(text)
        elif name == "nsd":
            server = NsdLab(server_root, [CHILD])
            (server_root / "unsigned").mkdir(mode=0o700)
            server.unsigned_file(CHILD).write_text(text)
        else:
            server = PowerDnsLab(server_root, [CHILD])
            (server_root / "zones").mkdir()
            server.zone_file(CHILD).write_text(text)
        self.servers.append(server)
        server.start()
        node = Node(name, server, name, directory, free_port(HOST))
        directory.mkdir()
        node_keys = write_node_keys(directory)
        node_id = f"ns-{name}.edge.example."
        self.kdc("node", "add", node_id, "--notify", f"{HOST}:{node.notify_port}", *node_keys,
                 "--zone", CHILD)  # fmt: skip
        settings = {**server.adapter_settings(), "verify_timeout": 10}
        if name == "powerdns":
            settings = {
                "method": "api",
                "server": settings["server"],
                "api_url": settings["api_url"],
                "api_key_file": settings["api_key_file"],
                "verify_timeout": 10,
            }
        config = {
            "node_id": node_id,
            "keys": {
                "hpke": str(directory / "node.key"),
                "signing": str(directory / "signing.key"),
            },
            "kdc": {"verification_key": str(self.state / "keys" / "kdc.signing.pubkey")},
            "control_zone": CZ,
            "control_servers": [f"{HOST}:{self.kdc_port}"],
            "notify": {
                "listen": [f"{HOST}:{node.notify_port}"],
                "allowed_sources": ["127.0.0.0/8"],
            },
            "adapter": {"type": name, "settings": settings},
            "zones": [CHILD],
            "state": str(directory / "krs.db"),
            "poll_interval": 600,
        }
        (directory / "krs.yaml").write_text(json.dumps(config))
        self.nodes.append(node)

    def start_krs(self, name: str) -> None:
        """(Again) the ``krs run`` of node ``name`` (bind9, knot, nsd, powerdns)."""
        self._start_process(
            f"krs-{name}",
            [str(BIN / "krs"), "run", "-c", str(self.root / f"node-{name}" / "krs.yaml")],
            "listening for NOTIFY",
        )

    def stop_krs(self, name: str) -> None:
        """Stop the ``krs run`` of node ``name``; its nameserver goes on serving."""
        process = self.processes.pop(f"krs-{name}")
        process.terminate()
        process.wait(timeout=10)

    def first_ds(self) -> None:
        """The parent's operator puts the first KSK's DS in (the delegation becomes secure) and
        tells the engine (``ds seen``)."""
        self.set_ds(self.child_ds())
        self.kdc("ds", "seen", "--zone", CHILD)

    def kdc_cds(self, tags: Iterable[int]) -> tuple[frozenset[str], frozenset[str]]:
        """The CDS (SHA-256) and CDNSKEY rdata texts the KDC computes for the child's KSKs
        ``tags`` (``krs-kdc zone ds --json``), as ``Served`` reads them from a server."""
        wanted = set(tags)
        keys = [k for k in self.kdc_json("zone", "ds", CHILD)["keys"] if k["key_tag"] in wanted]
        if {k["key_tag"] for k in keys} != wanted:
            raise LabError(f"krs-kdc zone ds lists {[k['key_tag'] for k in keys]}, not {wanted}")
        return (
            frozenset(text for k in keys for text in k["cds"]),
            frozenset(k["cdnskey"] for k in keys),
        )

    def history(self) -> list[dict[str, Any]]:
        """The engine's history of the child as ``krs-kdc history --json`` shows it, oldest
        first (read in this process, as ``keys``)."""
        entries = EngineState(self.store()).history(CHILD)
        return [json.loads(json.dumps(asdict(e))) for e in entries]

    def events(self) -> list[str]:
        return [e["event"] for e in self.history()]

    def node_id(self, name: str) -> str:
        return f"ns-{name}.edge.example."

    def _start_process(self, name: str, argv: list[str], ready: str) -> None:
        log = self.logs / f"{name}.log"
        out = self.stack.enter_context(open(log, "ab"))  # noqa: SIM115
        seen = log.stat().st_size
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
        self.processes[name] = process
        wait_until(
            lambda: ready in log.read_text()[seen:] or process.poll() is not None,
            30,
            f"{name} ({log})",
        )
        if process.poll() is not None:
            raise LabError(f"{name} exited ({process.returncode}):\n{log.read_text()}")

    def _start_parent(self, with_ds: bool = True) -> None:
        root = self.root / "parent"
        if self.pushable_parent:
            self.lab_parent = LabParent(root, PARENT, CHILD, ttl=ZONE_TTL)
            self.lab_parent.start()
            self.parent_trust_anchor = self.lab_parent.trust_anchor
            if with_ds:
                self.set_ds(self.child_ds())
            return
        keys = root / "parent-keys"
        keys.mkdir(parents=True)
        made = subprocess.run(
            [
                "dnssec-keygen",
                "-q",
                "-K",
                str(keys),
                "-a",
                "ECDSAP256SHA256",
                "-f",
                "KSK",
                "-L",
                str(ZONE_TTL),
                PARENT,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        self.parent_key = keys / f"{made.stdout.strip()}.key"
        ds = subprocess.run(
            ["dnssec-dsfromkey", "-a", "SHA-256", str(self.parent_key)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.parent_trust_anchor = " ".join(ds.split())
        self.parent = NsdLab(root, [PARENT])
        self.servers.append(self.parent)
        (root / "unsigned").mkdir(mode=0o700)
        (root / "signed").mkdir(mode=0o700)
        self._sign_parent(self.child_ds() if with_ds else [])
        self.parent.start()

    def child_ds(self, tags: Iterable[int] | None = None) -> list[str]:
        """The DS lines ``krs-kdc zone ds`` prints for the child (of the KSKs ``tags`` only)."""
        text = self.kdc("zone", "ds", CHILD)
        lines = (" ".join(line.split()) for line in text.splitlines())
        found = [line for line in lines if not line.startswith(";") and " DS " in line]
        if tags is None:
            return found
        wanted = set(tags)
        return [line for line in found if int(line.split(" DS ")[1].split()[0]) in wanted]

    def _sign_parent(self, ds_lines: Iterable[str]) -> None:
        assert self.parent is not None
        self.parent_serial = getattr(self, "parent_serial", 0) + 1
        unsigned = self.parent.unsigned_file(PARENT)
        unsigned.write_text(
            f"$ORIGIN {PARENT}\n$TTL {ZONE_TTL}\n"
            f"@ IN SOA ns1 hostmaster {self.parent_serial} 3600 900 1209600 {ZONE_TTL}\n"
            f"@ IN NS ns1\nns1 IN A {HOST}\n"
            f"child IN NS ns1.child\nns1.child IN A {HOST}\n"
            + "".join(f"{line}\n" for line in ds_lines)
            + f"$INCLUDE {self.parent_key}\n"
        )
        subprocess.run(
            [
                "dnssec-signzone",
                "-q",
                "-z",
                "-K",
                str(self.parent_key.parent),
                "-o",
                PARENT,
                "-f",
                str(self.parent.signed_file(PARENT)),
                str(unsigned),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.parent.root,
        )

    def set_ds(self, ds_lines: Iterable[str], release: bool = True) -> None:
        """The parent's operator at work: the child's DS set replaced, re-signed, reloaded. With
        the pushable parent: one UPDATE to its primary, and (``release``) its secondary brought
        up to date; without ``release`` the secondary keeps serving the old DS set."""
        if self.lab_parent is not None:
            lines = list(ds_lines)
            pushed = push_ds(CHILD, lines, self.push_config(), ttl=ZONE_TTL)
            if not pushed.ok:
                raise LabError(f"DS push: {pushed.detail}")
            wanted = {line.split(" DS ")[1] for line in lines}
            self.lab_parent.wait_signed_ds(self.lab_parent.primary, wanted)
            if release:
                self.lab_parent.release()
            return
        assert self.parent is not None
        self._sign_parent(ds_lines)
        done = self.parent.control("reload", PARENT)
        if done.returncode != 0:
            raise LabError(f"nsd-control reload: {done.stdout}{done.stderr}")

    def parent_config(self) -> ParentConfig:
        """Where the KDC sees the child's DS: both addresses of the pushable parent (or the NSD
        parent), validated from the parent's trust anchor."""
        agents: tuple[str, ...]
        if self.lab_parent is not None:
            agents = self.lab_parent.addresses
        else:
            assert self.parent is not None
            agents = (f"{self.parent.host}:{self.parent.port}",)
        return ParentConfig(agents=agents, trust_anchor=self.parent_trust_anchor)

    def watch_parent(self) -> None:
        """``krs-kdc parent set`` for the child: both addresses of the pushable parent validated
        from its trust anchor, the DS pushed by UPDATE with its TSIG key. ``krs-kdc serve`` then
        pushes and sees every DS itself (docs/lifecycle.md, "The parent"); the test releases the
        parent's secondary (``release_pushed``)."""
        parent = self.lab_parent
        if parent is None:
            raise LabError("the lab's parent takes no UPDATE (MultiSigner(pushable_parent=True))")
        anchor = self.root / "parent-anchor"
        anchor.write_text(parent.trust_anchor + "\n")
        self.kdc(
            "parent", "set", CHILD, "--agent", parent.primary, "--agent", parent.secondary,
            "--trust-anchor-file", str(anchor), "--push-update", parent.primary,
            "--tsig-file", str(parent.tsig_file),
        )  # fmt: skip

    def release_pushed(self, ds_lines: Iterable[str]) -> None:
        """The parent's secondary brought up to the DS set the KDC pushed (a ``ds-pushed``
        entry's lines), once the primary serves it signed."""
        parent = self.lab_parent
        if parent is None:
            raise LabError("the lab's parent takes no UPDATE (MultiSigner(pushable_parent=True))")
        parent.wait_signed_ds(parent.primary, {line.split(" DS ", 1)[1] for line in ds_lines})
        parent.release()

    def push_config(self) -> PushConfig:
        """How the KDC pushes the child's DS to the pushable parent (UPDATE with its TSIG key)."""
        if self.lab_parent is None:
            raise LabError("the lab's parent takes no UPDATE (MultiSigner(pushable_parent=True))")
        return PushConfig(update=self.lab_parent.primary, tsig_file=str(self.lab_parent.tsig_file))

    def close(self) -> None:
        if self.prober is not None:
            self.prober.stop()
        for name, process in list(self.processes.items()):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.processes[name]
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        if self.lab_parent is not None:
            self.lab_parent.close()
        self.stack.close()

    # --- looking ------------------------------------------------------------------------------

    def resolve(
        self,
        name: str = PROBE_NAME,
        rdtype: dns.rdatatype.RdataType = dns.rdatatype.A,
        want_ad: bool = False,
    ) -> dns.message.Message:
        """Unbound's answer; ``want_ad`` sets AD in the query, so the answer's AD says whether
        Unbound validated it (RFC 6840 5.7)."""
        assert self.unbound is not None
        message = dns.message.make_query(name, rdtype, use_edns=0)
        if want_ad:
            message.flags |= dns.flags.AD
        return dns.query.udp(message, self.unbound.host, port=self.unbound.port, timeout=3)

    def cached_dnskey_ttl(self) -> int:
        """What is left of the child's DNSKEY RRset in Unbound's cache (0: not there): the
        window in which a signature by a key outside it fails to validate."""
        reply = self.resolve(CHILD, dns.rdatatype.DNSKEY)
        return min((r.ttl for r in reply.answer), default=0)

    def served(self) -> dict[str, Served]:
        return {n.name: Served.read(n.server.host, n.server.port) for n in self.nodes}

    def start_prober(self) -> Prober:
        assert self.unbound is not None
        self.prober = Prober(self.unbound.host, self.unbound.port)
        self.prober.start()
        return self.prober

    def unbound_log(self) -> str:
        return (self.root / "unbound" / "unbound.log").read_text()

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.iterdir())
        )

    def waits(self) -> tuple[int, int]:
        """RFC 7583's T_dnskey and T_max as a resolver here sees them: the largest DNSKEY TTL
        any node serves and the zone's largest TTL (its SOA negative TTL included), each
        capped by Unbound's cache-max-ttl."""
        served = self.served().values()
        t_dnskey = min(max(s.dnskey_ttl for s in served), self.cache_max_ttl)
        t_max = min(max(ZONE_TTL, t_dnskey), self.cache_max_ttl)
        return t_dnskey, t_max
