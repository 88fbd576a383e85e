"""``BaseAdapter.apply_batch`` verifies a large batch in slices (``VERIFY_SLICE`` zones at a
time, so that what a verification holds does not grow with the distribution); all or nothing
still holds across slices: a zone that fails in a later slice rolls back the zones of the
earlier ones, which were written, loaded and verified, and nothing is finished."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dns.name
import pytest

from krs_plugin.adapters import base
from krs_plugin.adapters.base import (
    BaseAdapter,
    InstalledKey,
    KeyPlan,
    PlannedKey,
    Problem,
    Verification,
    ZoneChange,
)
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError

ZONES = [dns.name.from_text(f"z{i}.example.") for i in range(10)]


class MemoryAdapter(BaseAdapter[ZoneChange]):
    """Keys in a dict; ``bad`` zones are not served as planned."""

    name = "memory"

    def configure(self, settings: Mapping[str, Any]) -> None:
        self.served: dict[dns.name.Name, tuple[int, ...]] = {}
        self.bad: set[dns.name.Name] = set()
        self.slices: list[list[dns.name.Name]] = []
        self.finished: list[dns.name.Name] = []
        self.restored: list[dns.name.Name] = []

    def check(self) -> list[Problem]:
        return []

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return []

    def snapshot(self, zone: dns.name.Name) -> str:
        return ",".join(str(t) for t in self.served.get(zone, ()))

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        self.served[zone] = tuple(int(t) for t in snapshot.split(",") if t)
        self.restored.append(zone)
        return "restored"

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> ZoneChange:
        return ZoneChange(zone=zone, plan=plan, now=now)

    def write_key(self, change: ZoneChange, planned: PlannedKey) -> bool:
        self.served[change.zone] = (*self.served.get(change.zone, ()), planned.key.key_tag)
        return True

    def retire_key(self, change: ZoneChange, tag: int) -> bool:
        return False

    def remove_key(self, change: ZoneChange, tag: int) -> bool:
        return False

    def load(self, change: ZoneChange) -> None:
        pass

    def verify(self, change: ZoneChange) -> Verification:
        if change.zone in self.bad:
            return Verification(False, (f"{change.zone}: not served",))
        return Verification(True)

    def verify_batch(self, changes: Sequence[ZoneChange]) -> list[Verification]:
        self.slices.append([change.zone for change in changes])
        return super().verify_batch(changes)

    def finish(self, change: ZoneChange) -> None:
        self.finished.append(change.zone)


@pytest.fixture
def plans() -> list[KeyPlan]:
    timing = KeyTiming(publish=1, activate=1)
    return [KeyPlan(z, (PlannedKey(generate_key(z, 13, 256), "ZSK", timing),)) for z in ZONES]


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "VERIFY_SLICE", 3)


def test_a_batch_is_verified_slice_by_slice(plans: list[KeyPlan]) -> None:
    adapter = MemoryAdapter({}, zones=ZONES)
    results = apply_atomically(adapter, plans)
    assert adapter.slices == [ZONES[0:3], ZONES[3:6], ZONES[6:9], ZONES[9:]]
    assert [r.zone for r in results] == ZONES
    assert all(r.verification.ok and r.changed for r in results)
    assert adapter.finished == ZONES  # only once every slice was verified


def test_a_failure_in_a_later_slice_rolls_back_the_earlier_slices(plans: list[KeyPlan]) -> None:
    adapter = MemoryAdapter({}, zones=ZONES)
    adapter.bad = {ZONES[7]}
    with pytest.raises(AdapterError) as failed:
        apply_atomically(adapter, plans)
    assert adapter.slices == [ZONES[0:3], ZONES[3:6], ZONES[6:9]]  # stopped at the bad slice
    text = str(failed.value)
    assert f"zone {ZONES[7]}" in text and "step 'verify'" in text
    assert "batched with 9 other zone(s)" in text
    assert adapter.restored == ZONES  # every zone written, the earlier slices' too
    assert all(adapter.served[z] == () for z in ZONES)
    assert adapter.finished == []
