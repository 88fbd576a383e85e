"""A knotc event naming many zones is given time in proportion (krs_plugin/adapters/knotctl.py,
ZONES_PER_TIMEOUT): knotd signs every zone before ``knotc -b`` answers, and a 10,000-zone batch
killed after the plain 10 s timeout was rolled back whole (bulk_servers.py, Knot, 10,000 zones).
knotc here is a stand-in script that takes 1.5 s and records its arguments: what is tested is
the wrapper's arithmetic and message, not Knot (tests/adapters/test_bulk.py runs the real one)."""

from __future__ import annotations

from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters.knotctl import ZONES_PER_TIMEOUT, KnotTools
from krs_plugin.errors import AdapterError


def slow_knotc(tmp_path: Path) -> Path:
    script = tmp_path / "knotc"
    script.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/args\nsleep 1.5\necho OK\n')
    script.chmod(0o755)
    return script


def zones(count: int) -> list[dns.name.Name]:
    return [dns.name.from_text(f"z{n}.example.") for n in range(count)]


def tools(tmp_path: Path) -> KnotTools:
    return KnotTools(config=None, socket=None, knotc=str(slow_knotc(tmp_path)), timeout=1)


def test_many_zones_get_more_time_and_knotc_is_told(tmp_path: Path) -> None:
    knot = tools(tmp_path)
    knot._loaded = set()  # as in a batch: every zone never loaded, one zone-reload
    assert knot.load_keys_many(zones(ZONES_PER_TIMEOUT)) == {}
    args = (tmp_path / "args").read_text().split()
    assert args[:4] == ["-t", "2", "-b", "zone-reload"] and len(args) == 4 + ZONES_PER_TIMEOUT


def test_a_few_zones_keep_the_timeout_and_the_error_names_the_count_not_every_zone(
    tmp_path: Path,
) -> None:
    knot = tools(tmp_path)
    knot._loaded = set()
    with pytest.raises(AdapterError) as info:
        knot.load_keys_many(zones(3))
    assert "knotc -b zone-reload (3 zones)" in str(info.value)
    assert "z0.example." not in str(info.value)
