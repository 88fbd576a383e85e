"""What 'changes nothing' is checked against in kdc.db tests: every row of every table."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def dump(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, *row) for t in sorted(tables) for row in db.execute(f"SELECT * FROM {t}")]
    finally:
        db.close()
