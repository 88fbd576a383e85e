"""SQLite as both the KDC and the KRS use it: a private file, WAL, explicit transactions."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_private_db(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    """Open (creating it 0600 first: it may hold private keys) a database in WAL mode.

    Autocommit mode: every change goes through ``transaction`` so it is all or nothing.
    ``any_thread`` allows one owner to use the connection from successive worker threads (never
    from two at once); concurrent users open their own connections, which WAL serialises."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=not any_thread)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=10000")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic change: everything inside commits together or not at all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
