"""A damaged state database (issue 20, finding 6): krs.db and kdc.db are checked when they open,
and one that is empty, not a database, has a corrupt page, is not this program's, or has a
write-ahead log damaged after a kill is refused with a clear error naming the file and the way
back; nothing is written to it and nothing is installed. No file at all is a new node or KDC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from krs_lab.ports import free_port
from krs_plugin.config import load_config
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.kdc.store import Store
from krs_plugin.receiver.doctor import check_state
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.sqlitedb import StateDatabaseError, lost_wal_frames

BIN = Path(sys.executable).parent
PAGE = 4096


# --- databases with a history, and the ways they get damaged ----------------------------------


def krs_history(path: Path) -> None:
    store = ReceiverStore(path)
    for i in range(400):
        store.record_outcome(f"{0x6B000000 + i:x}", "kdc.example.", 0x6B000000 + i, "rejected",
                             stage="policy", error=f"refused {i}")  # fmt: skip
    store.record_applied(
        "6c000000", "kdc.example.", 0x6C000000, [("example.com.", 1, 13, 256)], [], {}
    )
    store.close()


def kdc_history(path: Path) -> None:
    store = Store(path)
    for i in range(60):
        zone = store.add_zone(f"zone{i}.example.")
        store.add_key(zone, key_tag=i, role="ZSK", algorithm=13, flags=256,
                      private_pem=os.urandom(200), state="published", now=1.8e9)  # fmt: skip
    store.close()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"\x8f garbage that was never a database " * 300)


def corrupt_page(path: Path) -> None:
    """One page in the middle of the file overwritten with bytes of nothing."""
    pages = path.stat().st_size // PAGE
    assert pages >= 6, pages
    with path.open("r+b") as handle:
        handle.seek((pages // 2) * PAGE)
        handle.write(bytes(range(256)) * (PAGE // 256))


def not_ours(path: Path) -> None:
    path.unlink()
    subprocess.run(
        [sys.executable, "-c", "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute("
         "'CREATE TABLE photos (id INTEGER)').connection.commit()", str(path)],
        check=True,
    )  # fmt: skip


Damage = Callable[[Path], None]
DAMAGE: dict[str, Damage] = {
    "empty": empty,
    "garbage": garbage,
    "corrupt page": corrupt_page,
    "not ours": not_ours,
}
WHAT = {
    "empty": "is empty (0 bytes), not a database",
    "garbage": "is not an SQLite database",
    "corrupt page": "is damaged",
    "not ours": "is not a state database of this program",
}

KILLED_WRITER = """
import os, sys
sys.path[:0] = [{root!r}]
from krs_plugin.{module} import {cls}
store = {cls}(sys.argv[1])
store.db.execute("PRAGMA wal_autocheckpoint=0")
{writes}
os._exit(0)  # killed: no checkpoint, the newest changes live only in the write-ahead log
"""


def killed_after_writing(path: Path, module: str, cls: str, writes: str) -> None:
    """Changes written by a process that is then killed, one of its log's frames damaged."""
    code = KILLED_WRITER.format(
        root=str(Path(__file__).parents[2]), module=module, cls=cls, writes=writes
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    wal = Path(f"{path}-wal")
    frames = (wal.stat().st_size - 32) // (24 + PAGE)
    assert frames >= 4, frames
    with wal.open("r+b") as handle:  # a frame in the middle, its page content
        handle.seek(32 + (frames // 2) * (24 + PAGE) + 24 + 100)
        handle.write(b"\xde\xad\xbe\xef" * 4)


def files_of(path: Path) -> tuple[bytes, bytes]:
    """The database and its write-ahead log (none and empty alike: a reader may make an empty
    one, and the ``-shm`` index, as every SQLite reader does)."""
    wal = Path(f"{path}-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


def key_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout
    )


# --- the KRS: krs.db ----------------------------------------------------------------------------


def krs_node(base: Path) -> Path:
    """A node (directory adapter) whose krs.yaml loads; its state in base/state/krs.db."""
    write_hpke_private(base / "node.key", HpkeKey.generate())
    write_jose_public(base / "kdc.pub", JoseKey.generate().public_only(), use="sig")
    (base / "keys").mkdir(mode=0o700)
    (base / "keys" / "Kexample.com.+013+00001.key").write_text("; an installed key\n")
    (base / "state").mkdir(mode=0o700)
    (base / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": "ns1.edge.example.",
                "keys": {"hpke": "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": "kdc.example.",
                "control_servers": ["127.0.0.1:9"],
                "notify": {"listen": [f"127.0.0.1:{free_port()}"]},
                "adapter": {"type": "directory", "settings": {"path": "keys"}},
                "zones": ["example.com."],
                "state": "state/krs.db",
            }
        )
    )
    return base / "krs.yaml"


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_krs_db_is_refused_by_krs_run_and_krs_doctor(tmp_path: Path, kind: str) -> None:
    config = krs_node(tmp_path)
    state = tmp_path / "state" / "krs.db"
    krs_history(state)
    DAMAGE[kind](state)
    before, keys = files_of(state), key_files(tmp_path / "keys")

    with pytest.raises(StateDatabaseError) as refused:
        ReceiverStore(state)
    assert WHAT[kind] in str(refused.value)
    assert str(refused.value).startswith(f"state database {state} ")
    assert "docs/operations.md, 'A damaged state database'" in str(refused.value)

    result = run("krs", "run", "-c", str(config))  # refused at start, not run on a new state
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"krs: configuration error: state database {state} ")
    assert WHAT[kind] in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1

    check = check_state(load_config(config).state)
    assert [c.status for c in check] == ["error"]
    assert check[0].message.startswith(f"{state} {WHAT[kind]}")
    assert check[0].fix.startswith("restore it")
    assert files_of(state) == before  # nothing written to it
    assert key_files(tmp_path / "keys") == keys  # nothing installed


def test_a_krs_db_whose_log_was_damaged_after_a_kill_is_refused(tmp_path: Path) -> None:
    """SQLite alone would drop every change after the damaged frame, and with them the node's
    memory of the newest distributions: a replay of one would be applied again."""
    state = tmp_path / "krs.db"
    krs_history(state)
    writes = "\n".join(
        f"store.record_applied('6d00000{i}', 'kdc.example.', {0x6D000000 + i}, "
        f"[('example.com.', {i}, 13, 256)], [], {{}})"
        for i in range(8)
    )
    killed_after_writing(state, "receiver.store", "ReceiverStore", writes)
    assert lost_wal_frames(state) > 0
    before = files_of(state)
    with pytest.raises(StateDatabaseError, match=r"has a damaged write-ahead log \(krs.db-wal\)"):
        ReceiverStore(state)
    check = check_state(state)
    assert check[0].status == "error" and "damaged write-ahead log" in check[0].message
    assert files_of(state) == before


def test_a_log_left_by_a_kill_that_is_whole_opens_with_every_change(tmp_path: Path) -> None:
    state = tmp_path / "krs.db"
    krs_history(state)
    code = KILLED_WRITER.format(
        root=str(Path(__file__).parents[2]),
        module="receiver.store",
        cls="ReceiverStore",
        writes="store.record_outcome('6e000000', 'kdc.example.', 1845493760, 'failed')",
    )
    subprocess.run([sys.executable, "-c", code, str(state)], check=True)
    assert lost_wal_frames(state) == 0
    store = ReceiverStore(state)
    assert store.seen("6e000000") is not None
    store.close()


def test_no_krs_db_is_a_new_node_created_whole(tmp_path: Path) -> None:
    state = tmp_path / "krs.db"
    store = ReceiverStore(state)
    assert store.distributions() == [] and store.interrupted() == []
    store.close()
    assert state.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["krs.db"]  # no temporary file left
    ReceiverStore(state).close()  # and it opens again


# --- the KDC: kdc.db ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_kdc_db_is_refused_by_every_krs_kdc_command(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "kdc-state"
    state.mkdir()
    db = state / "kdc.db"
    kdc_history(db)
    DAMAGE[kind](db)
    before = files_of(db)

    with pytest.raises(StateDatabaseError) as refused:
        Store(db)
    assert WHAT[kind] in str(refused.value)
    assert "docs/kdc.md, 'A damaged state database'" in str(refused.value)

    serve = ["serve", "--listen", f"127.0.0.1:{free_port()}"]
    for argv in (serve, ["distribution", "list"], ["key", "list"]):
        result = run("krs-kdc", "--state", str(state), *argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr.startswith(f"krs-kdc: state database {db} "), result.stderr
        assert WHAT[kind] in result.stderr and "Traceback" not in result.stderr
    assert files_of(db) == before


def test_a_kdc_db_whose_log_was_damaged_after_a_kill_is_refused(tmp_path: Path) -> None:
    """The newest key and distribution, only in the log when `krs-kdc serve` was killed, would
    be gone without a word."""
    state = tmp_path / "kdc-state"
    state.mkdir()
    db = state / "kdc.db"
    kdc_history(db)
    writes = "\n".join(
        f"store.add_key('zone1.example.', key_tag={100 + i}, role='ZSK', algorithm=13, "
        f"flags=256, private_pem=os.urandom(3000), state='published', now=1800000000)"
        for i in range(8)
    )
    killed_after_writing(db, "kdc.store", "Store", writes)
    before = files_of(db)
    result = run("krs-kdc", "--state", str(state), "key", "list")
    assert result.returncode == 2, result.stderr
    assert "has a damaged write-ahead log (kdc.db-wal)" in result.stderr
    assert files_of(db) == before


def test_a_second_open_in_one_process_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    # krs run opens its state twice. Checking the file again for the second open (reading it
    # and its -shm and -wal with plain descriptors) dropped the first connection's POSIX locks:
    # another process opening and closing the database then deleted the write-ahead log under
    # it, and everything written after was lost. Found by the NOTIFY flood test.
    path = tmp_path / "krs.db"
    first = ReceiverStore(path)
    second = ReceiverStore(path, any_thread=True)
    peek = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "print(db.execute(sys.argv[2]).fetchone()[0]); db.close()"
    )
    count = "SELECT count(*) FROM sqlite_master"
    subprocess.run([sys.executable, "-c", peek, str(path), count], check=True, capture_output=True)
    assert Path(f"{path}-wal").exists()
    first.db.execute("CREATE TABLE probe (x)")
    seen = subprocess.run(
        [sys.executable, "-c", peek, str(path), f"{count} WHERE name = 'probe'"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert seen.stdout.strip() == "1"
    second.close()
    first.close()
