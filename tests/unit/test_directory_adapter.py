"""The directory adapter with thousands of zones in one folder: a zone's files are found without
scanning the folder each time, and changes made by anyone else are still seen."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dns.name
import pytest
from inotify_simple import Event, flags

from krs_plugin.adapters.base import KeyPlan, PlannedKey, ZoneChange
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.adapters.folderindex import FolderIndex
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key, write_bind_key_pair
from krs_plugin.errors import AdapterError

ZONE = dns.name.from_text("example.com.")
NOW = int(time.time()) - 1
TIMING = KeyTiming(NOW, NOW, NOW)


def zone(i: int) -> dns.name.Name:
    return dns.name.from_text(f"z{i:04d}.example.")


def test_finds_each_zones_files_among_thousands_with_one_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2000):
        for suffix in ("key", "private"):
            (tmp_path / f"K{zone(i)}+013+{i:05d}.{suffix}").touch()
    (tmp_path / f".K{zone(7)}+013+00007.private.tmp123").touch()  # a write that was killed
    scans = []
    real_scandir = os.scandir

    def counting_scandir(path: Path) -> object:
        scans.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    index = FolderIndex(tmp_path)
    for i in range(2000):
        assert index.names(zone(i)) == [f"K{zone(i)}+013+{i:05d}.{s}" for s in ("key", "private")]
    assert index.names(zone(7), temporary=True)[0] == f".K{zone(7)}+013+00007.private.tmp123"
    assert index.names(dns.name.from_text("z0007.example.com.")) == []  # no prefix confusion
    assert len(scans) == 1


def test_sees_files_created_renamed_and_removed_by_others(tmp_path: Path) -> None:
    index = FolderIndex(tmp_path)
    assert index.names(ZONE) == []
    (tmp_path / "Kexample.com.+013+00001.private").write_text("x")
    assert index.names(ZONE) == ["Kexample.com.+013+00001.private"]
    os.rename(tmp_path / "Kexample.com.+013+00001.private", tmp_path / "Kexample.com.+013+2.key")
    (tmp_path / "unrelated.txt").touch()
    assert index.names(ZONE) == ["Kexample.com.+013+2.key"]
    (tmp_path / "Kexample.com.+013+2.key").unlink()
    assert index.names(ZONE) == []


def test_follows_a_folder_replaced_under_it(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "Kexample.com.+013+00001.key").touch()
    index = FolderIndex(folder)
    assert index.names(ZONE) == ["Kexample.com.+013+00001.key"]
    folder.rename(tmp_path / "old")
    assert index.names(ZONE) == []
    folder.mkdir()
    (folder / "Kexample.com.+013+00002.key").touch()
    assert index.names(ZONE) == ["Kexample.com.+013+00002.key"]


def test_scans_again_when_the_kernel_dropped_events(tmp_path: Path) -> None:
    index = FolderIndex(tmp_path)
    assert index.names(ZONE) == []
    watcher = index._inotify
    assert watcher is not None
    (tmp_path / "Kexample.com.+013+00001.key").touch()
    # What the kernel reports when its queue overflowed: the events themselves are gone.
    watcher.read = lambda timeout=None: [Event(-1, flags.Q_OVERFLOW, 0, "")]  # type: ignore[method-assign]
    assert index.names(ZONE) == ["Kexample.com.+013+00001.key"]
    assert index._inotify is not watcher


def test_apply_verifies_the_bytes_it_wrote(tmp_path: Path) -> None:
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    key = generate_key(ZONE, 13, 256)
    plan = KeyPlan(ZONE, (PlannedKey(key, "ZSK", TIMING),))
    assert adapter.apply(ZONE, plan).verification.ok
    private = tmp_path / f"{key.basename}.private"
    other = generate_key(ZONE, 13, 256)
    private.write_text(other.to_bind_private(TIMING))  # someone else's key under this name
    verification = adapter.verify(ZoneChange(zone=ZONE, plan=plan, now=0))
    assert not verification.ok
    assert f"key {key.key_tag} is not in" in verification.details[0]


def test_retire_and_remove_touch_only_the_keys_named(tmp_path: Path) -> None:
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    keys = [generate_key(ZONE, 13, 256) for _ in range(3)]
    for key in keys:
        write_bind_key_pair(tmp_path, key, TIMING)
    plan = KeyPlan(ZONE, retire=(keys[1].key_tag,), remove=(keys[0].key_tag,))
    result = adapter.apply(ZONE, plan)
    assert result.removed == (keys[0].key_tag,) and result.retired == (keys[1].key_tag,)
    assert not (tmp_path / f"{keys[0].basename}.private").exists()
    assert not (tmp_path / f"{keys[0].basename}.key").exists()
    timings = {k.key_tag: k.timing for k in adapter.current_keys(ZONE)}
    assert set(timings) == {keys[1].key_tag, keys[2].key_tag}
    assert timings[keys[1].key_tag].inactive is not None
    assert timings[keys[2].key_tag] == TIMING


def test_a_failed_apply_restores_the_zone_and_removes_leftover_temporary_files(
    tmp_path: Path,
) -> None:
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    old = generate_key(ZONE, 13, 256)
    adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(old, "ZSK", TIMING),)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    snapshot = adapter.snapshot(ZONE)
    new = generate_key(ZONE, 13, 256)
    adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(new, "ZSK", TIMING),), remove=(old.key_tag,)))
    (tmp_path / f".{new.basename}.private.abc123").write_text("half")  # a killed write
    adapter.restore(ZONE, snapshot)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_key_that_would_take_another_keys_file_names_is_refused(tmp_path: Path) -> None:
    """Key files are named by zone, algorithm and tag: a second key of a held tag would
    overwrite the held key's files (the same check as BIND's and NSD's: KeyFolder)."""
    by_tag: dict[int, DnssecKey] = {}
    while True:  # about 320 keys until two share a tag
        made = generate_key(ZONE.to_text(), 13, 256)
        held = by_tag.setdefault(made.key_tag, made)
        if held is not made:
            twin = made
            break
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(held, "ZSK", TIMING),)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(AdapterError, match="would overwrite another key of the zone"):
        adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(twin, "ZSK", TIMING),)))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
