"""``transaction(durable=False)``: bookkeeping committed without waiting for the disk, and every
other change still synced (docs/kdc.md, "Serve"; docs/benchmarks.md, "Fleet")."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krs_plugin.kdc.store import Store
from krs_plugin.sqlitedb import transaction

FULL = 2


def _wal(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
    return db


def test_an_unsynced_change_is_committed_and_the_next_change_is_synced_again(
    tmp_path: Path,
) -> None:
    db = _wal(tmp_path / "x.db")
    with transaction(db, durable=False):
        db.execute("INSERT INTO t VALUES (1)")
    other = sqlite3.connect(tmp_path / "x.db")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    assert db.execute("PRAGMA synchronous").fetchone()[0] == FULL
    with pytest.raises(ValueError), transaction(db, durable=False):
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError("refused")
    assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 1  # rolled back
    assert db.execute("PRAGMA synchronous").fetchone()[0] == FULL
    assert not db.in_transaction


def test_the_kdc_syncs_a_confirmation_after_recording_a_notify(tmp_path: Path) -> None:
    """``mark_notified`` and ``mark_notify_acked`` skip the fsync; the connection is back at
    FULL after each, so the confirmation the KDC answers NOERROR for is on disk first."""
    store = Store(tmp_path / "kdc.db")
    was = store.db.execute("PRAGMA synchronous").fetchone()[0]
    store.mark_notified("0" * 16, "n1.example.", now=time.time())
    store.mark_notify_acked("0" * 16, "n1.example.", now=time.time())
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == was == FULL


SCRIPT = """
import sqlite3, sys
from krs_plugin.sqlitedb import transaction
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (a INTEGER)")
for i in range(5):
    with transaction(db, durable=sys.argv[2] == "durable"):
        db.execute("INSERT INTO t VALUES (?)", (i,))
"""


def _fsyncs(tmp_path: Path, kind: str) -> int:
    log = tmp_path / f"{kind}.strace"
    subprocess.run(
        ["strace", "-f", "-o", str(log), "-e", "trace=fsync,fdatasync",
         sys.executable, "-c", SCRIPT, str(tmp_path / f"{kind}.db"), kind],
        check=True, timeout=120,
    )  # fmt: skip
    return sum(1 for line in log.read_text().splitlines() if "sync(" in line)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fsyncs")
def test_a_durable_commit_waits_for_the_disk_and_an_unsynced_one_does_not(
    tmp_path: Path,
) -> None:
    durable, unsynced = _fsyncs(tmp_path, "durable"), _fsyncs(tmp_path, "unsynced")
    assert durable - unsynced >= 5, (durable, unsynced)
