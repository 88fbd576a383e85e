"""named's key directory full (issue 20, finding 4), against a real named whose key-directory is
a tmpfs of a few pages: the apply fails at ``apply`` and rolls back, named serves the old keys,
nothing half written is left or blocks the next apply, which succeeds once space is freed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.dnssec.bindfiles import bind_private_text
from krs_plugin.errors import AdapterError
from tests.adapters.servers import Served, bind9_root
from tests.fsutil import FullDisk, full_disk

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


@pytest.fixture(params=["bind9.18", "bind9.20"])
def named_on_small_disk(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Bind9Lab, FullDisk]]:
    policy = request.param == "bind9.20"
    lab = Bind9Lab(tmp_path / "named", [ZONE], sysroot=bind9_root(policy=policy))
    with full_disk(lab.key_directory, size=128 * 1024) as disk:
        lab.start()
        try:
            yield lab, disk
        finally:
            lab.stop()


def key_files(lab: Bind9Lab, disk: FullDisk) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in lab.key_directory.iterdir() if p != disk.filler}


@pytest.mark.parametrize("free_pages", [1, 0])
def test_a_full_key_directory_fails_at_apply_and_named_keeps_the_old_keys(
    named_on_small_disk: tuple[Bind9Lab, FullDisk], free_pages: int
) -> None:
    lab, disk = named_on_small_disk
    adapter = Bind9Adapter({**lab.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    ksk, zsk, newer = (generate_key(ZONE, 13, f) for f in (257, 256, 256))
    apply_atomically(
        adapter,
        [KeyPlan(NAME, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))],
    )
    before = key_files(lab, disk)

    disk.fill(free_pages)
    roll = [KeyPlan(NAME, (PlannedKey(newer, "ZSK", timing),), (zsk.key_tag,))]
    with pytest.raises(AdapterError, match="disk full") as failed:
        apply_atomically(adapter, roll)
    assert failed.value.stage == "apply"
    assert "rollback failed" not in str(failed.value)
    assert key_files(lab, disk) == before  # no .private without its .key, no temporary file
    assert {k.key_tag for k in adapter.current_keys(NAME)} == {ksk.key_tag, zsk.key_tag}
    served = Served(lab.host, lab.port, ZONE)
    assert served.tags == {ksk.key_tag, zsk.key_tag} and served.soa_signers == {zsk.key_tag}

    disk.free()
    apply_atomically(adapter, roll)
    served = Served(lab.host, lab.port, ZONE)
    assert newer.key_tag in served.tags and served.soa_signers == {newer.key_tag}


def test_an_orphan_private_file_neither_blocks_named_nor_the_next_apply(
    named_on_small_disk: tuple[Bind9Lab, FullDisk],
) -> None:
    """What a kill between a key's two files leaves: the zone's keys still read, the next apply
    succeeds and removes it."""
    lab, _ = named_on_small_disk
    adapter = Bind9Adapter({**lab.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    ksk, zsk, orphan = (generate_key(ZONE, 13, f) for f in (257, 256, 256))
    orphan_file = lab.key_directory / f"{orphan.basename}.private"
    orphan_file.write_text(bind_private_text(orphan, timing))
    orphan_file.chmod(0o600)
    assert adapter.current_keys(NAME) == []
    apply_atomically(
        adapter,
        [KeyPlan(NAME, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))],
    )
    assert not orphan_file.exists()
    assert Served(lab.host, lab.port, ZONE).tags == {ksk.key_tag, zsk.key_tag}
