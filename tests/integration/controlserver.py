"""A KRS node on disk and in-process control-zone servers on loopback that answer well or badly.

``ControlServer`` serves DNS over TCP on ``127.0.0.x`` (its own address, so error messages tell
the servers apart) from a table ``name -> answer``: a CHUNK record, raw RDATA bytes (garbage that
does not parse), ``NODATA``, an rcode, raw message bytes, or ``SILENT`` (the connection is held and
never answered: a timeout). Names not in the table are NXDOMAIN. ``Node`` is a KRS node (krs.yaml,
keys, state, directory adapter) with the KDC key that signs for it and its distributions;
``Worker`` runs one distribution id through ``krs run``'s worker against such servers.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from krs_plugin.adapters import make_adapter
from krs_plugin.adapters.base import Adapter
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    write_hpke_private,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.dnssec import generate_key, write_bind_key_pair
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import Entry, encode_payload, roll_key_entry
from krs_plugin.protocol import (
    CHUNK,
    CHUNK_TYPE,
    ManifestMetadata,
    build_chunk_records,
    chunk_name,
    manifest_name,
)
from krs_plugin.receiver.pipeline import Outcome, Pipeline, load_identity
from krs_plugin.receiver.service import Service
from krs_plugin.receiver.store import DistributionRecord, ReceiverStore

CZ = "kdc.example."
ZONE = "example.com."
NODE = "ns1.edge.example."


@dataclass(frozen=True)
class Raw:
    """RDATA bytes put on the wire as they are, in a CHUNK record of the answer."""

    rdata: bytes


@dataclass(frozen=True)
class Rcode:
    rcode: dns.rcode.Rcode


@dataclass(frozen=True)
class Message:
    """These bytes instead of an answer (after the 2-byte length)."""

    wire: bytes


NODATA = object()
"""NOERROR with an empty answer section."""

NODATA_SOA = object()
"""An authoritative NODATA as RFC 2308 has it: NOERROR, AA, no answer, the zone's SOA in the
authority section (a name that exists without the record asked)."""

SILENT = object()
"""Accept the query and never answer (the client times out)."""

Answer = CHUNK | Raw | Rcode | Message | object


class ControlServer:
    """DNS over TCP on ``host``, answering from ``table`` (changeable while it runs)."""

    def __init__(self, host: str, table: Mapping[dns.name.Name, Answer]) -> None:
        self.table: dict[dns.name.Name, Answer] = dict(table)
        self.questions: list[dns.name.Name] = []
        self.connections = 0  # TCP connections accepted
        self.answers_per_connection: int | None = None  # closes each connection after so many
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                outer.connections += 1
                answered = 0
                while not outer.stop.is_set() and answered != outer.answers_per_connection:
                    try:
                        query, _ = dns.query.receive_tcp(sock, time.time() + 10)
                    except Exception:
                        return
                    name = query.question[0].name
                    outer.questions.append(name)
                    wire = outer.answer(query, outer.table.get(name))
                    if wire is None:
                        outer.stop.wait(30)
                        return
                    sock.sendall(struct.pack("!H", len(wire)) + wire)
                    answered += 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, 0), Handler)
        self.host = host
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def answer(query: dns.message.Message, what: Answer | None) -> bytes | None:
        if what is SILENT:
            return None
        if isinstance(what, Message):
            return what.wire
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        if what is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif what is NODATA_SOA:
            soa = dns.rdata.from_text("IN", "SOA", "ns.kdc.example. h.kdc.example. 1 1 1 1 1")
            zone = dns.name.from_text("kdc.example.")
            response.authority.append(dns.rrset.from_rdata(zone, 300, soa))
        elif isinstance(what, Rcode):
            response.set_rcode(what.rcode)
        elif isinstance(what, CHUNK | Raw):
            rdtype = dns.rdatatype.RdataType.make(CHUNK_TYPE)
            rdata = (
                what
                if isinstance(what, CHUNK)
                else dns.rdata.GenericRdata(dns.rdataclass.IN, rdtype, what.rdata)
            )
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, rdtype)
            rrset.add(rdata, 0)
            response.answer.append(rrset)
        return response.to_wire()


@contextmanager
def control_servers(*tables: Mapping[dns.name.Name, Answer]) -> Iterator[list[ControlServer]]:
    """One server per table, on 127.0.0.2, 127.0.0.3, ... (the order of control_servers)."""
    servers = [ControlServer(f"127.0.0.{i + 2}", t) for i, t in enumerate(tables)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def dead_address() -> str:
    """A loopback address and port where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@dataclass
class Node:
    """One KRS node on disk (hpke or jose), the KDC key that signs for it, and what it was sent."""

    folder: Path
    backend: str = "hpke"
    kdc: JoseKey = field(default_factory=JoseKey.generate)

    def __post_init__(self) -> None:
        (self.folder / "keys").mkdir(parents=True, exist_ok=True)
        self.key: HpkeKey | JoseKey
        if self.backend == "hpke":
            self.key = HpkeKey.generate()
            write_hpke_private(self.folder / "node.key", self.key)
        else:
            self.key = JoseKey.generate()
            write_jose_private(self.folder / "node.key", self.key)
        write_jose_public(self.folder / "kdc.pub", self.kdc.public_only(), use="sig")
        # A key already installed: a refusal must leave it exactly as it is.
        write_bind_key_pair(self.folder / "keys", generate_key(ZONE, 13, 257))
        self.config = self.configure([])

    @property
    def config_path(self) -> Path:
        return self.folder / "krs.yaml"

    @property
    def node_id(self) -> dns.name.Name:
        return dns.name.from_text(NODE)

    def configure(self, servers: list[str], **settings: object) -> Config:
        """krs.yaml with these control servers, in this order; quick retries."""
        document: dict[str, object] = {
            "node_id": NODE,
            "keys": {self.backend: "node.key"},
            "kdc": {"verification_key": "kdc.pub"},
            "control_zone": CZ,
            "control_servers": servers or ["127.0.0.1:9"],
            "adapter": {"type": "directory", "settings": {"path": "keys"}},
            "zones": [ZONE],
            "state": "krs.db",
            "fetch": {"timeout": 1, "retries": 2, "backoff": 0.01},
            **settings,
        }
        self.config_path.write_text(json.dumps(document))
        self.config = load_config(self.config_path)
        return self.config

    def key_directory(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((self.folder / "keys").iterdir())}

    def entries(self, dist_id: str, zone: str = ZONE) -> list[Entry]:
        return [roll_key_entry(generate_key(zone, 13, 256), "ZSK", distribution_id=dist_id)]

    def distribution(
        self,
        dist_id: str,
        *,
        entries: list[Entry] | None = None,
        signer: JoseKey | None = None,
        node_id: str | None = None,
        now: float | None = None,
        chunk_size: int = 400,
    ) -> list[CHUNK]:
        """Sealed to this node (or addressed to ``node_id``) and signed by its KDC (or
        ``signer``): the manifest, then the chunks (4 of them for one ZSK)."""
        recipient = NodeRecipient(
            dns.name.from_text(node_id) if node_id else self.node_id,
            self.backend,  # type: ignore[arg-type]
            self.key.public_only(),
        )
        return build_distribution(
            encode_payload(entries or self.entries(dist_id)),
            recipient,
            signer or self.kdc,
            dist_id,
            now=time.time() if now is None else now,
            chunk_size=chunk_size,
            inline_max=0,
        )

    def wrap(self, dist_id: str, transport: bytes) -> list[CHUNK]:
        """Records around a transport string sealed elsewhere, with a manifest this node takes."""
        metadata = ManifestMetadata(
            distribution_id=dist_id,
            receiver_id=NODE,
            timestamp=int(time.time()),
            crypto=self.backend,  # type: ignore[arg-type]
        )
        return build_chunk_records(transport, metadata, self.key.hmac_key, chunk_size=400)

    def names(self, dist_id: str, count: int) -> list[dns.name.Name]:
        """The manifest's name, then those of chunks 1..count."""
        cz = dns.name.from_text(CZ)
        return [
            manifest_name(self.node_id, dist_id, cz),
            *(chunk_name(i, self.node_id, dist_id, cz) for i in range(1, count + 1)),
        ]

    def table(self, dist_id: str, records: list[CHUNK]) -> dict[dns.name.Name, Answer]:
        return dict(zip(self.names(dist_id, len(records) - 1), records, strict=True))

    def pipeline(self, adapter: Adapter | None = None) -> Pipeline:
        identity, verifier, _ = load_identity(self.config)
        adapter = adapter or make_adapter(self.config)
        return Pipeline(self.config, adapter, ReceiverStore(self.config.state), identity, verifier)

    def process(
        self,
        dist_id: str,
        records: list[CHUNK],
        *,
        now: float | None = None,
        adapter: Adapter | None = None,
    ) -> Outcome:
        """What ``krs fetch`` does with these records once fetched: pipeline, state store."""
        pipeline = self.pipeline(adapter)
        try:
            return pipeline.process(dist_id, records[0], list(records[1:]), now=now)
        finally:
            pipeline.store.close()

    def recorded(self, dist_id: str) -> DistributionRecord | None:
        store = ReceiverStore(self.config.state)
        try:
            return store.seen(dist_id)
        finally:
            store.close()


class Worker:
    """What ``krs run``'s worker (``Service.process``: fetch, pipeline, state store, metrics) did
    with one distribution id."""

    def __init__(self, config: Config, dist_id: str) -> None:
        service = Service.from_config(config)
        try:
            asyncio.run(service.process(dist_id))
            self.row: DistributionRecord | None = service.store.seen(dist_id)
            self.metrics = service.metrics.exposition().decode()
            self.queued_again = service.enqueue(dist_id)  # what the poller would do next
        finally:
            service.store.close()
            service.pipeline.store.close()

    def metric(self, series: str) -> float:
        match = re.search(rf"^{re.escape(series)} (\S+)$", self.metrics, re.MULTILINE)
        assert match, f"{series} not in the metrics"
        return float(match.group(1))

    @property
    def recorded(self) -> tuple[str, str | None]:
        assert self.row is not None, "nothing recorded"
        return self.row.outcome, self.row.stage

    @property
    def error(self) -> str:
        assert self.row is not None and self.row.error is not None
        return self.row.error


def new_id(offset: int = 0) -> str:
    return f"{int(time.time()) + offset:x}"
