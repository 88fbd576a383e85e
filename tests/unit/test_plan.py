"""From payload to KeyPlan: tdns semantics when the KDC sends no timing, ours when it does."""

from __future__ import annotations

import time
from pathlib import Path

import dns.name

from krs_plugin.adapters.base import InstalledKey, KeyPlan, PlannedKey
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.payload import Payload, roll_key_entry
from krs_plugin.receiver.plan import build_plans

ZONE = dns.name.from_text("example.com.")
NOW = 1_795_000_000


def test_a_tdns_roll_retires_the_previous_zsk_and_schedules_its_deletion() -> None:
    new = generate_key(ZONE, 13, 256)
    old = InstalledKey(ZONE, 11111, 13, 256, KeyTiming(NOW - 99, NOW - 99, NOW - 99))
    ksk = InstalledKey(ZONE, 22222, 13, 257, KeyTiming(NOW - 99, NOW - 99, NOW - 99))
    payload = Payload((roll_key_entry(new, "ZSK"),))
    (plan,) = build_plans(payload, lambda zone: [old, ksk], now=NOW, retire_after=3600)
    assert [p.key.key_tag for p in plan.install] == [new.key_tag]
    assert plan.install[0].timing == KeyTiming(NOW, NOW, NOW)
    assert plan.retire == (11111,)  # the KSK stays
    assert plan.retire_delete_at == NOW + 3600


def test_keys_with_timing_are_installed_as_sent_and_retire_nothing() -> None:
    key = generate_key(ZONE, 13, 256)
    timing = KeyTiming(publish=NOW, activate=NOW + 3600, inactive=NOW + 86400)
    payload = Payload((roll_key_entry(key, "ZSK", timing=timing),))
    (plan,) = build_plans(payload, lambda zone: [], now=NOW, retire_after=3600)
    assert plan.install[0].timing.activate == NOW + 3600
    assert plan.retire == ()


def test_retiring_writes_the_scheduled_delete_time(tmp_path: Path) -> None:
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    old = generate_key(ZONE, 13, 256)
    now = int(time.time()) - 1
    adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(old, "ZSK", KeyTiming(now, now, now)),)))
    adapter.apply(ZONE, KeyPlan(ZONE, retire=(old.key_tag,), retire_delete_at=now + 3600))
    (installed,) = adapter.current_keys(ZONE)
    assert installed.timing.inactive is not None and installed.timing.inactive >= now
    assert installed.timing.delete == now + 3600


def test_entries_of_interleaved_zones_make_one_plan_per_zone_in_order_of_appearance() -> None:
    a, b = dns.name.from_text("a.example."), dns.name.from_text("b.example.")
    keys = [generate_key(a, 15, 256), generate_key(b, 15, 256), generate_key(a, 15, 257)]
    roles = ("ZSK", "ZSK", "KSK")
    payload = Payload(tuple(roll_key_entry(k, r) for k, r in zip(keys, roles, strict=True)))
    plans = build_plans(payload, lambda zone: [], now=NOW)
    assert [p.zone for p in plans] == [a, b]
    assert [k.key.key_tag for k in plans[0].install] == [keys[0].key_tag, keys[2].key_tag]
    assert [k.key.key_tag for k in plans[1].install] == [keys[1].key_tag]


def test_a_key_sent_again_unchanged_is_not_rewritten(tmp_path: Path) -> None:
    """The KDC sends no Created time; the plan's is the key's own first time, not the apply's
    moment, so the next distribution carrying the same key (every one carries the KSK) finds
    its files as planned and leaves them alone."""
    adapter = DirectoryAdapter({"path": str(tmp_path)})
    ksk = generate_key(ZONE, 13, 257)
    sent = KeyTiming(publish=NOW - 7200, activate=NOW - 3600)
    payload = Payload((roll_key_entry(ksk, "KSK", timing=sent),))
    (first,) = build_plans(payload, lambda zone: [], now=NOW)
    assert first.install[0].timing == KeyTiming(NOW - 7200, NOW - 7200, NOW - 3600)
    assert adapter.apply(ZONE, first).changed
    private = tmp_path / f"{ksk.basename}.private"
    inode = private.stat().st_ino
    (again,) = build_plans(payload, lambda zone: [], now=NOW + 600)  # a later distribution
    assert again.install[0].timing == first.install[0].timing
    result = adapter.apply(ZONE, again)
    assert not result.changed and private.stat().st_ino == inode


def test_a_key_published_later_is_never_created_in_the_future() -> None:
    key = generate_key(ZONE, 13, 256)
    payload = Payload((roll_key_entry(key, "ZSK", timing=KeyTiming(publish=NOW + 86400)),))
    (plan,) = build_plans(payload, lambda zone: [], now=NOW)
    assert plan.install[0].timing.created == NOW
