"""Issue 25, item 2: a node rotates its keys without enrolling again (``krs rekey``, or ``krs run``
when the KDC asks); real ``krs-kdc serve`` and ``krs run`` on loopback, the node enrolled with
``krs enroll`` so the KDC knows its SIG(0) key (docs/operations.md, "Rotating the node's keys")."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from daemonkit import BIN, CZ, ZONE, Deployment, wait_until

from krs_lab.ports import free_port
from krs_plugin.confirmation import confirmation_message
from krs_plugin.crypto import HpkeKey, JoseKey, load_jose_key
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.enrollment import ede_text
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import sig0
from krs_plugin.receiver.enroll import exchange
from krs_plugin.rekey import build_update, public_keys, request_body

pytestmark = pytest.mark.integration

NEW = "ns2.edge.example."
OTHER = "ns3.edge.example."
KEY_FILES = ("node.hpke.privatekey", "node.signing.privatekey", "node.sig0.privatekey")


@pytest.fixture
def kdc(tmp_path: Path) -> Deployment:  # type: ignore[misc]
    deployment = Deployment(tmp_path / "kdc", "hpke")
    deployment.start_kdc()
    yield deployment
    deployment.close()


def enrol(kdc: Deployment, where: Path, node: str = NEW, backend: str = "hpke") -> Path:
    """``krs enroll`` a node with a real package: its folder (krs.yaml, keys, krs.db)."""
    package = where / f"{node}enroll"
    address = f"127.0.0.1:{kdc.kdc_port}"
    kdc.kdc("enroll", "create", "--node", node, "--zones", ZONE, "--backend", backend,
            "--valid", "15m", "--kdc-address", address, "-o", str(package))  # fmt: skip
    directory = where / node.rstrip(".")
    result = subprocess.run(
        [str(BIN / "krs"), "enroll", str(package), "--dir", str(directory),
         "--state-dir", str(directory), "--notify", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return directory


def krs(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "krs"), *args, "-c", str(directory / "krs.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_node(kdc: Deployment, directory: Path, name: str = "krs-new") -> None:
    kdc.start(name, [str(BIN / "krs"), "run", "-c", str(directory / "krs.yaml")])
    log = kdc.logs / f"{name}.log"
    wait_until(lambda: "listening for NOTIFY" in log.read_text(), 30, f"{name} to listen")


def node_show(kdc: Deployment, node: str = NEW) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(kdc.kdc("--json", "node", "show", node))
    return shown


def all_confirmed(kdc: Deployment, node: str = NEW) -> bool:
    mine = [d for d in kdc.distributions() if d["node_id"] == node]
    return (
        bool(mine)
        and all(d["status"] in ("confirmed", "expired") for d in mine)
        and any(d["status"] == "confirmed" for d in mine)
    )


def status_of(kdc: Deployment, dist_id: str, node: str = NEW) -> str:
    return next(
        (d["status"] for d in kdc.distributions() if d["id"] == dist_id and d["node_id"] == node),
        "absent",
    )


def installed_dnskeys(directory: Path) -> set[object]:
    return {
        read_bind_key_pair(f)[0].dnskey for f in sorted((directory / "zone-keys").glob("*.private"))
    }


def kdc_dnskey(kdc: Deployment, tag: int) -> object:
    store = Store(kdc.state / "kdc.db")
    try:
        return dnskey_of(store.require_key(ZONE, tag))
    finally:
        store.close()


def new_zsk(kdc: Deployment) -> int:
    made = json.loads(kdc.kdc("--json", "key", "generate", "--zone", ZONE, "--role", "ZSK"))
    return int(made["key_tag"])


def rows(kdc: Deployment) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(f"file:{kdc.state / 'kdc.db'}?mode=ro", uri=True)
    try:
        tables = {"nodes": "*", "distributions": "id, node_id, status"}
        found = {t: sorted(db.execute(f"SELECT {c} FROM {t}").fetchall(), key=repr)
                 for t, c in tables.items()}  # fmt: skip
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'node_rekey'").fetchone():
            found["node_rekey"] = db.execute("SELECT * FROM node_rekey").fetchall()
        return found
    finally:
        db.close()


def audit_kinds(kdc: Deployment) -> list[str]:
    return [e["kind"] for e in json.loads(kdc.kdc("--json", "audit", "list"))]


def send_update(kdc: Deployment, wire: bytes) -> dns.message.Message:
    return exchange(wire, "127.0.0.1", kdc.kdc_port, 10)


def rekey_wire(
    node: str, signer: Ed25519PrivateKey | None, *, signer_name: str | None = None
) -> bytes:
    """A well-formed rekey UPDATE for ``node`` with fresh keys, signed by ``signer``."""
    backend, signing, new_sig0 = (
        HpkeKey.generate(),
        JoseKey.generate(),
        Ed25519PrivateKey.generate(),
    )
    body = request_body(node, public_keys(node, "hpke", backend, signing, new_sig0), signing)
    if signer is None:
        key = Ed25519PrivateKey.generate()
        return sig0.strip(build_update(dns.name.from_text(CZ), node, body, key))
    wire = build_update(dns.name.from_text(CZ), signer_name or node, body, signer)
    return wire


def sig0_key(directory: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(
        (directory / "node.sig0.privatekey").read_bytes(), password=None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


# --- the whole path ----------------------------------------------------------------------------


def test_krs_rekey_on_a_running_node_misses_no_distribution_and_the_old_keys_are_destroyed(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    old = {name: (node / name).read_bytes() for name in KEY_FILES}
    old_signer = load_jose_key(node / "node.signing.privatekey")
    old_sig0 = sig0_key(node)

    before_tag = new_zsk(kdc)
    before = kdc.distribute("--zone", ZONE, "--node", NEW)  # sealed to the old key
    result = krs(node, "rekey", "--json")
    assert result.returncode == 0, result.stderr + kdc.all_logs()
    assert json.loads(result.stdout)["outcome"] == "switched"
    after_tag = new_zsk(kdc)
    after = kdc.distribute("--zone", ZONE, "--node", NEW)  # sealed to the new key

    wait_until(
        lambda: status_of(kdc, after) == "confirmed" and status_of(kdc, before) == "confirmed",
        60,
        lambda: f"both distributions confirmed:\n{kdc.all_logs()}",
    )
    # What the node's directory holds: both new ZSKs, each as the KDC made it.
    held = installed_dnskeys(node)
    assert kdc_dnskey(kdc, before_tag) in held and kdc_dnskey(kdc, after_tag) in held

    # New keys in place, 0600; the old ones gone once the new key opened a distribution.
    wait_until(
        lambda: not list(node.glob("*.previous")),
        30,
        lambda: f"old keys removed:\n{kdc.all_logs()}",
    )
    for name in KEY_FILES:
        assert (node / name).read_bytes() != old[name]
        assert (node / name).stat().st_mode & 0o777 == 0o600
    assert not list(node.glob("*.next"))
    wait_until(
        lambda: node_show(kdc)["node_keys"]["rekey_state"] == "idle",
        30,
        lambda: f"rotation complete at the KDC:\n{kdc.all_logs()}",
    )
    shown = node_show(kdc)["node_keys"]
    assert shown["rekeys"] == 1 and shown["completed_at"] and shown["old_keys"] is None
    kinds = audit_kinds(kdc)
    assert "node.rekey.switch" in kinds and "node.rekey.complete" in kinds
    status = krs(node, "status")
    assert "rotation idle" in status.stdout, status.stdout
    # The node and the KDC name the same public keys, the same way.
    mine = json.loads(krs(node, "rekey", "--status", "--json").stdout)["keys"]
    assert {k: v["identity"] for k, v in mine.items()} == shown["keys"]
    assert set(shown["keys"]) == {"hpke", "signing", "sig0"}

    # The KDC now refuses what the old keys sign: a confirmation, a rekey UPDATE.
    report = {"successful_keys": [{"zone_name": ZONE, "key_id": str(after_tag)}]}
    forged = confirmation_message(after, CZ, report, old_signer, node_id=NEW)
    answer = dns.query.udp(forged, "127.0.0.1", port=kdc.kdc_port, timeout=10)
    assert answer.rcode() == dns.rcode.REFUSED
    assert "confirmation signature" in kdc.log("kdc") or "rejected" in kdc.log("kdc")
    stale = send_update(kdc, rekey_wire(NEW, old_sig0))
    assert stale.rcode() == dns.rcode.REFUSED and "SIG(0)" in ede_text(stale)
    assert node_show(kdc)["node_keys"]["rekeys"] == 1


def test_a_rekey_update_signed_by_another_node_or_unsigned_is_refused_and_changes_nothing(
    kdc: Deployment, tmp_path: Path
) -> None:
    enrol(kdc, tmp_path, NEW)
    other = enrol(kdc, tmp_path, OTHER)
    before = rows(kdc)
    by_other = send_update(kdc, rekey_wire(NEW, sig0_key(other), signer_name=OTHER))
    assert by_other.rcode() == dns.rcode.REFUSED, ede_text(by_other)
    assert "SIG(0)" in ede_text(by_other)
    other_key_as_new = send_update(kdc, rekey_wire(NEW, sig0_key(other)))
    assert other_key_as_new.rcode() == dns.rcode.REFUSED and "SIG(0)" in ede_text(other_key_as_new)
    unsigned = send_update(kdc, rekey_wire(NEW, None))
    assert unsigned.rcode() == dns.rcode.REFUSED and "SIG(0)" in ede_text(unsigned)
    assert rows(kdc) == before
    assert "node.rekey.switch" not in audit_kinds(kdc)
    # A dry run of the KDC's request: said, and nothing kept (no ping, no mark, no entry).
    kinds = audit_kinds(kdc)
    dry = json.loads(kdc.kdc("--json", "node", "rekey", NEW, "--dry-run"))
    assert dry["distribution_id"]
    assert rows(kdc) == before and audit_kinds(kdc) == kinds
    assert node_show(kdc)["node_keys"]["rekey_state"] == "idle"
    # krs rekey refused (the node removed at the KDC): a clear error, the node's keys as they were.
    kdc.kdc("node", "remove", OTHER)
    old = {name: (other / name).read_bytes() for name in KEY_FILES}
    result = krs(other, "rekey")
    assert result.returncode == 1
    assert (
        "the KDC refused the rekey (REFUSED)" in result.stderr and "not enrolled" in result.stderr
    )
    assert "keeps its current keys" in result.stderr
    assert {name: (other / name).read_bytes() for name in KEY_FILES} == old
    assert not list(other.glob("*.next")) and not list(other.glob("*.previous"))


def test_a_failed_update_leaves_the_node_on_its_old_keys_and_running_again_completes_it(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    old = {name: (node / name).read_bytes() for name in KEY_FILES}
    kdc.stop("kdc")
    failed = krs(node, "rekey", "--timeout", "2")
    assert failed.returncode == 1
    assert "no answer from the KDC" in failed.stderr and "keeps its current keys" in failed.stderr
    assert {name: (node / name).read_bytes() for name in KEY_FILES} == old
    pending = sorted(p.name for p in node.glob("*.next"))
    assert pending == sorted(f"{n}.next" for n in KEY_FILES)
    assert all((node / p).stat().st_mode & 0o777 == 0o600 for p in pending)
    assert krs(node, "rekey", "--status", "--json").returncode == 0

    kdc.start_kdc()
    # Twice at once: one rotation; the other is refused at once or finds it done.
    both = [
        subprocess.Popen(
            [str(BIN / "krs"), "rekey", "-c", str(node / "krs.yaml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(60), *p.communicate()) for p in both]
    assert any(code == 0 and "switched" in out for code, out, _ in outcomes), outcomes
    for code, _out, err in outcomes:
        assert code == 0 or "another key rotation of this node is running" in err, outcomes
    assert node_show(kdc)["node_keys"]["rekeys"] == 1
    assert node_show(kdc)["node_keys"]["rekey_state"] == "switched"
    for name in KEY_FILES:
        assert (node / name).read_bytes() != old[name]
        assert (node / f"{name}.previous").read_bytes() == old[name]  # until a new-key opening
    again = krs(node, "rekey")
    assert again.returncode == 0 and "waiting" in again.stdout
    assert node_show(kdc)["node_keys"]["rekeys"] == 1


def test_the_kdc_asks_and_krs_run_rotates_the_keys_on_its_own(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    old = {name: (node / name).read_bytes() for name in KEY_FILES}
    asked = json.loads(kdc.kdc("--json", "node", "rekey", NEW))
    assert asked["distribution_id"]
    wait_until(
        lambda: node_show(kdc)["node_keys"]["completed_at"] is not None,
        90,
        lambda: f"the rotation the KDC asked for:\n{kdc.all_logs()}",
    )
    assert all((node / name).read_bytes() != old[name] for name in KEY_FILES)
    wait_until(lambda: not list(node.glob("*.previous")), 30, "old keys removed")
    assert "node.rekey.request" in audit_kinds(kdc)
    # Still served after the rotation: a new key reaches the node.
    tag = new_zsk(kdc)
    dist = kdc.distribute("--zone", ZONE, "--node", NEW)
    wait_until(lambda: status_of(kdc, dist) == "confirmed", 60, lambda: kdc.all_logs())
    assert kdc_dnskey(kdc, tag) in installed_dnskeys(node)


def test_serve_asks_a_node_whose_keys_are_older_than_the_maximum_age(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    old = (node / "node.hpke.privatekey").read_bytes()
    kdc.kdc("node", "rekey", "--every", "3s")
    wait_until(
        lambda: node_show(kdc)["node_keys"]["completed_at"] is not None,
        90,
        lambda: f"a rotation by key age:\n{kdc.all_logs()}",
    )
    kdc.kdc("node", "rekey", "--never")
    assert (node / "node.hpke.privatekey").read_bytes() != old
    assert node_show(kdc)["node_keys"]["request_cause"] in (None, "key age over 3 s")
    assert "node.rekey.policy" in audit_kinds(kdc)


def test_an_hpke_pq_node_rotates_its_hybrid_key_while_krs_run_runs(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path, backend="hpke-pq")
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    files = ("node.hpke-pq.privatekey", "node.signing.privatekey", "node.sig0.privatekey")
    old = {name: (node / name).read_bytes() for name in files}
    before = node_show(kdc)["node_keys"]["keys"]["hpke-pq"]
    result = krs(node, "rekey")
    assert result.returncode == 0, result.stderr + kdc.all_logs()
    assert "rekey switched (hpke-pq)" in result.stdout
    tag = new_zsk(kdc)
    dist = kdc.distribute("--zone", ZONE, "--node", NEW)  # sealed to the new hybrid key
    wait_until(lambda: status_of(kdc, dist) == "confirmed", 60, lambda: kdc.all_logs())
    assert kdc_dnskey(kdc, tag) in installed_dnskeys(node)
    wait_until(lambda: not list(node.glob("*.previous")), 30, "old keys removed")
    assert all((node / name).read_bytes() != old[name] for name in files)
    shown = node_show(kdc)
    assert shown["backend"] == "hpke-pq" and shown["node_keys"]["keys"]["hpke-pq"] != before
