"""Fuzz targets, one per listener (issue 20, Deliver 4): the KRS's NOTIFY listener, and
``krs-kdc serve``'s queries, enrollment UPDATEs and confirmation NOTIFYs, each over UDP and TCP.

Each target sends seeded mutations of valid messages (``krs_lab.abuse``) to a real listener on
loopback, in batches of a fixed count, so the time is bounded and a failure is reproducible; after
every batch the listener must still answer a valid message correctly, and nothing may have been
logged at ERROR or with a traceback. The property tests below give the same handlers structured
messages (any number of questions, any opcode, flags and EDNS buffer) and check every answer:
parsable, QR set, the query's id, and within the client's UDP buffer.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krs_lab.abuse import malformed, send_tcp, send_udp
from krs_lab.ports import free_port
from krs_plugin.config import load_config
from krs_plugin.confirmation import confirmation_message
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.dnssec import generate_key
from krs_plugin.enrollment import BootstrapPackage, ede_text
from krs_plugin.kdc.distribute import distribute_node
from krs_plugin.kdc.enroll import EnrollmentDesk, create_package
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.server import ControlZone, KdcServer, ServeOptions
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import CHUNK_TYPE, manifest_name, notify_name, pending_name
from krs_plugin.receiver.enroll import NodeKeys, build_request, exchange, signed_update
from krs_plugin.receiver.service import Service
from krs_plugin.receiver.store import ReceiverStore
from tests.loopthread import LoopThread

CZ = "kdc.example."
ORIGIN = dns.name.from_text(CZ)
NODE = "ns1.edge.example."
ZONE = "example.com."
CHUNK = dns.rdatatype.RdataType.make(CHUNK_TYPE)
BATCHES = 5
UDP_PER_BATCH = 400
TCP_PER_BATCH = 80


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records at ERROR or above, or with a traceback: none may appear."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


def fuzz(
    rng: random.Random,
    port: int,
    seeds: list[bytes],
    check: Callable[[int], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``BATCHES`` batches of mutations over UDP and over TCP, ``check`` after each."""
    check(-1)
    for batch in range(BATCHES):
        send_udp(port, list(malformed(rng, seeds, UDP_PER_BATCH)))
        send_tcp(rng, port, list(malformed(rng, seeds, TCP_PER_BATCH)))
        check(batch)
        assert problems(caplog) == [], f"batch {batch}"


def query(name: dns.name.Name | str, rdtype: Any, *, tcp: bool, port: int) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(message, "127.0.0.1", port=port, timeout=5)


# --- the KRS's NOTIFY listener --------------------------------------------------------------------


def krs_config(root: Path, port: int) -> Path:
    write_hpke_private(root / "node.key", HpkeKey.generate())
    write_jose_public(root / "kdc.pub", JoseKey.generate(), use="sig")
    (root / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": NODE,
                "keys": {"hpke": "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": CZ,
                "control_servers": ["127.0.0.1:5354"],
                "notify": {
                    "listen": [f"127.0.0.1:{port}"],
                    "allowed_sources": ["127.0.0.0/8"],
                    # Mutations that stay valid NOTIFYs must not use up the valid one's budget.
                    "rate_limit": 100000,
                },
                "adapter": {"type": "directory", "settings": {"path": "keys"}},
                "zones": [ZONE],
                "state": "krs.db",
            }
        )
    )
    return root / "krs.yaml"


def notify_wire(dist_id: str, *, edns: bool = False) -> bytes:
    message = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
    if edns:
        message.use_edns(0, 0, 1232)
    return bytes(message.to_wire())


@pytest.fixture
def krs(tmp_path: Path, loop_thread: LoopThread) -> Iterator[tuple[Service, int]]:
    port = free_port()
    config = load_config(krs_config(tmp_path, port))
    store = loop_thread.call(lambda: ReceiverStore(config.state))
    service = Service(config, store, None, None, None)  # type: ignore[arg-type]
    loop_thread.run(service.start())
    yield service, port
    loop_thread.call(service.close)
    loop_thread.call(store.close)


def test_krs_notify_listener_survives_mutated_notifies(
    krs: tuple[Service, int], caplog: pytest.LogCaptureFixture
) -> None:
    service, port = krs
    seeds = [
        notify_wire("6b037da1"),
        notify_wire("6b037da2", edns=True),
        notify_wire("0123456789abcdef"),
    ]

    def check(batch: int) -> None:
        dist_id = f"{0x7A000000 + batch + 1:08x}"
        for tcp in (False, True):
            message = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
            message.set_opcode(dns.opcode.NOTIFY)
            send = dns.query.tcp if tcp else dns.query.udp
            reply = send(message, "127.0.0.1", port=port, timeout=5)
            assert reply.id == message.id and reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
        assert dist_id in service.pending

    fuzz(random.Random(20_7), port, seeds, check, caplog)


# --- krs-kdc serve: queries, enrollment UPDATEs, confirmations -----------------------------------


class Kdc:
    """``krs-kdc serve``'s listener with one node (an HPKE key and a signing key) and one published
    distribution, its store and identity made in the loop's thread (sqlite's rule)."""

    def __init__(self, root: Path, loop_thread: LoopThread) -> None:
        self.root = root
        self.loop_thread = loop_thread
        self.port = free_port()
        self.signer = JoseKey.generate()
        self.identity, self.store, self.dist_id = loop_thread.call(self._prepare)
        zone = ControlZone(self.store, CZ)
        desk = EnrollmentDesk(self.store, self.identity, ORIGIN)
        options = ServeOptions(listen=(("127.0.0.1", self.port),))
        self.server = KdcServer(self.store, zone, options, desk)
        loop_thread.run(self.server.start())
        self.packages = 0

    def _prepare(self) -> tuple[KdcIdentity, Store, str]:
        identity = create_identity(self.root / "keys")
        store = Store(self.root / "kdc.db")
        store.set_meta("control_zone", CZ)
        store.add_zone(ZONE)
        key = generate_key(ZONE, 15, 256)
        store.add_key(
            ZONE, key_tag=key.key_tag, role="ZSK", algorithm=15, flags=256,
            private_pem=key.to_pkcs8_pem(),
        )  # fmt: skip
        store.add_node(
            NODE,
            notify_address="127.0.0.1:9",
            backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex,
            jose_pubkey=None,
            signing_pubkey=json.dumps(self.signer.public_jwk),
            zones=[ZONE],
        )
        summary = distribute_node(store, identity, NODE, now=time.time())
        return identity, store, summary.distribution_id

    def package(self) -> BootstrapPackage:
        """A new single-use package for a node of its own."""
        self.packages += 1
        node = f"fuzz{self.packages}.edge.example."

        def create() -> BootstrapPackage:
            issued = create_package(
                self.store, self.identity, node, zones=[ZONE], backend="hpke", valid_for=900,
                kdc_address=f"127.0.0.1:{self.port}", now=time.time(),
            )  # fmt: skip
            return issued.package

        return self.loop_thread.call(create)

    def confirmation(self, *, signed: bool, dist_id: str | None = None) -> dns.message.Message:
        report: dict[str, object] = {"node_id": NODE, "successful_keys": [], "failed_keys": []}
        signer = self.signer if signed else None
        return confirmation_message(dist_id or self.dist_id, CZ, report, signer)

    def close(self) -> None:
        self.loop_thread.call(self.server.close)
        self.loop_thread.call(self.store.close)


@pytest.fixture
def kdc(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Kdc]:
    kdc = Kdc(tmp_path, loop_thread)
    yield kdc
    kdc.close()


def answers_queries(kdc: Kdc) -> Callable[[int], None]:
    """The check after each batch: SOA at the apex, and the manifest of the published
    distribution as it was before the first batch, over UDP and TCP."""
    manifest = manifest_name(NODE, kdc.dist_id, ORIGIN)
    first: list[dns.rrset.RRset] = []

    def check(batch: int) -> None:
        for tcp in (False, True):
            soa = query(ORIGIN, dns.rdatatype.SOA, tcp=tcp, port=kdc.port)
            assert soa.rcode() == dns.rcode.NOERROR and soa.answer[0].rdtype == dns.rdatatype.SOA
            reply = query(manifest, CHUNK, tcp=tcp, port=kdc.port)
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer
            first.extend([] if first else reply.answer)
            assert reply.answer == first

    return check


def test_kdc_queries_survive_mutated_queries(kdc: Kdc, caplog: pytest.LogCaptureFixture) -> None:
    node = dns.name.from_text(NODE)
    messages = [
        dns.message.make_query(ORIGIN, dns.rdatatype.SOA),
        dns.message.make_query(ORIGIN, dns.rdatatype.NS, use_edns=0, payload=1232),
        dns.message.make_query(manifest_name(node, kdc.dist_id, ORIGIN), CHUNK),
        dns.message.make_query(pending_name(node, ORIGIN), dns.rdatatype.TXT),
        dns.message.make_query("www.example.org.", dns.rdatatype.A),
    ]
    seeds = [bytes(m.to_wire()) for m in messages]
    fuzz(random.Random(20_9), kdc.port, seeds, answers_queries(kdc), caplog)


def test_kdc_enrollment_survives_mutated_updates(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    seeds = []
    for _ in range(2):
        package, keys = kdc.package(), NodeKeys.generate("hpke")
        request = build_request(package, keys, "127.0.0.1:5399", now)
        seeds.append(signed_update(package, keys, request, now))
    check_queries = answers_queries(kdc)

    def check(batch: int) -> None:
        check_queries(batch)
        package, keys = kdc.package(), NodeKeys.generate("hpke")
        wire = signed_update(
            package, keys, build_request(package, keys, "127.0.0.1:5399", now), now
        )
        reply = exchange(wire, "127.0.0.1", kdc.port, 10)
        assert reply.rcode() == dns.rcode.NOERROR, ede_text(reply)

    fuzz(random.Random(20_4), kdc.port, seeds, check, caplog)


def test_kdc_confirmations_survive_mutated_confirmations(
    kdc: Kdc, caplog: pytest.LogCaptureFixture
) -> None:
    seeds = [
        bytes(kdc.confirmation(signed=True).to_wire()),
        bytes(kdc.confirmation(signed=False).to_wire()),
        bytes(kdc.confirmation(signed=True, dist_id="6b037da1").to_wire()),
    ]
    check_queries = answers_queries(kdc)

    def check(batch: int) -> None:
        check_queries(batch)
        for tcp in (False, True):
            send = dns.query.tcp if tcp else dns.query.udp
            unsigned = send(kdc.confirmation(signed=False), "127.0.0.1", port=kdc.port, timeout=5)
            assert unsigned.rcode() == dns.rcode.REFUSED
            signed = send(kdc.confirmation(signed=True), "127.0.0.1", port=kdc.port, timeout=5)
            assert signed.rcode() == dns.rcode.NOERROR

    fuzz(random.Random(20_1), kdc.port, seeds, check, caplog)


# --- properties of every answer -------------------------------------------------------------------

NAMES = st.sampled_from(
    [
        CZ,
        "6b037da1." + CZ,
        "_pending." + NODE + CZ,
        "m.6b037da1." + NODE + CZ,
        "x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 61 + ".",
        "example.org.",
        ".",
    ]
)
QUESTIONS = st.lists(
    st.tuples(NAMES, st.sampled_from([dns.rdatatype.SOA, dns.rdatatype.TXT, CHUNK, 255, 1])),
    max_size=120,
)
MESSAGES = st.fixed_dictionaries(
    {
        "questions": QUESTIONS,
        "opcode": st.sampled_from([0, 1, 2, 4, 5, 15]),
        "flags": st.integers(0, 0x7FFF) | st.just(0x0100),
        "edns": st.none() | st.integers(0, 65535),
        "options": st.binary(max_size=300),
    }
)


def build(spec: dict[str, Any]) -> bytes:
    message = dns.message.Message()
    message.flags = spec["flags"] & ~0x780F  # opcode and rcode set below
    message.set_opcode(dns.opcode.Opcode.make(spec["opcode"]))
    for name, rdtype in spec["questions"]:
        message.question.append(
            dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN, rdtype)
        )
    if spec["edns"] is not None:
        option = dns.edns.GenericOption(65001, spec["options"])
        message.use_edns(0, 0, spec["edns"], options=[option] if spec["options"] else [])
    return bytes(message.to_wire(max_size=65535))


def well_formed(wire: bytes, reply: bytes | None, limit: int) -> None:
    """An answer, when there is one, is a response to this query (its id, QR set), fits
    ``limit`` and, but for UPDATE (whose answers copy its sections), parses."""
    if reply is None:
        return
    assert len(reply) <= limit and reply[:2] == wire[:2] and reply[2] & 0x80
    if (wire[2] >> 3) & 0x0F == dns.opcode.UPDATE:
        return
    query = dns.message.from_wire(wire)
    answer = dns.message.from_wire(reply)
    if len(query.question) != 1:
        assert answer.rcode() == dns.rcode.FORMERR and not answer.question


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(MESSAGES)
def test_every_kdc_answer_is_a_response_that_fits(kdc: Kdc, spec: dict[str, Any]) -> None:
    wire = build(spec)
    edns = spec["edns"]
    limit = 512 if edns is None else max(512, edns)
    for udp in (True, False):
        reply = kdc.loop_thread.call(
            lambda udp=udp: kdc.server.handle(wire, "127.0.0.1", udp=udp)  # type: ignore[misc]
        )
        if spec["opcode"] != dns.opcode.UPDATE:
            well_formed(wire, reply, limit if udp else 65535)
        else:
            well_formed(wire, reply, 65535)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(MESSAGES)
def test_every_krs_answer_is_a_response(
    krs: tuple[Service, int], loop_thread: LoopThread, spec: dict[str, Any]
) -> None:
    service, _ = krs
    wire = build(spec)
    for udp in (True, False):
        reply = loop_thread.call(
            lambda udp=udp: service.handle_notify(wire, "127.0.0.1", udp)  # type: ignore[misc]
        )
        well_formed(wire, reply, len(wire) + 64)
