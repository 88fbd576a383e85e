"""docs/kdc.md, "Backup and restore", as an operator runs it: the backup block while another
process writes to the KDC, the restore block into a new state directory, and the restored KDC
carrying on (the same zones, keys and distributions; a distribution that a node opens with the
old KDC's verification key)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.ports import free_port
from krs_plugin.crypto import HpkeKey, load_jose_key, write_hpke_public
from krs_plugin.kdc.store import Store
from krs_plugin.payload import parse_payload
from krs_plugin.protocol import CHUNK_TYPE, parse_chunk_wire
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

DOC = Path(__file__).resolve().parents[2] / "docs" / "kdc.md"
BIN = Path(sys.executable).parent
KDC = str(BIN / "krs-kdc")
CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."
RECIPIENT = "kdc-backup@example.org"


def doc_block(first_line: str) -> str:
    """The ```sh block of "Backup and restore" whose first line starts with ``first_line``."""
    section = DOC.read_text().split("\n## Backup and restore\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n```", 1)[0] for b in section.split("```sh\n")[1:]]
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"docs/kdc.md, Backup and restore: no block {first_line!r}"
    return found[0]


def kdc(state: Path, *args: str) -> object:
    done = subprocess.run(
        [KDC, "--state", str(state), "--json", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


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


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A gpg home with the backup key (both halves: the test is both hosts)."""
    gpg = shutil.which("gpg")
    if gpg is None:
        pytest.fail("gpg is not installed (apt-get install gnupg)")
    home = Path(f"/tmp/krs-gpg-{os.getpid()}-{time.monotonic_ns()}")  # a socket path, keep it short
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            gpg,
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"KDC backup <{RECIPIENT}>",
            "future-default",
            "default",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def run_block(block: str, env: dict[str, str], replace: dict[str, str]) -> None:
    for old, new in replace.items():
        block = block.replace(old, new)
    # root-only steps as no-ops: this test is not root on a host with the krs-kdc user
    prelude = 'set -euo pipefail\nchown() { :; }\nrunuser() { shift 3; "$@"; }\n'
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", prelude + block],
        env={**env, "PATH": f"{BIN}:{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def keys_of(state: Path) -> list[tuple[object, ...]]:
    """Each key as made (its state moves on when distributed)."""
    fields = ("id", "zone", "key_tag", "role", "algorithm", "flags", "created_at")
    rows = kdc(state, "key", "list")
    assert isinstance(rows, list)
    return [tuple(row[f] for f in fields) for row in rows]


def test_backup_taken_as_documented_while_the_kdc_writes_restores_a_working_kdc(
    tmp_path: Path, gnupg: dict[str, str]
) -> None:
    if shutil.which("sqlite3") is None:
        pytest.fail("sqlite3 is not installed (apt-get install sqlite3)")
    live, restored, backups = tmp_path / "live", tmp_path / "restored", tmp_path / "backups"
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    kdc(live, "init", "--control-zone", CZ)
    kdc(live, "zone", "add", ZONE)
    kdc(live, "node", "add", NODE, "--notify", "127.0.0.1:9", "--zone", ZONE,
        "--hpke-pubkey", str(tmp_path / "node.pub"))  # fmt: skip
    kdc(live, "key", "generate", "--zone", ZONE, "--role", "KSK")
    backups.mkdir(mode=0o700)

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
            gnupg,
            {"/var/lib/krs-kdc": str(live), "/var/backups/krs-kdc": str(backups)},
        )
        assert writer.poll() is None, "the KDC stopped writing before the backup was done"
    finally:
        stop.touch()
        rest, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors
    assert "written 4\n" in rest  # it went on writing after the 3rd

    (archive,) = backups.iterdir()  # only the encrypted archive is left
    assert archive.name.startswith("kdc-") and archive.name.endswith(".tar.gpg")
    assert archive.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in archive.read_bytes()

    run_block(
        doc_block("# restore:"),
        gnupg,
        {
            "/var/backups/krs-kdc/kdc-20261205T152000Z.tar.gpg": str(archive),
            "/var/lib/krs-kdc": str(restored),
        },
    )
    assert sorted(p.name for p in restored.iterdir()) == ["kdc.db", "keys"]
    assert (restored / "kdc.db").stat().st_mode & 0o777 == 0o600
    assert (restored / "keys").stat().st_mode & 0o777 == 0o700

    # The restored KDC is the live one as it was at some moment during the backup.
    assert kdc(restored, "zone", "list") == kdc(live, "zone", "list")
    restored_keys, live_keys = keys_of(restored), keys_of(live)
    assert 4 <= len(restored_keys) <= len(live_keys)  # the KSK and ZSKs written before it
    assert restored_keys == live_keys[: len(restored_keys)]
    restored_dists = kdc(restored, "distribution", "list")
    live_dists = kdc(live, "distribution", "list")
    assert isinstance(restored_dists, list) and isinstance(live_dists, list)
    assert restored_dists and all(d in live_dists for d in restored_dists)
    assert (restored / "keys").is_dir()
    for key_file in (live / "keys").iterdir():
        assert (restored / "keys" / key_file.name).read_bytes() == key_file.read_bytes()

    # It distributes the backup's key set, signed as before: the node opens it with the
    # verification key it already has (the live KDC's).
    made = kdc(restored, "distribute", "--zone", ZONE)
    assert isinstance(made, dict)
    dist_id = made["distribution_id"]
    assert all(int(dist_id, 16) > int(d["id"], 16) for d in restored_dists)
    store = Store(restored / "kdc.db")
    wires = [store.record(dist_id, NODE, i) for i in range(64)]
    store.close()
    records = [parse_chunk_wire(w, CHUNK_TYPE) for w in wires if w is not None]
    unpacked = unpack_distribution(
        dist_id,
        records[0],
        records[1:],
        NodeIdentity(dns.name.from_text(NODE), hpke=node),
        load_jose_key(live / "keys" / "kdc.signing.pubkey"),
        now=time.time(),
    )
    sent = {e.key_tag for e in parse_payload(unpacked.plaintext, now=time.time()).entries}  # type: ignore[attr-defined]
    assert sent == {key[2] for key in restored_keys}

    # What was pending at the backup and has outlived its --ttl expires at serve's first round.
    pending = {d["id"] for d in restored_dists if d["status"] == "pending"}
    assert pending
    time.sleep(max(0.0, max(d["expires_at"] for d in restored_dists) + 1 - time.time()))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [KDC, "--state", str(restored), "serve", "--listen", f"127.0.0.1:{free_port()}"],
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 20
        expired: set[str] = set()
        while not pending <= expired and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(0.2)
            rows = kdc(restored, "distribution", "list", "--status", "expired")
            assert isinstance(rows, list)
            expired = {d["id"] for d in rows}
        assert pending <= expired, f"still pending: {sorted(pending - expired)}\n{log.read_text()}"
        assert kdc(restored, "distribution", "show", dist_id)[0]["status"] == "pending"  # type: ignore[index]
    finally:
        serve.terminate()
        serve.wait(timeout=30)
