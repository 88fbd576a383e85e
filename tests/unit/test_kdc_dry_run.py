"""``--dry-run`` on every krs-kdc command that changes kdc.db (docs/kdc.md, "Dry runs"): the
command runs its checks and prints what it would do, and kdc.db is byte for byte what it was,
row by row; a refusal in a dry run is the same refusal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from krs_plugin.crypto import HpkeKey, write_hpke_public
from krs_plugin.kdc.cli import main
from tests.unit.kdcdb import dump

ZONE = "example.com."
NODE = "ns1.edge.example."


@pytest.fixture
def state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    state = tmp_path / "state"
    write_hpke_public(tmp_path / "node.pub", HpkeKey.generate())
    for args in (
        ("init", "--control-zone", "kdc.example."),
        ("zone", "add", ZONE),
        ("key", "generate", "--zone", ZONE, "--role", "KSK"),
        ("key", "generate", "--zone", ZONE, "--role", "ZSK"),
        ("node", "add", NODE, "--notify", "127.0.0.1:9", "--hpke-pubkey",
         str(tmp_path / "node.pub"), "--zone", ZONE),
        ("distribute", "--zone", ZONE),
        ("key", "generate", "--zone", ZONE, "--role", "ZSK", "--activate-after", "1h"),
    ):  # fmt: skip
        assert main(["--state", str(state), *args]) == 0, args
    capsys.readouterr()
    return state


def run(state: Path, *args: str) -> int:
    return main(["--state", str(state), *args])


def tags(state: Path) -> list[int]:
    db = sqlite3.connect(state / "kdc.db")
    try:
        return [r[0] for r in db.execute("SELECT key_tag FROM keys ORDER BY id")]
    finally:
        db.close()


@pytest.mark.parametrize(
    "command",
    [
        ("zone", "add", "example.org."),
        ("key", "generate", "--zone", ZONE, "--role", "ZSK"),
        ("key", "retire", "--zone", ZONE, "--tag", "NEW", "--force"),
        ("key", "remove", "--zone", ZONE, "--tag", "NEW", "--force"),
        ("node", "set", NODE, "--add-zone", "example.net."),
        ("node", "remove", NODE),
        ("distribute", "--zone", ZONE),
        ("policy", "add", "p2"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_dry_run_changes_nothing(
    state: Path, command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    if command[:2] == ("node", "set"):
        assert run(state, "zone", "add", "example.net.") == 0
    new = str(tags(state)[-1])
    args = [new if a == "NEW" else a for a in command]
    before = dump(state / "kdc.db")
    code = run(state, *args, "--dry-run")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dry run: nothing was changed" in err
    assert dump(state / "kdc.db") == before
    assert run(state, *args) == 0  # and for real it does change
    assert dump(state / "kdc.db") != before


def test_a_refusal_in_a_dry_run_is_the_same_refusal(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ksk = str(tags(state)[0])
    before = dump(state / "kdc.db")
    assert run(state, "key", "remove", "--zone", ZONE, "--tag", ksk, "--dry-run") == 2
    err = capsys.readouterr().err
    assert "refused to remove KSK" in err and "dry run: nothing was changed" in err
    assert dump(state / "kdc.db") == before
