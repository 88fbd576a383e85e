"""A key sent again unchanged is found as its files hold it without parsing them again (the
folder's parsed keys, checked against each file's inode, size and mtime), and a key file that
anyone changed since is parsed again and rewritten as planned (adapters/keyfiles.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dns.name

from krs_plugin.adapters.keyfiles import KeyFolder, timing_record
from krs_plugin.dnssec import KeyTiming, generate_key, write_bind_key_pair
from krs_plugin.dnssec.bindfiles import bind_private_text

ZONE = dns.name.from_text("example.com.")
NOW = int(time.time()) - 100
TIMING = KeyTiming(NOW, NOW, NOW)


def test_an_unchanged_key_is_not_rewritten(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 257)
    assert folder.write_key(key, TIMING)
    private = tmp_path / f"{key.basename}.private"
    inode = private.stat().st_ino
    assert not folder.write_key(key, TIMING)
    assert private.stat().st_ino == inode


def test_a_key_file_changed_behind_the_folder_is_rewritten_as_planned(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 257)
    assert folder.write_key(key, TIMING)
    private = tmp_path / f"{key.basename}.private"
    # someone else (an operator, a server) re-times the key in place, keeping size and mtime
    stat = private.stat()
    other = bind_private_text(key, KeyTiming(NOW, NOW, NOW, NOW + 10))
    with private.open("w") as handle:
        handle.write(other)
    os.utime(private, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder.write_key(key, TIMING)  # seen changed (its size), parsed, rewritten
    assert private.read_text() == bind_private_text(key, TIMING)


def test_a_key_replaced_by_another_process_is_compared_again(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 256)
    assert folder.write_key(key, TIMING)
    later = KeyTiming(NOW, NOW, NOW, NOW + 3600)
    write_bind_key_pair(tmp_path, key, later)  # a rename: new inodes
    assert folder.write_key(key, TIMING)
    assert folder.read_keys(ZONE)[0][2] == TIMING


def test_a_timing_record_is_added_when_asked_for_even_when_the_files_hold_the_key(
    tmp_path: Path,
) -> None:
    folder = KeyFolder(tmp_path)
    key = generate_key(ZONE, 13, 256)
    folder.write_key(key, TIMING)
    private = tmp_path / f"{key.basename}.private"
    assert not timing_record(private).exists()
    assert not folder.write_key(key, TIMING, keep_timing=True)  # the files already hold it
    assert timing_record(private).exists()
