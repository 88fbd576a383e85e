"""The KDC store: key lifecycle by timing, distribution ids, atomic refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from krs_plugin.kdc.store import StateError, Store

T = 1_800_000_000


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "kdc.db")
    s.add_zone("example.com.")
    return s


def add(store: Store, tag: int, **timing: int) -> int:
    return store.add_key(
        "example.com.",
        key_tag=tag,
        role="ZSK",
        algorithm=13,
        flags=256,
        private_pem=b"x",
        state="published",
        now=T,
        **timing,
    ).id


def state_of(store: Store, key_id: int) -> str:
    return store.key_by_id(key_id).state


def test_database_file_is_private(tmp_path: Path) -> None:
    Store(tmp_path / "kdc.db").close()
    assert os.stat(tmp_path / "kdc.db").st_mode & 0o777 == 0o600


def test_keys_move_along_their_timing(store: Store) -> None:
    key = add(store, 1, activate_at=T + 10)
    assert store.advance_key_states(now=T) == []
    assert store.advance_key_states(now=T + 10) == [("example.com.", 1, "active")]
    store.db.execute(
        "UPDATE keys SET inactive_at = ?, delete_at = ? WHERE id = ?", (T + 20, T + 30, key)
    )
    store.advance_key_states(now=T + 25)
    assert state_of(store, key) == "retired"
    store.advance_key_states(now=T + 30)
    assert state_of(store, key) == "removed"


def test_distribution_ids_increase_from_the_clock(store: Store) -> None:
    with store.transaction():
        first = store.next_distribution_id(T)
        second = store.next_distribution_id(T)
        third = store.next_distribution_id(T + 100)
    assert first == (f"{T:x}", T)
    assert second[1] == T + 1
    assert third[1] == T + 100


def test_refusals_change_nothing(store: Store) -> None:
    with pytest.raises(StateError, match="already exists"):
        store.add_zone("EXAMPLE.com.")
    with pytest.raises(StateError, match="not found"):
        store.add_node(
            "ns1.example.",
            notify_address="127.0.0.1:1",
            backend="hpke",
            hpke_pubkey="00" * 32,
            jose_pubkey=None,
            signing_pubkey=None,
            zones=["example.com.", "missing.example."],
        )
    assert store.nodes() == []
    with pytest.raises(StateError, match="fully qualified"):
        store.add_zone("relative.example")
    assert store.zones() == ["example.com."]


def test_a_kdc_db_from_before_the_cds_record_is_widened_and_keeps_its_records(
    tmp_path: Path,
) -> None:
    """key_records' CHECK listed four records until issue 23; opening such a kdc.db copies the
    table into one that also takes ``cds``, every row kept."""
    path = tmp_path / "kdc.db"
    old = Store(path)
    old.add_zone("example.com.")
    key = add(old, 7)
    old.db.executescript(
        "DROP TABLE key_records;"
        "CREATE TABLE key_records (key_id INTEGER NOT NULL REFERENCES keys(id), record TEXT NOT "
        "NULL CHECK (record IN ('dnskey', 'krrsig', 'zrrsig', 'ds')), state TEXT NOT NULL, "
        "changed_at INTEGER NOT NULL, PRIMARY KEY (key_id, record));"
        f"INSERT INTO key_records VALUES ({key}, 'dnskey', 'omnipresent', 5);"
    )
    with pytest.raises(Exception, match="CHECK"):
        old.db.execute(f"INSERT INTO key_records VALUES ({key}, 'cds', 'hidden', 5)")
    old.close()
    store = Store(path)
    store.db.execute(f"INSERT INTO key_records VALUES ({key}, 'cds', 'rumoured', 6)")
    rows = store.db.execute("SELECT record, state FROM key_records ORDER BY record").fetchall()
    assert [tuple(r) for r in rows] == [("cds", "rumoured"), ("dnskey", "omnipresent")]
