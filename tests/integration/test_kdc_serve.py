"""`krs-kdc serve` as a real process on loopback, queried with dnspython."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from netutil import free_port

from krs_plugin.confirmation import sign_report
from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    load_jose_key,
    open_envelope,
    write_hpke_public,
    write_jose_public,
)
from krs_plugin.errors import DecryptionError, IntegrityError
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.kdc.store import Store
from krs_plugin.payload import RollKey, parse_payload
from krs_plugin.protocol import (
    CHUNK_TYPE,
    Limits,
    chunk_name,
    manifest_name,
    notify_name,
    read_manifest_record,
    reassemble,
)
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS, ChunkOption
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

KDC = str(Path(sys.executable).parent / "krs-kdc")
CZ = "kdc.example."
ZONE = "example.com."
CHUNK = dns.rdatatype.RdataType.make(CHUNK_TYPE)


def kdc(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [KDC, "--state", str(state), *args], capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@dataclass
class Kdc:
    state: Path
    port: int
    process: subprocess.Popen[str]
    log: Path
    node_a: HpkeKey
    node_b: JoseKey
    signer_a: JoseKey
    notify_a: socket.socket

    def query(self, name: dns.name.Name, rdtype: object = CHUNK, tcp: bool = True):
        message = dns.message.make_query(name, rdtype)  # type: ignore[arg-type]
        send = dns.query.tcp if tcp else dns.query.udp
        return send(message, "127.0.0.1", port=self.port, timeout=5)

    def distributions(self) -> list[dict[str, object]]:
        return json.loads(kdc(self.state, "--json", "distribution", "list").stdout)


@dataclass
class Nodes:
    node_a: HpkeKey
    node_b: JoseKey
    signer_a: JoseKey
    notify_a: socket.socket


def prepare(state: Path, files: Path) -> Nodes:
    """A KDC with one zone, a KSK and a ZSK, node a (hpke, signing key) and node b (jose)."""
    kdc(state, "init", "--control-zone", CZ)
    kdc(state, "zone", "add", ZONE)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "KSK", "--algorithm", "13")
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "ZSK", "--algorithm", "15")
    node_a, node_b, signer_a = HpkeKey.generate(), JoseKey.generate(), JoseKey.generate()
    write_hpke_public(files / "a.hpke", node_a)
    write_jose_public(files / "a.sig", signer_a, use="sig")
    write_jose_public(files / "b.jose", node_b)
    notify_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    notify_a.bind(("127.0.0.1", 0))
    notify_a.settimeout(10)
    port_a = notify_a.getsockname()[1]
    kdc(
        state,
        "node",
        "add",
        "a.edge.example.",
        "--notify",
        f"127.0.0.1:{port_a}",
        "--hpke-pubkey",
        str(files / "a.hpke"),
        "--signing-pubkey",
        str(files / "a.sig"),
        "--zone",
        ZONE,
    )
    kdc(
        state,
        "node",
        "add",
        "b.edge.example.",
        "--notify",
        f"127.0.0.1:{free_port()}",
        "--jose-pubkey",
        str(files / "b.jose"),
        "--zone",
        ZONE,
    )
    return Nodes(node_a, node_b, signer_a, notify_a)


@pytest.fixture
def running_kdc(tmp_path: Path) -> Iterator[Kdc]:
    state = tmp_path / "state"
    nodes = prepare(state, tmp_path)
    node_a, node_b, signer_a, notify_a = nodes.node_a, nodes.node_b, nodes.signer_a, nodes.notify_a
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                KDC,
                "--state",
                str(state),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--notify-retry",
                "0.3",
                "--notify-retry-max",
                "0.6",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Kdc(state, port, process, log, node_a, node_b, signer_a, notify_a)
    deadline = time.time() + 20
    while True:
        try:
            server.query(dns.name.from_text(CZ), dns.rdatatype.SOA, tcp=False)
            break
        except (OSError, dns.exception.Timeout):
            if time.time() > deadline or process.poll() is not None:
                pytest.fail(f"krs-kdc serve did not come up: {log.read_text()}")
            time.sleep(0.1)
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        notify_a.close()


def fetch(server: Kdc, node: str, dist_id: str):
    manifest = server.query(manifest_name(node, dist_id, CZ)).answer[0][0]
    chunks = [
        server.query(chunk_name(i, node, dist_id, CZ)).answer[0][0]
        for i in range(1, manifest.total + 1)
    ]
    return manifest, chunks


def test_served_distribution_reassembles_and_opens_with_the_nodes_key(running_kdc: Kdc) -> None:
    out = kdc(running_kdc.state, "--json", "distribute", "--zone", ZONE, "--chunk-size", "400")
    dist_id = json.loads(out.stdout)["distribution_id"]
    verifier = load_jose_key(running_kdc.state / "keys" / "kdc.signing.pubkey")
    manifest, chunks = fetch(running_kdc, "a.edge.example.", dist_id)
    assert len(chunks) > 1
    node = NodeIdentity(dns.name.from_text("a.edge.example."), hpke=running_kdc.node_a)
    unpacked = unpack_distribution(dist_id, manifest, chunks, node, verifier, now=time.time())
    payload = parse_payload(unpacked.plaintext, now=time.time(), expected_distribution_id=dist_id)
    tags = {e.key_tag for e in payload.entries if isinstance(e, RollKey)}
    listed = json.loads(kdc(running_kdc.state, "--json", "key", "list").stdout)
    assert tags == {k["key_tag"] for k in listed}

    # Node B's distribution is sealed to B: node A's key opens neither its manifest nor its data.
    manifest_b, chunks_b = fetch(running_kdc, "b.edge.example.", dist_id)
    wrong = NodeIdentity(dns.name.from_text("b.edge.example."), jose=JoseKey.generate())
    with pytest.raises(IntegrityError, match="HMAC"):
        unpack_distribution(dist_id, manifest_b, chunks_b, wrong, verifier, now=time.time())
    good = read_manifest_record(manifest_b, running_kdc.node_b.hmac_key)
    transport = reassemble(good, chunks_b, Limits())
    with pytest.raises(DecryptionError):
        open_envelope(transport, backend="jose", recipient=wrong.jose, verifier=verifier)  # type: ignore[arg-type]


def test_one_mebibyte_distribution_is_served_over_tcp(running_kdc: Kdc) -> None:
    store = Store(running_kdc.state / "kdc.db")
    signer = load_jose_key(running_kdc.state / "keys" / "kdc.signing.privatekey")
    plaintext = os.urandom(1024 * 1024)
    now = time.time()
    recipient = NodeRecipient(
        dns.name.from_text("a.edge.example."), "hpke", running_kdc.node_a.public_only()
    )
    with store.transaction():
        dist_id, serial = store.next_distribution_id(now)
        records = build_distribution(
            plaintext,
            recipient,
            signer,
            dist_id,
            now=now,
            chunk_size=8000,
            content="mgmt_operations",
        )
        store.add_distribution(
            dist_id,
            serial,
            "a.edge.example.",
            zone=None,
            content="mgmt_operations",
            created_at=int(now),
            expires_at=int(now) + 300,
            records=[r.to_wire() for r in records],
        )
    store.close()
    manifest = running_kdc.query(manifest_name("a.edge.example.", dist_id, CZ)).answer[0][0]
    assert manifest.total > 100
    with socket.create_connection(("127.0.0.1", running_kdc.port), timeout=10) as sock:
        chunks = []
        for i in range(1, manifest.total + 1):
            query = dns.message.make_query(chunk_name(i, "a.edge.example.", dist_id, CZ), CHUNK)
            chunks.append(dns.query.tcp(query, None, sock=sock, timeout=10).answer[0][0])
    node = NodeIdentity(dns.name.from_text("a.edge.example."), hpke=running_kdc.node_a)
    verifier = signer.public_only()
    unpacked = unpack_distribution(dist_id, manifest, chunks, node, verifier, now=time.time())
    assert unpacked.plaintext == plaintext

    # Over UDP a chunk that does not fit is truncated, so the client knows to use TCP.
    udp = running_kdc.query(chunk_name(1, "a.edge.example.", dist_id, CZ), tcp=False)
    assert udp.flags & dns.flags.TC and not udp.answer


def test_notify_is_retried_until_the_node_answers_then_stops(running_kdc: Kdc) -> None:
    kdc(running_kdc.state, "distribute", "--zone", ZONE, "--node", "a.edge.example.")
    seen = []
    for _ in range(3):  # stay silent for the first three NOTIFYs
        wire, _ = running_kdc.notify_a.recvfrom(4096)
        seen.append(dns.message.from_wire(wire))
    assert all(m.opcode() == dns.opcode.NOTIFY for m in seen)
    assert seen[0].question[0].name.to_text().endswith(CZ)
    wire, addr = running_kdc.notify_a.recvfrom(4096)
    reply = dns.message.make_response(dns.message.from_wire(wire))
    running_kdc.notify_a.sendto(reply.to_wire(), addr)
    time.sleep(1.0)
    attempts = running_kdc.distributions()[0]["notify_attempts"]
    assert attempts >= 4
    time.sleep(2.0)
    assert running_kdc.distributions()[0]["notify_attempts"] == attempts


def confirm(server: Kdc, dist_id: str, report: dict[str, object]) -> dns.message.Message:
    message = dns.message.make_query(notify_name(dist_id, CZ), CHUNK)
    message.set_opcode(dns.opcode.NOTIFY)
    body = json.dumps(report).encode()
    message.use_edns(0, 0, 4096, options=[ChunkOption(CONTENT_KEY_STATUS, body)])
    return dns.query.udp(message, "127.0.0.1", port=server.port, timeout=5)


def test_signed_confirmation_moves_status_and_a_forged_one_is_refused(running_kdc: Kdc) -> None:
    out = kdc(running_kdc.state, "--json", "distribute", "--zone", ZONE)
    dist_id = json.loads(out.stdout)["distribution_id"]
    listed = json.loads(kdc(running_kdc.state, "--json", "key", "list").stdout)
    base = {
        "distribution_id": dist_id,
        "node_id": "a.edge.example.",
        "time": int(time.time()),
        "successful_keys": [{"zone_name": ZONE, "key_id": str(k["key_tag"])} for k in listed],
    }

    forged = confirm(running_kdc, dist_id, sign_report(base, JoseKey.generate()))
    assert forged.rcode() == dns.rcode.REFUSED
    statuses = {d["node_id"]: d["status"] for d in running_kdc.distributions()}
    assert statuses["a.edge.example."] == "pending"
    assert "rejected" in running_kdc.log.read_text()

    unsigned = confirm(running_kdc, dist_id, base)
    assert unsigned.rcode() == dns.rcode.REFUSED

    good = confirm(running_kdc, dist_id, sign_report(base, running_kdc.signer_a))
    assert good.rcode() == dns.rcode.NOERROR
    statuses = {d["node_id"]: d["status"] for d in running_kdc.distributions()}
    assert statuses == {"a.edge.example.": "confirmed", "b.edge.example.": "pending"}
    # the audit trail has the one confirmation serve recorded, none of the refused ones
    trail = json.loads(kdc(running_kdc.state, "--json", "audit", "list", "--zone", ZONE).stdout)
    recorded = [(e["node"], e["actor"], e["details"]["distribution"])
                for e in trail if e["kind"].startswith("distribution.confirmed")]  # fmt: skip
    assert recorded == [("a.edge.example.", "serve", dist_id)]
    assert kdc(running_kdc.state, "audit", "verify").returncode == 0


def test_expired_distribution_is_withdrawn_from_the_zone(running_kdc: Kdc) -> None:
    out = kdc(running_kdc.state, "--json", "distribute", "--zone", ZONE, "--ttl", "1")
    dist_id = json.loads(out.stdout)["distribution_id"]
    name = manifest_name("b.edge.example.", dist_id, CZ)
    assert running_kdc.query(name).answer
    time.sleep(2.5)
    assert running_kdc.query(name).rcode() == dns.rcode.NXDOMAIN
    assert {d["status"] for d in running_kdc.distributions()} == {"expired"}
    trail = json.loads(kdc(running_kdc.state, "--json", "audit", "list").stdout)
    expired = [e["details"]["nodes"] for e in trail if e["kind"] == "distribution.expired"
               and e["details"]["distribution"] == dist_id]  # fmt: skip
    assert expired == [["a.edge.example.", "b.edge.example."]]  # by serve, both nodes at once


def test_refuses_what_is_not_its_business(running_kdc: Kdc) -> None:
    outside = running_kdc.query(dns.name.from_text("www.example.org."), dns.rdatatype.A, tcp=False)
    assert outside.rcode() == dns.rcode.REFUSED
    inside = running_kdc.query(dns.name.from_text("x." + CZ), dns.rdatatype.TXT, tcp=False)
    assert inside.rcode() == dns.rcode.REFUSED
    missing = running_kdc.query(manifest_name("a.edge.example.", "abcdef12", CZ), tcp=False)
    assert missing.rcode() == dns.rcode.NXDOMAIN
    ns = running_kdc.query(dns.name.from_text(CZ), dns.rdatatype.NS, tcp=False)
    assert ns.flags & dns.flags.AA and ns.answer


@pytest.fixture(scope="module")
def prepared_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One KDC state for the refusal tests: each must leave it unchanged anyway."""
    base = tmp_path_factory.mktemp("kdc")
    nodes = prepare(base / "state", base)
    yield base / "state"
    nodes.notify_a.close()


def dump(state: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(state / "kdc.db") as db:
        rows: list[tuple[object, ...]] = []
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            rows += [(table, *r) for r in db.execute(f"SELECT * FROM {table}")]
        return sorted(rows, key=repr)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["distribute", "--zone", ZONE, "--node", "nope.example."], "node nope.example. not found"),
        (["distribute", "--zone", "missing.example."], "zone missing.example. not found"),
        (["key", "generate", "--zone", "missing.example.", "--role", "ZSK"], "not found"),
        (["zone", "add", ZONE], "already exists"),
        (
            [
                "node",
                "add",
                "a.edge.example.",
                "--notify",
                "127.0.0.1:1",
                "--hpke-pubkey",
                "{hpke}",
            ],
            "already exists",
        ),
        (
            ["node", "add", "c.edge.example.", "--notify", "127.0.0.1:1", "--hpke-pubkey", "{bad}"],
            "expected 64 hex",
        ),
        (
            ["node", "add", "c.edge.example.", "--notify", "127.0.0.1:1", "--jose-pubkey", "{bad}"],
            "not JWK JSON",
        ),
        (
            [
                "node",
                "add",
                "1.edge.example.",
                "--notify",
                "127.0.0.1:1",
                "--hpke-pubkey",
                "{hpke}",
            ],
            "all-digit",
        ),
        (
            ["node", "add", "c.edge.example.", "--notify", "nowhere", "--hpke-pubkey", "{hpke}"],
            "host:port",
        ),
    ],
)
def test_bad_commands_name_the_problem_and_change_nothing(
    prepared_state: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "bad.key").write_text("# a comment\nnot a key\n")
    write_hpke_public(tmp_path / "ok.hpke", HpkeKey.generate())
    args = [a.format(bad=tmp_path / "bad.key", hpke=tmp_path / "ok.hpke") for a in args]
    before = dump(prepared_state)
    result = kdc(prepared_state, *args, check=False)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert dump(prepared_state) == before


def test_malformed_queries_get_formerr_and_the_server_keeps_serving(running_kdc: Kdc) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(
            b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
            ("127.0.0.1", running_kdc.port),
        )
        reply = sock.recv(512)
    assert reply[:2] == b"\xbe\xef" and reply[3] & 0x0F == dns.rcode.FORMERR
    with socket.create_connection(("127.0.0.1", running_kdc.port), timeout=5) as tcp:
        tcp.sendall(b"\x00\x03abc")  # too short to hold a header: nothing to answer
        assert tcp.recv(64) == b""
    soa = running_kdc.query(dns.name.from_text(CZ), dns.rdatatype.SOA)
    assert soa.answer
