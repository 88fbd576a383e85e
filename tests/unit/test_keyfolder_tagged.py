"""A key folder's lookups by key tag (``KeyFolder.read_keys(zone, tag)``, which retiring and
deleting use) make paths only of that tag's file names, and still pass a half-written key over:
a ``.private`` without its ``.key`` is not installed, and re-timing it must not complete it
(adapters/keyfiles.py; docs/benchmarks.md, "Fleet")."""

from __future__ import annotations

import time
from pathlib import Path

import dns.name

from krs_plugin.adapters.keyfiles import KeyFolder
from krs_plugin.dnssec import KeyTiming, generate_key

ZONE = dns.name.from_text("example.com.")
NOW = int(time.time()) - 100
TIMING = KeyTiming(NOW, NOW, NOW)


def test_a_half_written_key_is_passed_over_when_looked_up_by_its_tag(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    whole, half = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    assert folder.write_key(whole, TIMING)
    assert folder.write_key(half, TIMING)
    (tmp_path / f"{half.basename}.key").unlink()  # cut short: the .private alone
    private = tmp_path / f"{half.basename}.private"
    left = private.read_text()

    assert [k.key_tag for _, k, _ in folder.read_keys(ZONE, whole.key_tag)] == [whole.key_tag]
    assert folder.read_keys(ZONE, half.key_tag) == []
    assert folder.retime(ZONE, half.key_tag, inactive=NOW + 10) is None
    assert not (tmp_path / f"{half.basename}.key").exists()  # not completed by a re-timing
    assert not folder.delete_key(ZONE, half.key_tag)
    assert private.read_text() == left


def test_a_tag_finds_only_its_own_key(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 257)
    assert folder.write_key(key, TIMING)
    others = {int(str(key.key_tag)[:-1] or 0), key.key_tag + 1, key.key_tag * 10 % 65536}
    for tag in others - {key.key_tag}:  # a prefix of its tag, a neighbour, one with a digit more
        assert folder.read_keys(ZONE, tag) == []
        assert not folder.delete_key(ZONE, tag)
    assert folder.delete_key(ZONE, key.key_tag)
    assert folder.read_keys(ZONE) == []
