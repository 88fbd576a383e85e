"""``BaseAdapter.apply_batch`` with ``verify_while_writing`` (docs/adapters.md, "Many zones at
once"): each slice is loaded on its own and verified in a second thread while the next slices
are written; the results come back in order, nothing is finished before every slice is
verified, and all or nothing still holds: a slice found not served stops the writing and every
zone written, in any slice, is rolled back."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import dns.name
import pytest

from krs_plugin.adapters import base
from krs_plugin.adapters.base import KeyPlan, PlannedKey, Verification, ZoneChange
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from tests.unit.test_apply_batch_slices import ZONES, MemoryAdapter


class BehindAdapter(MemoryAdapter):
    """MemoryAdapter verified behind the writing: notes what was loaded, in which calls, and
    which thread verified each slice."""

    verify_while_writing = True

    def configure(self, settings: object) -> None:  # type: ignore[override]
        super().configure({})
        self.loads: list[list[dns.name.Name]] = []
        self.threads: list[str] = []

    def load_batch(self, changes: Sequence[ZoneChange]) -> None:
        self.loads.append([change.zone for change in changes])
        super().load_batch(changes)

    def verify_batch(self, changes: Sequence[ZoneChange]) -> list[Verification]:
        self.threads.append(threading.current_thread().name)
        return super().verify_batch(changes)


@pytest.fixture
def plans() -> list[KeyPlan]:
    timing = KeyTiming(publish=1, activate=1)
    return [KeyPlan(z, (PlannedKey(generate_key(z, 13, 256), "ZSK", timing),)) for z in ZONES]


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "VERIFY_SLICE", 3)


def test_each_slice_is_loaded_alone_and_verified_in_another_thread(
    plans: list[KeyPlan],
) -> None:
    adapter = BehindAdapter({}, zones=ZONES)
    results = apply_atomically(adapter, plans)
    slices = [ZONES[0:3], ZONES[3:6], ZONES[6:9], ZONES[9:]]
    assert adapter.loads == slices and adapter.slices == slices
    assert all(name.startswith("krs-verify") for name in adapter.threads)
    assert [r.zone for r in results] == ZONES
    assert all(r.verification.ok and r.changed for r in results)
    assert adapter.finished == ZONES  # only once every slice was verified


def test_a_slice_not_served_rolls_back_every_zone_written_in_any_slice(
    plans: list[KeyPlan],
) -> None:
    adapter = BehindAdapter({}, zones=ZONES)
    adapter.bad = {ZONES[1]}
    with pytest.raises(AdapterError) as failed:
        apply_atomically(adapter, plans)
    text = str(failed.value)
    assert f"zone {ZONES[1]}" in text and "step 'verify'" in text and "rolled back" in text
    written = [z for z in ZONES if z in adapter.served]
    assert written[:3] == ZONES[:3] and written == ZONES[: len(written)]
    assert adapter.restored == written  # the later slices written meanwhile too
    assert all(adapter.served[z] == () for z in written)
    assert adapter.finished == []


def test_a_write_failing_while_a_slice_is_verified_rolls_back_every_zone(
    plans: list[KeyPlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = BehindAdapter({}, zones=ZONES)
    real = BehindAdapter.write_key

    def refuse_zone_7(self: BehindAdapter, change: ZoneChange, planned: PlannedKey) -> bool:
        if change.zone == ZONES[7]:
            raise AdapterError("refused (test)")
        return real(self, change, planned)

    monkeypatch.setattr(BehindAdapter, "write_key", refuse_zone_7)
    with pytest.raises(AdapterError) as failed:
        apply_atomically(adapter, plans)
    text = str(failed.value)
    assert f"zone {ZONES[7]}" in text and "write key" in text and "refused (test)" in text
    assert adapter.restored == ZONES[:8]  # the zone that failed mid-write too
    assert ZONES[8] not in adapter.served and adapter.finished == []
