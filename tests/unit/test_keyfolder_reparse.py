"""A key whose files were rewritten (BIND 9.20 rewrites the files of every key it loads) is kept
once, as the object the folder already held, when the files still hold that very key; and a
different key under the same file name is read as itself, never as the key held before
(adapters/keyfiles.py ``_same_key``; docs/benchmarks.md, "BIND 9.20 at 10,000 zones")."""

from __future__ import annotations

import time
from pathlib import Path

import dns.name

from krs_plugin.adapters.keyfiles import KeyFolder
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key, write_bind_key_pair

ZONE = dns.name.from_text("example.com.")
NOW = int(time.time()) - 100
TIMING = KeyTiming(NOW, NOW, NOW)
LATER = KeyTiming(NOW, NOW, NOW, NOW + 3600)


def test_a_key_rewritten_behind_the_folder_is_kept_as_the_object_held(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 257)
    assert folder.write_key(key, TIMING)
    write_bind_key_pair(tmp_path, key, LATER)  # the server's rewrite: new inodes, new timing
    ((_, read, timing),) = folder.read_keys(ZONE)
    assert read is key
    assert timing == LATER


def two_keys_with_one_tag() -> tuple[DnssecKey, DnssecKey]:
    """Two different ZSKs of one zone and algorithm whose key tags are equal (so their files
    have the same names); about 300 keys make a pair, by the birthday bound of 65,536 tags."""
    seen: dict[int, DnssecKey] = {}
    for _ in range(5000):
        key = generate_key(ZONE, 13, 256)
        other = seen.setdefault(key.key_tag, key)
        if other is not key:
            return other, key
    raise AssertionError("no two keys with one tag in 5,000")


def test_another_key_under_the_same_file_name_is_read_as_itself(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    first, second = two_keys_with_one_tag()
    assert first.basename == second.basename and first == second  # equal but for the key
    assert folder.write_key(first, TIMING)
    write_bind_key_pair(tmp_path, second, TIMING)  # replaced behind the folder
    ((_, read, _),) = folder.read_keys(ZONE)
    assert read.key_material == second.key_material != first.key_material
    assert read.dnskey == second.dnskey != first.dnskey
