"""The audit trail through the real krs-kdc: a KDC driven by its commands leaves a chain that
`audit verify` passes, and that it fails, naming the entry and why, once one entry is changed,
removed, swapped, forged with the chain recomputed, or the tail cut (against the noted head);
an evidence pack for one zone verifies offline with the documented command, shows no other
zone, and fails once altered; no private key is in any entry or pack."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from krs_plugin.crypto import HpkeKey, write_hpke_public
from krs_plugin.kdc import audit

KDC = str(Path(sys.executable).parent / "krs-kdc")
CZ, ZONE, OTHER, NODE = "kdc.example.", "example.com.", "other.net.", "ns1.edge.example."


def run(
    state: Path | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KRS_KDC_STATE"}
    prefix = ["--state", str(state)] if state is not None else []
    return subprocess.run([KDC, *prefix, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)  # fmt: skip


def kdc(state: Path, *args: str) -> dict | list:  # type: ignore[type-arg]
    result = run(state, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


def verify(state: Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = run(state, "--json", "audit", "verify", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KDC after init, two zones, a node, keys, distributions, a retire and a dry run."""
    root = tmp_path_factory.mktemp("audit")
    write_hpke_public(root / "node.pub", HpkeKey.generate())
    st = root / "state"
    kdc(st, "init", "--control-zone", CZ)
    kdc(st, "zone", "add", ZONE)
    kdc(st, "zone", "add", OTHER)
    kdc(st, "node", "add", NODE, "--notify", "127.0.0.1:9", "--hpke-pubkey",
        str(root / "node.pub"), "--zone", ZONE, "--zone", OTHER)  # fmt: skip
    kdc(st, "key", "generate", "--zone", ZONE, "--role", "KSK")
    old = kdc(st, "key", "generate", "--zone", ZONE, "--role", "ZSK")
    kdc(st, "key", "generate", "--zone", ZONE, "--role", "ZSK")
    kdc(st, "key", "generate", "--zone", OTHER, "--role", "CSK")
    kdc(st, "distribute", "--zone", ZONE)
    kdc(st, "distribute", "--all-zones", "--node", NODE)
    kdc(st, "key", "retire", "--zone", ZONE, "--tag", str(old["key_tag"]))  # type: ignore[call-overload]
    kdc(st, "distribute", "--zone", ZONE)
    kdc(st, "zone", "add", "dry.example.", "--dry-run")
    assert run(st, "zone", "add", ZONE).returncode == 2  # refused: changes nothing
    return st


def copy_of(driven: Path, tmp_path: Path) -> Path:
    st = tmp_path / "state"
    shutil.copytree(driven, st)
    return st


def tamper(state: Path, *statements: str) -> None:
    """As an attacker with write access to kdc.db: the triggers dropped first."""
    db = sqlite3.connect(state / "kdc.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def entries(state: Path) -> list[dict]:  # type: ignore[type-arg]
    return kdc(state, "audit", "list")  # type: ignore[return-value]


def test_the_commands_leave_a_chain_that_verifies(driven: Path) -> None:
    kinds = [e["kind"] for e in entries(driven)]
    assert kinds[:2] == ["audit.key", "command"]
    for kind in ("zone.add", "node.add", "key.generate", "distribution.create", "key.state"):
        assert kind in kinds
    commands = [e["details"]["command"] for e in entries(driven) if e["kind"] == "command"]
    assert commands == ["init", "zone add", "zone add", "node add", "key generate",
                        "key generate", "key generate", "key generate", "distribute",
                        "distribute", "key retire", "distribute"]  # fmt: skip
    assert all(e["actor"].startswith("operator ") for e in entries(driven))
    assert not [e for e in entries(driven) if e["zone"] == "dry.example."]  # the dry run
    code, out = verify(driven)
    assert code == 0 and out["ok"] and out["head"]["seq"] == len(kinds)
    text = run(driven, "audit", "verify").stdout
    assert f"head {out['head']['seq']}:{out['head']['hash']}" in text


def test_a_changed_entry_is_found(driven: Path, tmp_path: Path) -> None:
    st = copy_of(driven, tmp_path)
    seq = next(e["seq"] for e in entries(st) if e["kind"] == "key.generate")
    tamper(st, f"UPDATE audit SET details = replace(details, 'KSK', 'ZSK') WHERE seq = {seq}")
    code, out = verify(st)
    assert code == 1 and out["broken"]["seq"] == seq and out["broken"]["reason"] == "changed"
    assert "BROKEN at entry" in run(st, "audit", "verify").stdout


def test_a_deleted_entry_is_found(driven: Path, tmp_path: Path) -> None:
    st = copy_of(driven, tmp_path)
    tamper(st, "DELETE FROM audit WHERE seq = 6")
    code, out = verify(st)
    assert code == 1 and out["broken"] == {"seq": 6, "reason": "removed",
                                           "detail": out["broken"]["detail"]}  # fmt: skip


def test_two_swapped_entries_are_found(driven: Path, tmp_path: Path) -> None:
    st = copy_of(driven, tmp_path)
    tamper(st, "UPDATE audit SET seq = -1 WHERE seq = 8",
           "UPDATE audit SET seq = 8 WHERE seq = 9",
           "UPDATE audit SET seq = 9 WHERE seq = -1")  # fmt: skip
    code, out = verify(st)
    assert code == 1 and out["broken"]["seq"] == 8 and out["broken"]["reason"] == "out-of-order"


def test_a_truncated_tail_is_found_against_the_noted_head(driven: Path, tmp_path: Path) -> None:
    st = copy_of(driven, tmp_path)
    _, out = verify(st)
    noted = f"{out['head']['seq']}:{out['head']['hash']}"
    assert verify(st, "--expect-head", noted)[0] == 0
    tamper(st, f"DELETE FROM audit WHERE seq > {out['head']['seq'] - 3}")
    assert verify(st)[0] == 0  # a cut tail: only the noted head tells
    code, cut = verify(st, "--expect-head", noted)
    assert code == 1 and cut["broken"]["reason"] == "truncated"
    assert cut["broken"]["seq"] == out["head"]["seq"] - 2


def test_content_forged_with_the_chain_recomputed_fails_on_the_signature(
    driven: Path, tmp_path: Path
) -> None:
    """Without the signing key an attacker can make every digest and hash right again, but no
    signature: this is what the signatures are for."""
    st = copy_of(driven, tmp_path)
    db = sqlite3.connect(st / "kdc.db")
    db.row_factory = sqlite3.Row
    chain = [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY seq")]
    db.close()
    target = next(e for e in chain if e["kind"] == "key.state")
    details = json.loads(target["details"])
    details["to"] = "active"
    target["details"] = audit.canonical_json(details)
    statements, prev = [], None
    for item in chain[target["seq"] - 1 :]:
        prev = prev or item["prev"]
        item["digest"] = audit.content_digest({**item, "details": json.loads(item["details"])})
        item["prev"], item["hash"] = prev, audit.chain_hash(prev, item["digest"], item["seq"])
        prev = item["hash"]
        statements.append(
            f"UPDATE audit SET details = '{item['details']}', digest = '{item['digest']}', "
            f"prev = '{item['prev']}', hash = '{item['hash']}' WHERE seq = {item['seq']}"
        )
    tamper(st, *statements)
    code, out = verify(st)
    assert code == 1 and out["broken"]["seq"] == target["seq"]
    assert out["broken"]["reason"] == "signature"


def test_a_zone_pack_verifies_offline_shows_no_other_zone_and_fails_altered(
    driven: Path, tmp_path: Path
) -> None:
    pack = tmp_path / "example.com.pack.json"
    result = run(driven, "audit", "export", "--zone", ZONE, "--since", "1d", "--output", str(pack))
    assert result.returncode == 0, result.stderr
    assert "krs-kdc audit verify --pack" in result.stdout
    text = pack.read_text()
    assert OTHER not in text and ZONE in text
    # the auditor: a clean directory, the pack and the KDC's public key, no state
    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(pack, auditor / "pack.json")
    shutil.copy(driven / "keys" / "kdc.signing.pubkey", auditor / "kdc.signing.pubkey")
    offline = run(None, "audit", "verify", "--pack", "pack.json", "--key", "kdc.signing.pubkey",
                  cwd=auditor)  # fmt: skip
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "chain and signatures verified" in offline.stdout
    assert not (auditor / "kdc-state").exists()

    data = json.loads(text)
    whole = next(e for e in data["entries"] if e.get("kind") == "key.generate")
    whole["details"]["algorithm"] = 8
    (auditor / "altered.json").write_text(json.dumps(data))
    altered = run(None, "--json", "audit", "verify", "--pack", "altered.json", "--key",
                  "kdc.signing.pubkey", cwd=auditor)  # fmt: skip
    assert altered.returncode == 1
    assert json.loads(altered.stdout)["broken"]["seq"] == whole["seq"]
    # another key than the KDC's: nothing verifies
    other = run(None, "audit", "verify", "--pack", "pack.json", "--key",
                str(driven / "keys" / "kdc.jose.pubkey"), cwd=auditor)  # fmt: skip
    assert other.returncode == 1 and "signature" in other.stdout


def test_no_private_key_bytes_in_the_audit_rows_or_a_pack(driven: Path, tmp_path: Path) -> None:
    secrets: list[bytes] = []
    db = sqlite3.connect(driven / "kdc.db")
    for (pem,) in db.execute("SELECT private_pem FROM keys"):
        pem = bytes(pem)
        if not pem:  # sealed under a KEK (custody): nothing in the clear to look for here
            continue
        body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
        der = base64.b64decode(body)
        secrets += [pem, body, der, der.hex().encode()]
        private = serialization.load_der_private_key(der, password=None)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            scalar = private.private_numbers().private_value.to_bytes(32, "big")
            secrets += [scalar, scalar.hex().encode(),
                        base64.urlsafe_b64encode(scalar).rstrip(b"=")]  # fmt: skip
    rows = db.execute("SELECT * FROM audit").fetchall()
    db.close()
    for name in ("kdc.signing.privatekey", "kdc.jose.privatekey", "kdc.hpke.privatekey"):
        path = driven / "keys" / name
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            line = line.strip()
            if line.startswith(b'"d"') or (len(line) == 64 and not line.startswith(b"#")):
                secrets.append(line.split(b'"')[-2] if b'"' in line else line)
    assert secrets
    pack = tmp_path / "all.json"
    assert run(driven, "audit", "export", "--output", str(pack)).returncode == 0
    dump = b"\n".join(b"|".join(str(v).encode() for v in row) for row in rows)
    dump += pack.read_bytes()
    for secret in secrets:
        assert secret not in dump
    assert b"PRIVATE KEY" not in dump


def test_list_takes_zone_and_since(driven: Path) -> None:
    mine = kdc(driven, "audit", "list", "--zone", ZONE)
    assert mine and all(e["zone"] == ZONE for e in mine)  # type: ignore[index]
    assert kdc(driven, "audit", "list", "--since", "2099-01-01") == []
    text = run(driven, "audit", "list", "--zone", OTHER).stdout
    assert "key.generate" in text and "ago)" in text
    bad = run(driven, "audit", "list", "--since", "soon")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
