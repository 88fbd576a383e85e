"""A PowerDNS batch is verified behind its writing (``verify_while_writing``; docs/adapters.md,
"Many zones at once", docs/servers/powerdns.md, "Many zones in one distribution"), against a
real pdns_server: each slice of zones is written, rectified and its caches purged, then asked
over DNS in a second thread while the next slices are written. Every zone ends up served and
signed with its keys, and a slice found not served stops the writing and every zone written,
in every slice, is rolled back and serves its old (no) keys again. Also: the timing metadata is
one value (one row for gsqlite3 to write)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.name
import pytest

from krs_lab.powerdns import PowerDnsLab
from krs_plugin.adapters import base
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.dnscheck import Expectation
from krs_plugin.adapters.powerdns import PdnsChange, PowerDnsAdapter
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.errors import AdapterError
from tests.adapters.servers import Served
from tests.adapters.test_scenarios import key, now_timing

pytestmark = pytest.mark.integration

ZONES = tuple(f"z{i:02d}.overlap.example." for i in range(12))
SLICE = 3  # four slices
WAIT = 60.0  # seconds a test waits for the first slice's verification to end


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PowerDnsLab]:
    server = PowerDnsLab(tmp_path / "pdns", ZONES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[Future[Any]]:
    """Small slices; the futures of the slices' verifications, in the order submitted."""
    monkeypatch.setattr(base, "VERIFY_SLICE", SLICE)
    submitted: list[Future[Any]] = []

    class Noting(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            future = super().submit(fn, *args, **kwargs)
            submitted.append(future)
            return future

    monkeypatch.setattr(base, "ThreadPoolExecutor", Noting)
    return submitted


def node(lab: PowerDnsLab, verify_timeout: float = 10, method: str = "api") -> PowerDnsAdapter:
    settings = lab.adapter_settings()
    keys = ("api_url", "api_key_file") if method == "api" else ("pdnsutil", "pdns_control")
    return PowerDnsAdapter(
        {
            "method": method,
            **{k: settings[k] for k in keys},
            "server": settings["server"],
            "verify_timeout": verify_timeout,
        },
        zones=[dns.name.from_text(z) for z in ZONES],
    )


def first_keys() -> dict[str, tuple[Any, Any]]:
    return {zone: (key("KSK", zone), key("ZSK", zone)) for zone in ZONES}


def plans(keys: dict[str, tuple[Any, Any]]) -> list[KeyPlan]:
    return [
        KeyPlan(
            dns.name.from_text(zone),
            (PlannedKey(ksk, "KSK", now_timing()), PlannedKey(zsk, "ZSK", now_timing())),
        )
        for zone, (ksk, zsk) in keys.items()
    ]


def load_waiting_for_the_first_look(
    monkeypatch: pytest.MonkeyPatch, looks: list[Future[Any]], zones: set[str]
) -> list[bool]:
    """The load of each zone in ``zones`` waits (up to ``WAIT`` s) until the first slice's
    verification has ended; what each wait saw (True: it had)."""
    real = PowerDnsAdapter.load
    seen: list[bool] = []

    def load(self: PowerDnsAdapter, change: PdnsChange) -> None:
        if change.zone.to_text() in zones:
            deadline = time.monotonic() + WAIT
            while not (looks and looks[0].done()) and time.monotonic() < deadline:
                threading.Event().wait(0.05)
            seen.append(bool(looks and looks[0].done()))
        real(self, change)

    monkeypatch.setattr(PowerDnsAdapter, "load", load)
    return seen


def requests(lab: PowerDnsLab, zone: str) -> list[str]:
    found = re.findall(r'"(GET|PUT|POST|PATCH|DELETE) (/api/v1/\S+)', lab.log())
    return [f"{method} {path}" for method, path in found if f"/zones/{zone}" in path]


def test_slices_are_verified_while_later_zones_are_written_and_every_zone_is_served(
    lab: PowerDnsLab, looks: list[Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = load_waiting_for_the_first_look(monkeypatch, looks, {ZONES[-1]})
    keys = first_keys()
    batch = plans(keys)  # applied twice: their times are part of them
    results = apply_atomically(node(lab), batch)
    # the last zone was loaded only after the first slice had been verified: the verification
    # ran beside the writing (it never ends before the last load when it runs after it)
    assert seen == [True]
    assert len(looks) == len(ZONES) // SLICE
    assert all(r.changed and r.verification.ok for r in results)
    for result, (zone, (ksk, zsk)) in zip(results, keys.items(), strict=True):
        served = Served(lab.host, lab.port, zone)
        assert served.tags == {ksk.key_tag, zsk.key_tag}
        assert ksk.key_tag in served.dnskey_signers and zsk.key_tag in served.soa_signers
        assert result.served is not None  # the verification's own answers, kept
        assert {tag for tag, _, _ in result.served["dnskey"]} == served.tags  # type: ignore[attr-defined]
        assert result.served["soa_signers"] == [zsk.key_tag]
    # one cache flush per slice, each after its zones' rectify
    flushes = [line for line in lab.log().splitlines() if "/cache/flush" in line]
    assert len(flushes) == len(ZONES) // SLICE
    # every key published and active, no CDS marked: the flags say it all, no timing metadata
    # (its one-value form: test_powerdns_fresh.py)
    for zone in ZONES:
        status, reply = lab.api("GET", f"/zones/{zone}/metadata/X-KRS-KEY-TIMING")
        assert status == 200 and reply["metadata"] == []
    # read back from the flags: a second apply of the same plans changes nothing
    again = apply_atomically(node(lab), batch)
    assert not any(r.changed for r in again)


def test_with_pdnsutil_too_every_slice_is_verified_while_the_next_is_written(
    lab: PowerDnsLab, looks: list[Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = load_waiting_for_the_first_look(monkeypatch, looks, {ZONES[-1]})
    keys = first_keys()
    results = apply_atomically(node(lab, method="pdnsutil"), plans(keys))
    assert seen == [True] and len(looks) == len(ZONES) // SLICE
    assert all(r.changed and r.verification.ok for r in results)
    for zone, (ksk, zsk) in keys.items():
        served = Served(lab.host, lab.port, zone)
        assert served.tags == {ksk.key_tag, zsk.key_tag}
        assert ksk.key_tag in served.dnskey_signers and zsk.key_tag in served.soa_signers


def test_a_slice_not_served_stops_the_writing_and_every_zone_is_rolled_back(
    lab: PowerDnsLab, looks: list[Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = dns.name.from_text(ZONES[1])  # in the first slice
    real_expect = PowerDnsAdapter._expect

    def expect_a_key_never_written(
        self: PowerDnsAdapter, zone: dns.name.Name, removed: Any
    ) -> Expectation:
        expect = real_expect(self, zone, removed)
        if zone == bad:  # a DNSKEY pdns_server cannot serve: the verification fails
            return dataclasses.replace(expect, present=expect.present | {65535})
        return expect

    monkeypatch.setattr(PowerDnsAdapter, "_expect", expect_a_key_never_written)
    third = set(ZONES[2 * SLICE : 3 * SLICE])
    seen = load_waiting_for_the_first_look(monkeypatch, looks, third)
    with pytest.raises(AdapterError) as failed:
        apply_atomically(node(lab, verify_timeout=2), plans(first_keys()))
    monkeypatch.undo()
    text = str(failed.value)
    assert f"zone {ZONES[1]}" in text and "step 'verify'" in text and "rolled back" in text
    assert "65535" in text
    assert seen and all(seen)
    # written: the first three slices (the third loaded after the first's verification failed,
    # then the writing stopped); the last slice was never written (its metadata may have been
    # read ahead: pdnsfresh.MetadataAhead)
    for zone in ZONES[: 3 * SLICE]:
        assert [r for r in requests(lab, zone) if not r.startswith("GET ")], zone
    for zone in ZONES[3 * SLICE :]:
        assert [r for r in requests(lab, zone) if not r.startswith("GET ")] == [], zone
    for zone in ZONES:
        assert lab.cryptokeys(zone) == [], zone
        assert Served(lab.host, lab.port, zone).tags == set(), zone
