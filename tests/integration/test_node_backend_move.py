"""Issue 26, item 3: an enrolled node moves to another backend without enrolling again (``krs
rekey --backend``; docs/enrollment.md section 7); real ``krs-kdc serve`` and ``krs run`` on
loopback, the node enrolled with ``krs enroll``."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest
from daemonkit import CZ, ZONE, Deployment, wait_until
from test_node_rekey import (
    NEW,
    all_confirmed,
    audit_kinds,
    enrol,
    installed_dnskeys,
    kdc_dnskey,
    krs,
    new_zsk,
    node_show,
    rows,
    run_node,
    send_update,
    sig0_key,
    status_of,
)

from krs_plugin.confirmation import sign_report
from krs_plugin.crypto import HybridKey, JoseKey
from krs_plugin.enrollment import ede_text
from krs_plugin.protocol import CHUNK_TYPE, decode_manifest, manifest_name
from krs_plugin.protocol import sig0 as sig0_wire
from krs_plugin.rekey import build_update

pytestmark = pytest.mark.integration

SIDE_FILES = ("node.signing.privatekey", "node.sig0.privatekey")


@pytest.fixture
def kdc(tmp_path: Path) -> Deployment:  # type: ignore[misc]
    deployment = Deployment(tmp_path / "kdc", "hpke")
    deployment.start_kdc()
    yield deployment
    deployment.close()


def published_backend(kdc: Deployment, dist_id: str, node: str = NEW) -> str:
    """The backend the manifest the KDC serves for ``dist_id`` names (what the node reads)."""
    query = dns.message.make_query(manifest_name(node, dist_id, CZ), CHUNK_TYPE)
    answer = dns.query.tcp(query, "127.0.0.1", port=kdc.kdc_port, timeout=10)
    return decode_manifest(answer.answer[0][0].data).metadata.crypto


def node_row(kdc: Deployment, node: str = NEW) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{kdc.state / 'kdc.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return dict(db.execute("SELECT * FROM nodes WHERE id = ?", (node,)).fetchone())
    finally:
        db.close()


def switch_details(kdc: Deployment) -> list[dict[str, Any]]:
    entries = json.loads(kdc.kdc("--json", "audit", "list"))
    return [e["details"] for e in entries if e["kind"] == "node.rekey.switch"]


def move(kdc: Deployment, node: Path, backend: str) -> None:
    result = krs(node, "rekey", "--backend", backend)
    assert result.returncode == 0, result.stderr + kdc.all_logs()
    assert f"rekey switched ({backend})" in result.stdout, result.stdout


def settled(kdc: Deployment, node: Path, backend: str) -> None:
    """The move finished on both sides: only the new backend's key file is left (0600), and
    the KDC forgot the old keys."""
    wait_until(
        lambda: (
            sorted(p.name for p in node.glob("node.*.privatekey*"))
            == sorted((f"node.{backend}.privatekey", *SIDE_FILES))
        ),
        90,
        lambda: f"only the {backend} key left: {sorted(node.iterdir())}\n{kdc.all_logs()}",
    )
    assert (node / f"node.{backend}.privatekey").stat().st_mode & 0o777 == 0o600
    wait_until(
        lambda: node_show(kdc)["node_keys"]["rekey_state"] == "idle",
        90,
        lambda: f"rotation complete at the KDC:\n{kdc.all_logs()}",
    )


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_a_node_moves_to_hpke_pq_while_krs_run_runs_and_back(
    kdc: Deployment, tmp_path: Path, backend: str
) -> None:
    node = enrol(kdc, tmp_path, backend=backend)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    old_key = (node / f"node.{backend}.privatekey").read_bytes()

    before_tag = new_zsk(kdc)
    before = kdc.distribute("--zone", ZONE, "--node", NEW)
    assert published_backend(kdc, before) == backend
    move(kdc, node, "hpke-pq")
    # The KDC records the hybrid key as docs/kdc.md says and seals to it from now on.
    row = node_row(kdc)
    assert (row["backend"], row["sealing"]) == ("hpke", "hpke-pq") and row["hpke_pq_pubkey"]
    assert node_show(kdc)["backend"] == "hpke-pq"
    assert switch_details(kdc)[-1]["backend"] == {"old": backend, "new": "hpke-pq"}
    after_tag = new_zsk(kdc)
    after = kdc.distribute("--zone", ZONE, "--node", NEW)
    assert published_backend(kdc, after) == "hpke-pq"
    # Both keys reach the node: ``before`` itself, or (when krs run had not fetched it before the
    # switch) the KDC's reseal of what was pending, sealed to the new key; that ``before`` still
    # opens after the switch is the next test's, where krs run is down meanwhile.
    wanted = {kdc_dnskey(kdc, before_tag), kdc_dnskey(kdc, after_tag)}
    wait_until(
        lambda: status_of(kdc, after) == "confirmed" and wanted <= installed_dnskeys(node),
        120,
        lambda: f"both new keys installed:\n{kdc.all_logs()}",
    )
    settled(kdc, node, "hpke-pq")
    assert not (node / f"node.{backend}.privatekey").exists()
    assert not any(old_key == p.read_bytes() for p in node.glob("node.*"))
    # The node and the KDC name the same hybrid key.
    mine = json.loads(krs(node, "rekey", "--status", "--json").stdout)
    assert mine["backend"] == "hpke-pq" and mine["rekey"] == "idle"
    shown = node_show(kdc)["node_keys"]["keys"]
    assert mine["keys"]["hpke-pq"]["identity"] == shown["hpke-pq"]

    # And back: the old backend again, sealing cleared.
    move(kdc, node, backend)
    row = node_row(kdc)
    assert (row["backend"], row["sealing"]) == (backend, None)
    assert switch_details(kdc)[-1]["backend"] == {"old": "hpke-pq", "new": backend}
    back_tag = new_zsk(kdc)
    back = kdc.distribute("--zone", ZONE, "--node", NEW)
    assert published_backend(kdc, back) == backend
    wait_until(lambda: status_of(kdc, back) == "confirmed", 90, lambda: kdc.all_logs())
    assert kdc_dnskey(kdc, back_tag) in installed_dnskeys(node)
    settled(kdc, node, backend)
    assert node_show(kdc)["node_keys"]["rekeys"] == 2


def test_a_distribution_sealed_to_the_old_backend_before_the_move_still_opens(
    kdc: Deployment, tmp_path: Path
) -> None:
    """Nothing in flight is lost: a distribution sealed to the hpke key, fetched only after the
    switch (krs run is down meanwhile), opens with the old key kept as ``.previous``."""
    node = enrol(kdc, tmp_path)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    kdc.stop("krs-new")
    tag = new_zsk(kdc)
    before = kdc.distribute("--zone", ZONE, "--node", NEW)
    assert published_backend(kdc, before) == "hpke"
    move(kdc, node, "hpke-pq")
    old = node / "node.hpke.privatekey"
    assert old.samefile(node / "node.hpke.privatekey.previous")  # kept until retired
    run_node(kdc, node, "krs-again")
    wait_until(
        lambda: status_of(kdc, before) == "confirmed",
        90,
        lambda: f"{before}, sealed to hpke before the move, confirmed:\n{kdc.all_logs()}",
    )
    assert kdc_dnskey(kdc, tag) in installed_dnskeys(node)
    settled(kdc, node, "hpke-pq")


def test_a_move_to_a_backend_the_kdc_does_not_know_is_refused_changing_nothing(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    files = {p.name: p.read_bytes() for p in node.glob("node.*")}
    before = rows(kdc)
    # krs refuses a backend it does not know before anything is made.
    unknown = krs(node, "rekey", "--backend", "hpke-pq2")
    assert unknown.returncode == 2 and "invalid choice: 'hpke-pq2'" in unknown.stderr
    # The KDC refuses an UPDATE naming a backend it does not seal with, saying which.
    signing, hybrid = JoseKey.generate(), HybridKey.generate()
    body = sign_report(
        {
            "node_id": NEW,
            "time": int(time.time()),
            "backend": "hpke-pq2",
            "hpke_pq2_pubkey": hybrid.public_hex,
            "signing_pubkey": json.dumps(signing.public_jwk, sort_keys=True),
            "sig0_pubkey": sig0_wire.key_text(sig0_key(node), dns.name.from_text(NEW)),
        },
        signing,
    )
    answer = send_update(kdc, build_update(dns.name.from_text(CZ), NEW, body, sig0_key(node)))
    assert answer.rcode() == dns.rcode.REFUSED
    assert "backend 'hpke-pq2' is not one of" in ede_text(answer), ede_text(answer)
    assert rows(kdc) == before and "node.rekey.switch" not in audit_kinds(kdc)
    assert {p.name: p.read_bytes() for p in node.glob("node.*")} == files
    assert node_show(kdc)["backend"] == "hpke"


def test_the_kdc_asks_a_node_to_move_to_hpke_pq_and_krs_run_does_it(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    run_node(kdc, node)
    wait_until(lambda: all_confirmed(kdc), 60, lambda: f"the first distribution:\n{kdc.all_logs()}")
    asked = json.loads(kdc.kdc("--json", "node", "rekey", NEW, "--backend", "hpke-pq"))
    assert asked["distribution_id"]
    wait_until(
        lambda: node_show(kdc)["backend"] == "hpke-pq",
        90,
        lambda: f"the move the KDC asked for:\n{kdc.all_logs()}",
    )
    assert switch_details(kdc)[-1]["backend"] == {"old": "hpke", "new": "hpke-pq"}
    tag = new_zsk(kdc)
    dist = kdc.distribute("--zone", ZONE, "--node", NEW)
    assert published_backend(kdc, dist) == "hpke-pq"
    wait_until(lambda: status_of(kdc, dist) == "confirmed", 90, lambda: kdc.all_logs())
    assert kdc_dnskey(kdc, tag) in installed_dnskeys(node)
    settled(kdc, node, "hpke-pq")
    assert "the KDC asked for a key rotation" in kdc.log("krs-new")


def test_a_move_without_an_answer_is_finished_by_the_next_krs_rekey_and_not_redirected(
    kdc: Deployment, tmp_path: Path
) -> None:
    node = enrol(kdc, tmp_path)
    files = {p.name: p.read_bytes() for p in node.glob("node.*")}
    kdc.stop("kdc")
    lost = krs(node, "rekey", "--backend", "hpke-pq", "--timeout", "2")
    assert lost.returncode == 1 and "no answer from the KDC" in lost.stderr, lost.stderr
    assert {p.name: p.read_bytes() for p in node.glob("node.*") if p.suffix != ".next"} == files
    made = sorted(p.name for p in node.glob("*.next"))
    assert "node.hpke-pq.privatekey.next" in made
    sent = (node / "node.hpke-pq.privatekey.next").read_bytes()
    # Another backend while that move's answer is unknown: refused, naming it, nothing changed.
    other = krs(node, "rekey", "--backend", "jose")
    assert other.returncode == 1 and "a move to hpke-pq was sent" in other.stderr, other.stderr
    assert sorted(p.name for p in node.glob("*.next")) == made
    kdc.start_kdc()
    again = krs(node, "rekey")  # sends the same keys: the move completes
    assert again.returncode == 0 and "rekey switched (hpke-pq)" in again.stdout, again.stderr
    assert node_show(kdc)["backend"] == "hpke-pq"
    assert (node / "node.hpke-pq.privatekey").read_bytes() == sent
    assert (node / "node.hpke.privatekey.previous").read_bytes() == files["node.hpke.privatekey"]
    run_node(kdc, node)
    dist = kdc.distribute("--zone", ZONE, "--node", NEW)
    wait_until(lambda: status_of(kdc, dist) == "confirmed", 90, lambda: kdc.all_logs())
    settled(kdc, node, "hpke-pq")
