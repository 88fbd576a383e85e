"""docs/kdc.md, "Backup and restore", as an operator runs it: ``krs-kdc backup`` while ``krs-kdc
serve`` runs and another process writes, ``krs-kdc restore`` into a new state directory, and the
restored KDC carrying on (the same zones, keys and distributions; a distribution that a node
opens with the old KDC's verification key). The backup file holds none of the private keys the
test knows (custody file and pkcs11), and a changed byte, a wrong key, a missing KEK and a
non-empty directory are each refused with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from krs_lab import softhsm
from krs_lab.ports import free_port
from krs_plugin.crypto import HpkeKey, load_hpke_private, load_jose_key, write_hpke_public
from krs_plugin.kdc import backup as bk
from tests.keysearch import assert_no_identity, assert_nowhere, identity_forms, received

DOC = Path(__file__).resolve().parents[2] / "docs" / "kdc.md"
BIN = Path(sys.executable).parent
KDC = str(BIN / "krs-kdc")
CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."
DOC_ARCHIVE = "/var/backups/krs-kdc/kdc-20261205T152000Z-4f1c2a9e0b7d3e51.krsbackup"


def doc_block(first_line: str) -> str:
    """The ```sh block of "Backup and restore" whose first line starts with ``first_line``."""
    section = DOC.read_text().split("\n## Backup and restore\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n```", 1)[0] for b in section.split("```sh\n")[1:]]
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"docs/kdc.md, Backup and restore: no block {first_line!r}"
    return found[0]


def kdc(state: Path, *args: str, env: dict[str, str] | None = None) -> object:
    done = subprocess.run(
        [KDC, "--state", str(state), "--json", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def refused(state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [KDC, "--state", str(state), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


WRITER = """
import contextlib, io, os, sys
from krs_plugin.kdc.cli import main
state, stop = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(stop):
    with contextlib.redirect_stdout(io.StringIO()):
        for args in (("key", "generate", "--zone", "example.com.", "--role", "ZSK"),
                     ("distribute", "--zone", "example.com.", "--ttl", "1")):
            assert main(["--state", state, "--json", *args]) == 0, args
    n += 1
    print("written", n, flush=True)
"""


def run_block(block: str, replace: dict[str, str]) -> None:
    for old, new in replace.items():
        block = block.replace(old, new)
    # root-only steps as no-ops: this test is not root on a host with the krs-kdc user
    prelude = 'set -euo pipefail\nchown() { :; }\nrunuser() { shift 3; "$@"; }\n'
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", prelude + block],
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def keys_of(state: Path, env: dict[str, str] | None = None) -> list[tuple[object, ...]]:
    """Each key as made (its state moves on when distributed)."""
    fields = ("id", "zone", "key_tag", "role", "algorithm", "flags", "created_at")
    rows = kdc(state, "key", "list", env=env)
    assert isinstance(rows, list)
    return [tuple(row[f] for f in fields) for row in rows]


def identity(state: Path) -> dict[str, HpkeKey | object]:
    """The KDC identity private keys that are files in ``state``."""
    keys: dict[str, HpkeKey | object] = {"kdc.hpke": load_hpke_private(state / "keys" /
                                         "kdc.hpke.privatekey")}  # fmt: skip
    keys["kdc.jose"] = load_jose_key(state / "keys" / "kdc.jose.privatekey")
    if (state / "keys" / "kdc.signing.privatekey").exists():
        keys["kdc.signing"] = load_jose_key(state / "keys" / "kdc.signing.privatekey")
    return keys


def make_kdc(tmp_path: Path, state: Path, *init: str, env: dict[str, str] | None = None) -> None:
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    (tmp_path / "node.key").write_text(node.private_hex())
    kdc(state, "init", "--control-zone", CZ, *init, env=env)
    kdc(state, "zone", "add", ZONE, env=env)
    kdc(state, "node", "add", NODE, "--notify", "127.0.0.1:9", "--zone", ZONE,
        "--hpke-pubkey", str(tmp_path / "node.pub"), env=env)  # fmt: skip
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "KSK", env=env)


def node_key(tmp_path: Path) -> HpkeKey:
    return HpkeKey.from_private_hex((tmp_path / "node.key").read_text())


def backup_key(tmp_path: Path, state: Path) -> Path:
    """The backup key pair made "offline" (tmp_path/offline), its public half in the KDC's keys/."""
    offline = tmp_path / "offline"
    offline.mkdir()
    kdc(state, "backup", "key", "generate", "--private", str(offline / "kdc-backup.privatekey"),
        "--public", str(state / "keys" / "backup.pubkey"))  # fmt: skip
    return offline / "kdc-backup.privatekey"


def test_backup_taken_as_documented_while_serve_and_a_writer_run_restores_a_working_kdc(
    tmp_path: Path,
) -> None:
    live, restored, backups = tmp_path / "live", tmp_path / "restored", tmp_path / "backups"
    make_kdc(tmp_path, live)
    private = backup_key(tmp_path, live)
    backups.mkdir(mode=0o700)
    kek_copy = tmp_path / "kek-media" / "kdc.kek"  # the KEK kept apart, as docs/kdc.md says
    kek_copy.parent.mkdir()
    shutil.copy2(live / "keys" / "kdc.kek", kek_copy)

    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [KDC, "--state", str(live), "serve", "--listen", f"127.0.0.1:{free_port()}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(live), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        for n in range(1, 4):  # it has written, and goes on writing
            line = writer.stdout.readline()
            assert line == f"written {n}\n", writer.stderr.read() if writer.stderr else ""
        run_block(
            doc_block("# back up:"),
            {"/var/lib/krs-kdc": str(live), "/var/backups/krs-kdc": str(backups)},
        )
        assert writer.poll() is None, "the KDC stopped writing before the backup was done"
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
    finally:
        stop.touch()
        rest, errors = writer.communicate(timeout=60)
        serve.terminate()
        serve.wait(timeout=30)
        log.close()
    assert writer.returncode == 0, errors
    assert "written 4\n" in rest  # it went on writing after the 3rd

    (archive,) = backups.iterdir()
    assert archive.name.startswith("kdc-") and archive.name.endswith(".krsbackup")
    assert archive.stat().st_mode & 0o777 == 0o600
    raw = archive.read_bytes()
    header, _ = bk.read_header(raw, str(archive))
    assert header["kdc"]["control_zone"] == CZ
    assert (
        header["kdc"]["signing_key"] == load_jose_key(live / "keys/kdc.signing.pubkey").thumbprint
    )
    assert (
        "keys/kdc.kek" not in header["files"] and "keys/kdc.signing.privatekey" in header["files"]
    )

    # None of the private keys the test knows is in the file: every DNSSEC key the KDC holds
    # (as a node receives them), the KDC's identity keys, and the KEK.
    dist = kdc(live, "distribute", "--zone", ZONE)
    assert isinstance(dist, dict)
    dnssec = received(live, NODE, node_key(tmp_path), dist["distribution_id"])
    assert len(dnssec) >= 4  # the KSK and ZSKs written before and during the backup
    assert_nowhere(dnssec, {"backup": raw})
    keys = identity(live)
    assert_no_identity(keys, {"backup": raw})  # type: ignore[arg-type]
    kek = (live / "keys" / "kdc.kek").read_bytes()
    assert kek.strip() not in raw and bytes.fromhex(kek.strip().decode()) not in raw
    # ... while the search does find them where they are: the identity keys inside the opened
    # backup, which is what an unencrypted backup would have shown.
    opened = bk.open_backup(raw, load_hpke_private(private), str(archive))
    inside = {n: d for n, (d, _) in opened.keys.items()}
    for name, key in keys.items():
        assert (
            identity_forms(key)["hex" if name == "kdc.hpke" else "jwk d"]
            in inside[  # type: ignore[arg-type]
                f"{name}.privatekey"
            ]
        )

    run_block(
        doc_block("# restore:"),
        {
            DOC_ARCHIVE: str(archive),
            "/var/lib/krs-kdc": str(restored),
            "/media/kek/kdc.kek": str(kek_copy),
            "/media/backup-key/kdc-backup.privatekey": str(private),
        },
    )
    assert sorted(p.name for p in restored.iterdir()) == ["kdc.db", "keys"]
    assert (restored / "kdc.db").stat().st_mode & 0o777 == 0o600
    assert (restored / "keys").stat().st_mode & 0o777 == 0o700
    for key_file in (live / "keys").iterdir():
        copy = restored / "keys" / key_file.name
        assert copy.read_bytes() == key_file.read_bytes(), key_file.name
        assert copy.stat().st_mode & 0o777 == key_file.stat().st_mode & 0o777, key_file.name

    # The restored KDC is the live one as it was at some moment during the backup, plus the
    # restore's audit entry; its trail verifies.
    assert kdc(restored, "zone", "list") == kdc(live, "zone", "list")
    restored_keys, live_keys = keys_of(restored), keys_of(live)
    assert 4 <= len(restored_keys) <= len(live_keys)
    assert restored_keys == live_keys[: len(restored_keys)]
    restored_dists = kdc(restored, "distribution", "list")
    live_dists = kdc(live, "distribution", "list")
    assert isinstance(restored_dists, list) and isinstance(live_dists, list)
    assert restored_dists and {d["id"] for d in restored_dists} <= {d["id"] for d in live_dists}
    verdict = kdc(restored, "audit", "verify")
    assert isinstance(verdict, dict) and verdict["ok"], verdict
    entries = kdc(restored, "audit", "list")
    assert isinstance(entries, list)
    last = entries[-1]
    assert last["kind"] == "backup.restore", last
    assert last["details"]["message"] == f"restored from backup {header['backup_id']}"
    assert last["details"]["backup_audit_head"] == header["audit_head"]
    assert last["seq"] == int(header["audit_head"].split(":")[0]) + 1

    # It distributes the backup's key set, signed as before: the node opens it with the
    # verification key it already has (the live KDC's, the same key).
    made = kdc(restored, "distribute", "--zone", ZONE)
    assert isinstance(made, dict)
    assert all(int(made["distribution_id"], 16) > int(d["id"], 16) for d in restored_dists)
    sent = received(restored, NODE, node_key(tmp_path), made["distribution_id"])
    assert {k.key_tag for k in sent} == {key[2] for key in restored_keys}


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A KDC (custody file), its backup, and the backup private key."""
    live = tmp_path / "live"
    make_kdc(tmp_path, live)
    private = backup_key(tmp_path, live)
    made = kdc(live, "backup", "--output", str(tmp_path / "kdc.krsbackup"))
    assert isinstance(made, dict) and made["file"] == str(tmp_path / "kdc.krsbackup")
    return live, tmp_path / "kdc.krsbackup", private


def test_a_changed_byte_a_wrong_key_or_a_missing_kek_is_refused_and_nothing_written(
    tmp_path: Path, small: tuple[Path, Path, Path]
) -> None:
    live, archive, private = small
    target = tmp_path / "target"
    raw = archive.read_bytes()
    header, start = bk.read_header(raw, "x")

    # It opens and checks, writing nothing, with this host's KEK or a copy of it.
    checked = kdc(live, "backup", "verify", str(archive), "--key", str(private), "--require-kek")
    assert isinstance(checked, dict) and checked["kek_checked"] and checked["keys_sealed"] == 1
    checked = kdc(target, "restore", str(archive), "--key", str(private), "--check",
                  "--kek-file", str(live / "keys" / "kdc.kek"))  # fmt: skip
    assert isinstance(checked, dict) and checked["backup_id"] == header["backup_id"]
    assert not target.exists()

    # One byte changed: in the header (its time), in the HPKE enc, and in the ciphertext.
    where_time = raw.index(b'"created_at":') + len(b'"created_at":') + 5  # a digit stays one
    for offset, what in ((where_time, "header"), (start + 5, "enc"), (len(raw) - 40, "content")):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x01
        bad = tmp_path / f"damaged-{what}.krsbackup"
        bad.write_bytes(bytes(damaged))
        error = refused(target, "restore", str(bad), "--key", str(private))
        assert "decryption: the file was altered (header or content) or cut short" in error, what
        assert not target.exists(), what
        error = refused(live, "backup", "verify", str(bad), "--key", str(private))
        assert "altered" in error, what
    cut = tmp_path / "cut.krsbackup"
    cut.write_bytes(raw[:-1])
    assert "altered" in refused(target, "restore", str(cut), "--key", str(private))
    assert not target.exists()

    # A backup of another KDC than the one whose signing key the nodes hold.
    kdc(tmp_path / "another", "init", "--control-zone", CZ)
    theirs = tmp_path / "another" / "keys" / "kdc.signing.pubkey"
    error = refused(target, "restore", str(archive), "--key", str(private), "--signing-key",
                    str(theirs), "--kek-file", str(live / "keys" / "kdc.kek"))  # fmt: skip
    assert "identity: its KDC signing key is" in error and "a backup of another KDC" in error
    assert not target.exists()
    ours = live / "keys" / "kdc.signing.pubkey"
    kdc(target, "restore", str(archive), "--key", str(private), "--signing-key", str(ours),
        "--kek-file", str(live / "keys" / "kdc.kek"), "--check")  # fmt: skip
    assert not target.exists()

    # Another backup key.
    other = tmp_path / "other.privatekey"
    kdc(live, "backup", "key", "generate", "--private", str(other), "--public",
        str(tmp_path / "other.pubkey"))  # fmt: skip
    error = refused(target, "restore", str(archive), "--key", str(other))
    assert f"sealed to backup key {header['recipient'][:16]}, not to this one" in error
    assert not target.exists()

    # The new host lacks the KEK: named, nothing written (nor a staging directory left).
    error = refused(target, "restore", str(archive), "--key", str(private))
    assert "cannot read the key-encryption key" in error and "nothing was restored" in error
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # ... or has another KDC's KEK.
    (target / "keys").mkdir(parents=True)
    (target / "keys" / "kdc.kek").write_text(os.urandom(32).hex() + "\n")
    (target / "keys" / "kdc.kek").chmod(0o600)
    error = refused(target, "restore", str(archive), "--key", str(private))
    assert "is not the one kdc.db's keys are sealed with" in error, error
    assert sorted(p.name for p in target.rglob("*")) == ["kdc.kek", "keys"]

    # The KEK from the systemd credential (as the unit gives it), or a copy with --kek-file,
    # which restore puts in place as keys/kdc.kek.
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    shutil.copy2(live / "keys" / "kdc.kek", credentials / "kdc-kek")
    with_credential = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    checked = kdc(tmp_path / "by-credential", "restore", str(archive), "--key", str(private),
                  "--check", env=with_credential)  # fmt: skip
    assert isinstance(checked, dict) and checked["kek"] == "systemd credential kdc-kek"
    copied = tmp_path / "by-copy"
    kdc(copied, "restore", str(archive), "--key", str(private), "--kek-file",
        str(credentials / "kdc-kek"))  # fmt: skip
    assert (copied / "keys" / "kdc.kek").read_bytes() == (live / "keys" / "kdc.kek").read_bytes()
    assert (copied / "keys" / "kdc.kek").stat().st_mode & 0o777 == 0o600
    assert kdc(copied, "custody", "status")["ok"]  # type: ignore[index]

    # A KDC directory is not replaced without --force.
    error = refused(live, "restore", str(archive), "--key", str(private))
    assert f"restore: {live} is not empty (kdc.db" in error and "--force" in error
    assert kdc(live, "audit", "list")[-1]["kind"] != "backup.restore"  # type: ignore[index]
    # With --force it is, keeping its KEK.
    kdc(live, "key", "generate", "--zone", ZONE, "--role", "ZSK")
    assert len(keys_of(live)) == 2
    kdc(live, "restore", str(archive), "--key", str(private), "--force")
    assert len(keys_of(live)) == 1
    assert kdc(live, "audit", "list")[-1]["kind"] == "backup.restore"  # type: ignore[index]
    assert kdc(live, "audit", "verify")["ok"]  # type: ignore[index]


@pytest.mark.skipif(softhsm.available() is not None, reason=str(softhsm.available()))
def test_a_backup_with_the_keys_in_softhsm_holds_none_and_restores_with_the_token(
    tmp_path: Path,
) -> None:
    hsm = softhsm.SoftHsm(tmp_path / "softhsm")
    env = hsm.env
    live, restored = tmp_path / "live", tmp_path / "restored"
    token = ["--pkcs11-module", hsm.module, "--token", hsm.label, "--pin-file", str(hsm.pin_file)]
    make_kdc(tmp_path, live, "--custody", "pkcs11", *token, env=env)
    kdc(live, "key", "generate", "--zone", ZONE, "--role", "ZSK", env=env)
    private = backup_key(tmp_path, live)
    no_token = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "KRS_KDC_PIN")}
    made = kdc(live, "backup", "--output", str(tmp_path), env=no_token)  # the token not needed
    assert isinstance(made, dict)
    archive = Path(made["file"])
    raw = archive.read_bytes()
    assert made["custody"]["kind"] == "pkcs11"
    assert "keys/kdc.signing.privatekey" not in made["files"]

    dist = kdc(live, "distribute", "--zone", ZONE, env=env)
    assert isinstance(dist, dict)
    dnssec = received(live, NODE, node_key(tmp_path), dist["distribution_id"])
    assert len(dnssec) == 2
    assert_nowhere(dnssec, {"backup": raw})
    keys = identity(live)
    assert set(keys) == {"kdc.hpke", "kdc.jose"}  # the signing key is the token's
    assert_no_identity(keys, {"backup": raw})  # type: ignore[arg-type]

    # Without the token's PIN the KEK cannot be checked: refused, nothing written.
    no_pin = {**env, "KRS_KDC_PIN": "0000"}
    error = refused(restored, "restore", str(archive), "--key", str(private), env=no_pin)
    assert "custody" in error and "nothing was restored" in error, error
    assert not restored.exists()

    # With the token: restored, and it distributes the same keys, signed by the token.
    kdc(restored, "restore", str(archive), "--key", str(private), env=env)
    assert keys_of(restored, env) == keys_of(live, env)
    status = kdc(restored, "custody", "status", env=env)
    assert isinstance(status, dict) and status["ok"] and status["keys_sealed"] == 2
    made2 = kdc(restored, "distribute", "--zone", ZONE, env=env)
    assert isinstance(made2, dict)
    sent = received(restored, NODE, node_key(tmp_path), made2["distribution_id"])
    assert {k.key_tag for k in sent} == {k.key_tag for k in dnssec}
    assert kdc(restored, "audit", "verify", env=env)["ok"]  # type: ignore[index]


def test_a_kdc_whose_audit_trail_does_not_verify_is_not_backed_up(
    tmp_path: Path, small: tuple[Path, Path, Path]
) -> None:
    live, _, _ = small
    db = sqlite3.connect(live / "kdc.db")
    with db:  # as someone with write access to kdc.db would: the guards dropped first
        triggers = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"
        for (name,) in db.execute(triggers).fetchall():
            db.execute(f"DROP TRIGGER {name}")
        db.execute("UPDATE audit SET details = '{}' WHERE seq = 2")
    db.close()
    error = refused(live, "backup", "--output", str(tmp_path / "out"))
    assert "audit trail in the snapshot" in error and "does not verify" in error, error
    assert "no backup written" in error
    assert not (tmp_path / "out").exists()
