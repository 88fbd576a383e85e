"""Enrollment against a real ``krs-kdc serve``: a package made by ``krs-kdc enroll create`` lets a
fresh node enrol with ``krs enroll`` and receive its keys from ``krs run`` with no other step; and
every way an enrollment can be wrong is refused with a message that says why, with the KDC's
tables row for row and the node's folder exactly as before."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import dns.name
import dns.rcode
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from daemonkit import BIN, ZONE, Deployment, wait_until

from krs_lab.ports import free_port
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.enrollment import (
    BootstrapPackage,
    build_update,
    ede_text,
    encode_jose_pubkey,
    seal_request,
)
from krs_plugin.errors import EnrollmentError
from krs_plugin.protocol import sig0
from krs_plugin.receiver.enroll import (
    EnrollOptions,
    NodeKeys,
    build_request,
    enroll,
    exchange,
    signed_update,
)

pytestmark = pytest.mark.integration

NEW = "ns2.edge.example."
TABLES = {  # what enrollment could change; NOTIFY bookkeeping of queued distributions moves on
    "nodes": "*",
    "node_zones": "*",
    "enrollment_tokens": "*",
    "distributions": "id, node_id, serial, zone, content, status, created_at, expires_at",
    "records": "*",
}


@pytest.fixture
def kdc(tmp_path: Path) -> Deployment:
    deployment = Deployment(tmp_path / "kdc", "hpke")
    deployment.start_kdc()
    yield deployment
    deployment.close()


def create(kdc: Deployment, where: Path, *, node: str = NEW, backend: str = "hpke",
           valid: str = "15m") -> Path:  # fmt: skip
    package = where / f"{node}{backend}.enroll"
    address = f"127.0.0.1:{kdc.kdc_port}"
    kdc.kdc("enroll", "create", "--node", node, "--zones", ZONE, "--backend", backend,
            "--valid", valid, "--kdc-address", address, "-o", str(package))  # fmt: skip
    return package


def krs_enroll(package: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "krs"), "enroll", str(package), "--dir", str(directory),
         "--state-dir", str(directory), "--notify", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def options(directory: Path) -> EnrollOptions:
    return EnrollOptions(directory, directory / "krs.yaml", notify=f"127.0.0.1:{free_port()}")


def rows(kdc: Deployment) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the tables enrollment could touch, read as the KDC stores them."""
    db = sqlite3.connect(f"file:{kdc.state / 'kdc.db'}?mode=ro", uri=True)
    try:
        return {
            table: sorted(db.execute(f"SELECT {columns} FROM {table}").fetchall(), key=repr)
            for table, columns in TABLES.items()
        }
    finally:
        db.close()


# --- the whole path -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hpke", "jose", "hpke-pq"])
def test_a_fresh_node_enrols_and_its_first_distribution_arrives_without_a_manual_step(
    kdc: Deployment, tmp_path: Path, backend: str
) -> None:
    package = create(kdc, tmp_path, backend=backend)
    assert package.stat().st_mode & 0o777 == 0o600
    token = BootstrapPackage.parse(package.read_text()).token
    stored = b"".join(p.read_bytes() for p in kdc.state.glob("kdc.db*"))
    assert token.encode() not in stored  # the KDC keeps only the token's hash

    node = tmp_path / "node"
    result = krs_enroll(package, node)
    assert result.returncode == 0, result.stderr
    assert f"enrolled {NEW} ({backend})" in result.stdout
    for private in (
        f"node.{backend}.privatekey",
        "node.signing.privatekey",
        "node.sig0.privatekey",
    ):
        assert (node / private).stat().st_mode & 0o777 == 0o600

    enrolled = json.loads(kdc.kdc("--json", "node", "list"))
    (row,) = [n for n in enrolled if n["id"] == NEW]
    assert row["backend"] == backend and row["zones"] == [ZONE]
    assert row["sig0_pubkey"].startswith(f"{NEW} 3600 IN KEY 256 3 15 ")

    # The KDC queued the node's keys at enrollment; krs run finds them at start.
    kdc.start("krs-new", [str(BIN / "krs"), "run", "-c", str(node / "krs.yaml")])

    def confirmed() -> bool:
        mine = [d for d in kdc.distributions() if d["node_id"] == NEW]
        return bool(mine) and all(d["status"] == "confirmed" for d in mine)

    wait_until(confirmed, 30, lambda: f"a confirmed distribution for {NEW}")
    assert token not in (kdc.logs / "kdc.log").read_text()  # never logged
    tags = {k["key_tag"] for k in json.loads(kdc.kdc("--json", "key", "list", "--zone", ZONE))}
    installed = {int(p.name.split("+")[2][:5]) for p in (node / "zone-keys").glob("*.private")}
    assert installed == tags and len(tags) == 2


# --- refusals: a message that says why, and nothing changed ----------------------------------


def refused_by_cli(kdc: Deployment, package: Path, node: Path, why: str) -> None:
    before = rows(kdc)
    result = krs_enroll(package, node)
    assert result.returncode == 1, result.stdout
    assert why in result.stderr
    assert rows(kdc) == before
    assert not node.exists()


def test_an_expired_package_is_refused_by_the_node_and_by_the_kdc(
    kdc: Deployment, tmp_path: Path
) -> None:
    package = create(kdc, tmp_path, valid="1s")
    time.sleep(1.5)
    refused_by_cli(kdc, package, tmp_path / "node", "the enrollment package expired at")
    # Past the node's own check (a package without valid_until, as tdns writes them):
    before = rows(kdc)
    undated = replace(BootstrapPackage.parse(package.read_text()), valid_until="")
    with pytest.raises(EnrollmentError, match="enrollment token expired at"):
        enroll(undated, options(tmp_path / "node"))
    assert rows(kdc) == before and not (tmp_path / "node").exists()


def test_a_token_is_used_once(kdc: Deployment, tmp_path: Path) -> None:
    package = create(kdc, tmp_path)
    assert krs_enroll(package, tmp_path / "first").returncode == 0
    refused_by_cli(kdc, package, tmp_path / "second", "enrollment token already used")


def test_a_revoked_token_is_refused(kdc: Deployment, tmp_path: Path) -> None:
    package = create(kdc, tmp_path)
    kdc.kdc("enroll", "revoke", "--node", NEW)
    refused_by_cli(kdc, package, tmp_path / "node", "enrollment token revoked")
    statuses = [t["status"] for t in json.loads(kdc.kdc("--json", "enroll", "list"))]
    assert statuses == ["revoked"]


def test_a_tampered_package_is_refused(kdc: Deployment, tmp_path: Path) -> None:
    package = create(kdc, tmp_path)
    issued = BootstrapPackage.parse(package.read_text())
    # Another zone written in: the KDC compares the package with the one it issued.
    widened = tmp_path / "widened.enroll"
    widened.write_text(replace(issued, zones=(ZONE, "example.org.")).to_text())
    refused_by_cli(kdc, widened, tmp_path / "node", "not the one issued for this token (altered)")
    # Another KDC signing key written in (someone wants the node to trust their distributions).
    swapped = tmp_path / "swapped.enroll"
    swapped.write_text(replace(issued, kdc_signing_pubkey=JoseKey.generate().public_jwk).to_text())
    refused_by_cli(kdc, swapped, tmp_path / "node", "(altered)")
    # Bytes damaged: the node cannot even read it.
    lines = package.read_text().splitlines()
    body = base64.b64decode(lines[-1])
    damaged = tmp_path / "damaged.enroll"
    damaged.write_text(base64.b64encode(body[:-2] + b"}}").decode() + "\n")
    refused_by_cli(kdc, damaged, tmp_path / "node", "not a base64 JSON package")
    # And the real package still works: none of the above used its token.
    assert krs_enroll(package, tmp_path / "node").returncode == 0


def send(kdc: Deployment, wire: bytes) -> dns.message.Message:
    return exchange(wire, "127.0.0.1", kdc.kdc_port, 10)


def test_a_bad_or_missing_sig0_is_refused(kdc: Deployment, tmp_path: Path) -> None:
    package = BootstrapPackage.parse(create(kdc, tmp_path).read_text())
    keys = NodeKeys.generate("hpke")
    now = time.time()
    request = build_request(package, keys, "127.0.0.1:5399", now)
    before = rows(kdc)
    # Signed by another key than the KEY the request carries.
    impostor = replace(keys, sig0=Ed25519PrivateKey.generate())
    reply = send(kdc, signed_update(package, impostor, request, now))
    assert reply.rcode() == dns.rcode.REFUSED
    assert "SIG(0)" in ede_text(reply) and "KEY 15/" in ede_text(reply)
    # Not signed at all.
    cz = dns.name.from_text(package.control_zone)
    reply = send(kdc, build_update(cz, seal_request(request, package)).to_wire(max_size=0xFFFF))
    assert reply.rcode() == dns.rcode.REFUSED and "no SIG(0)" in ede_text(reply)
    # One byte of the signed message changed after signing.
    wire = bytearray(signed_update(package, keys, request, now))
    wire[40] ^= 0x01
    reply = send(kdc, bytes(wire))
    assert reply.rcode() in (dns.rcode.REFUSED, dns.rcode.FORMERR)
    assert rows(kdc) == before
    # The request itself was fine: signed properly, it enrols.
    reply = send(kdc, signed_update(package, keys, request, now))
    assert reply.rcode() == dns.rcode.NOERROR, ede_text(reply)


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_a_request_sealed_to_another_kdc_key_is_refused(
    kdc: Deployment, tmp_path: Path, backend: str
) -> None:
    package = BootstrapPackage.parse(create(kdc, tmp_path, backend=backend).read_text())
    if backend == "hpke":
        other = replace(package, kdc_hpke_pubkey=HpkeKey.generate().public_hex)
        why = "not sealed to this KDC's X25519 key"
    else:
        other = replace(package, kdc_jose_pubkey=encode_jose_pubkey(JoseKey.generate()))
        why = "not sealed to this KDC's JOSE key"
    before = rows(kdc)
    with pytest.raises(EnrollmentError, match=why):
        enroll(other, options(tmp_path / "node"))
    assert rows(kdc) == before and not (tmp_path / "node").exists()


def test_a_node_id_enrolled_with_other_keys_is_refused(kdc: Deployment, tmp_path: Path) -> None:
    first = create(kdc, tmp_path)
    second = tmp_path / "second.enroll"
    first.rename(second)
    first = create(kdc, tmp_path)  # two packages for one node id, both open
    assert krs_enroll(first, tmp_path / "one").returncode == 0
    refused_by_cli(kdc, second, tmp_path / "two", f"node {NEW} is already enrolled with other keys")


def test_a_request_timestamp_outside_the_window_is_refused(kdc: Deployment, tmp_path: Path) -> None:
    package = BootstrapPackage.parse(create(kdc, tmp_path).read_text())
    before = rows(kdc)
    with pytest.raises(EnrollmentError, match="more than 300 s from the KDC's clock"):
        enroll(package, options(tmp_path / "node"), now=time.time() - 600)
    assert rows(kdc) == before and not (tmp_path / "node").exists()


# --- the KDC's commands ---------------------------------------------------------------------------


def test_enroll_create_refuses_what_cannot_work(kdc: Deployment, tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        result = subprocess.run(
            [str(BIN / "krs-kdc"), "--state", str(kdc.state), "enroll", "create", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stdout
        return result.stderr

    before = rows(kdc)
    assert "already exists" in refused("--node", "ns1.edge.example.", "--zones", ZONE)
    assert "not found" in refused("--node", NEW, "--zones", "example.org.")
    assert "at most 7d" in refused("--node", NEW, "--zones", ZONE, "--valid", "30d")
    assert "expected a duration" in refused("--node", NEW, "--zones", ZONE, "--valid", "soon")
    assert rows(kdc) == before


def test_a_sig0_key_text_round_trips_for_the_request() -> None:
    key = Ed25519PrivateKey.generate()
    parsed = sig0.parse_key_text(sig0.key_text(key, dns.name.from_text(NEW)))
    assert parsed.owner == dns.name.from_text(NEW) and parsed.algorithm == 15


def test_enroll_revoke_by_token_id_ends_that_package_only(kdc: Deployment, tmp_path: Path) -> None:
    create(kdc, tmp_path)
    create(kdc, tmp_path, node="ns3.edge.example.")
    tokens = json.loads(kdc.kdc("--json", "enroll", "list"))
    first = next(t["token_id"] for t in tokens if t["node_id"] == NEW)
    kdc.kdc("enroll", "revoke", "--token", first)
    status = {t["node_id"]: t["status"] for t in json.loads(kdc.kdc("--json", "enroll", "list"))}
    assert status == {NEW: "revoked", "ns3.edge.example.": "open"}
    result = subprocess.run(
        [str(BIN / "krs-kdc"), "--state", str(kdc.state), "enroll", "revoke", "--token", first],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "no open enrollment token" in result.stderr


def test_a_tdns_shaped_request_without_our_fields_enrols(kdc: Deployment, tmp_path: Path) -> None:
    # A tdns KRS sends neither signing_pubkey nor package_digest, and signs its SIG(0) as the
    # control zone: our KDC enrols it, without a confirmation signing key.
    package = BootstrapPackage.parse(create(kdc, tmp_path).read_text())
    keys = NodeKeys.generate("hpke")
    now = time.time()
    request = replace(
        build_request(package, keys, "127.0.0.1:5399", now), signing_pubkey="", package_digest=""
    )
    cz = dns.name.from_text(package.control_zone)
    wire = build_update(cz, seal_request(request, package)).to_wire(max_size=0xFFFF)
    reply = send(kdc, sig0.sign(wire, keys.sig0, cz, now=now))
    assert reply.rcode() == dns.rcode.NOERROR, ede_text(reply)
    (row,) = [n for n in json.loads(kdc.kdc("--json", "node", "list")) if n["id"] == NEW]
    assert row["signing_pubkey"] is None and row["hpke_pubkey"] == keys.hpke.public_hex
