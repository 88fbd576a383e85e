"""`krs-kdc serve` as the control zone's primary (docs/scale.md): AXFR and IXFR with an address
ACL and TSIG, an SOA serial that grows with every change, NOTIFY to secondaries. Checked with
dnspython's own transfer client, against a real `krs-kdc serve` process on loopback."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.xfr
import dns.zone
import pytest
from netutil import free_port

from krs_plugin.crypto import HpkeKey, write_hpke_public
from krs_plugin.protocol import CHUNK_TYPE, manifest_name, pending_name

KDC = str(Path(sys.executable).parent / "krs-kdc")
CZ = "kdc.example."
ZONE = "example.com."
CHUNK = dns.rdatatype.RdataType.make(CHUNK_TYPE)
SECRET = base64.b64encode(b"control-zone-transfer-secret-32b").decode()
KEY_FILE = f'key "xfr-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
KEYRING = dns.tsigkeyring.from_text({"xfr-key": ("hmac-sha256", SECRET)})
ORIGIN = dns.name.from_text(CZ)


def kdc(state: Path, *args: str) -> str:
    done = subprocess.run(
        [KDC, "--state", str(state), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Primary:
    state: Path
    port: int
    secondary: socket.socket
    log: Path

    def axfr(self, keyring: object = None) -> dns.zone.Zone:
        zone = dns.zone.Zone(ORIGIN)
        query, _ = dns.xfr.make_query(zone, serial=None, keyring=keyring)
        dns.query.inbound_xfr("127.0.0.1", zone, query, port=self.port, timeout=10)
        return zone

    def serial(self) -> int:
        query = dns.message.make_query(ORIGIN, dns.rdatatype.SOA)
        reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=5)
        return int(reply.answer[0][0].serial)

    def distribute(self) -> str:
        out = kdc(self.state, "--json", "distribute", "--zone", ZONE)
        import json

        return str(json.loads(out)["distribution_id"])

    def notifies(self, timeout: float) -> list[int]:
        """Serials of the NOTIFYs the fake secondary got (each answered NOERROR, TSIG-signed)."""
        serials = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.secondary.settimeout(max(0.05, deadline - time.time()))
            try:
                wire, peer = self.secondary.recvfrom(65535)
            except TimeoutError:
                break
            message = dns.message.from_wire(wire, keyring=KEYRING)
            if message.opcode() == dns.opcode.QUERY:
                continue  # serve's look at the secondary's serial at start (left unanswered)
            assert message.opcode() == dns.opcode.NOTIFY and message.had_tsig
            serials.append(int(message.answer[0][0].serial))
            reply = dns.message.make_response(message)
            self.secondary.sendto(reply.to_wire(), peer)
        return serials


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Primary]:
    state = tmp_path / "state"
    kdc(state, "init", "--control-zone", CZ)
    kdc(state, "zone", "add", ZONE)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "CSK")
    for name in ("a", "b"):
        write_hpke_public(tmp_path / f"{name}.hpke", HpkeKey.generate())
        kdc(state, "node", "add", f"{name}.edge.example.", "--notify", f"127.0.0.1:{free_port()}",
            "--hpke-pubkey", str(tmp_path / f"{name}.hpke"), "--zone", ZONE)  # fmt: skip
    key = tmp_path / "xfr.key"
    key.write_text(KEY_FILE)
    key.chmod(0o600)
    secondary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    secondary.bind(("127.0.0.1", 0))
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [KDC, "--state", str(state), "serve", "--listen", f"127.0.0.1:{port}",
             "--also-notify", f"127.0.0.1:{secondary.getsockname()[1]}",
             "--tsig-key", str(key), "--notify-retry", "0.2", "--notify-retry-max", "0.4"],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    server = Primary(state, port, secondary, log)
    deadline = time.time() + 20
    while True:
        try:
            server.serial()
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
        secondary.close()


def test_axfr_carries_every_chunk_and_the_pending_index(primary: Primary) -> None:
    first = primary.serial()
    dist_id = primary.distribute()
    notified = primary.notifies(5)
    assert notified and notified[-1] > first
    zone = primary.axfr(KEYRING)
    soa = zone.get_soa()
    assert soa.serial == notified[-1] == primary.serial()
    for node in ("a.edge.example.", "b.edge.example."):
        manifest = manifest_name(dns.name.from_text(node), dist_id, ORIGIN)
        assert zone.get_rdataset(manifest, CHUNK) is not None, manifest
        # the same bytes the KDC answers directly
        direct = dns.query.tcp(
            dns.message.make_query(manifest, CHUNK), "127.0.0.1", port=primary.port, timeout=5
        )
        assert zone.get_rdataset(manifest, CHUNK)[0] == direct.answer[0][0]
        index = zone.get_rdataset(pending_name(dns.name.from_text(node), ORIGIN), "TXT")
        assert [s.decode() for s in index[0].strings] == [dist_id]


def test_ixfr_gives_only_what_changed_and_the_serial_grows(primary: Primary) -> None:
    primary.distribute()
    primary.notifies(3)
    zone = primary.axfr(KEYRING)
    before = zone.get_soa().serial
    second = primary.distribute()
    primary.notifies(3)
    # dnspython's IXFR client applies the difference to the zone it holds
    dns.query.inbound_xfr(
        "127.0.0.1",
        zone,
        dns.xfr.make_query(zone, serial=before, keyring=KEYRING)[0],
        port=primary.port,
        timeout=10,
    )
    assert zone.get_soa().serial == primary.serial() > before
    assert zone == primary.axfr(KEYRING)
    index = zone.get_rdataset(pending_name(dns.name.from_text("a.edge.example."), ORIGIN), "TXT")
    assert [s.decode() for s in index[0].strings][-1] == second


def test_expiry_is_a_change_too(primary: Primary) -> None:
    kdc(primary.state, "--json", "distribute", "--zone", ZONE, "--ttl", "4")
    assert primary.notifies(0.8)
    published = primary.serial()
    assert primary.axfr(KEYRING).get_rdataset(
        pending_name(dns.name.from_text("a.edge.example."), ORIGIN), "TXT"
    )
    serials = primary.notifies(8)
    assert serials and serials[-1] > published
    zone = primary.axfr(KEYRING)
    assert not [name for name, node in zone.nodes.items() if node.get_rdataset(1, CHUNK)]


def test_unchanged_zone_keeps_its_serial(primary: Primary) -> None:
    serial = primary.serial()
    assert set(primary.notifies(1.0)) == {serial}  # the first version, NOTIFYed once answered
    time.sleep(2.5)
    assert primary.serial() == serial
    assert primary.notifies(1.0) == []


def test_transfers_need_the_key_and_the_address(primary: Primary) -> None:
    with pytest.raises(dns.xfr.TransferError) as unsigned:
        primary.axfr()
    assert unsigned.value.rcode == dns.rcode.REFUSED
    wrong = dns.tsigkeyring.from_text({"xfr-key": ("hmac-sha256", base64.b64encode(b"x" * 32))})
    with pytest.raises(dns.xfr.TransferError) as forged:
        primary.axfr(wrong)
    assert forged.value.rcode == dns.rcode.NOTAUTH
    # 127.0.0.2 is not a secondary and not in --allow-transfer
    query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
    query.use_tsig(KEYRING)
    reply = dns.query.tcp(query, "127.0.0.1", port=primary.port, timeout=5, source="127.0.0.2")
    assert reply.rcode() == dns.rcode.REFUSED
    assert "127.0.0.2 is not in --allow-transfer" in primary.log.read_text()
