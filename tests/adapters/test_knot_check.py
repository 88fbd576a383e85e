"""``check()`` of the Knot adapter against a real knotd: what an operator is told (and what
``krs doctor`` prints) when Knot cannot take pushed keys; and the same refusals at apply time,
before the KASP database is touched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.knot import KnotLab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.knot import KnotAdapter
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError

pytestmark = pytest.mark.integration

ZONES = ("good.example.", "plain.example.", "auto.example.")


@pytest.fixture
def knotd(tmp_path: Path) -> Iterator[KnotLab]:
    lab = KnotLab(
        tmp_path / "knot",
        ZONES,
        unsigned_zones=("plain.example.",),
        automatic_zones=("auto.example.",),
    )
    lab.start(wait_zones=("plain.example.",))
    yield lab
    lab.stop()


def adapter(lab: KnotLab, *zones: str, **changes: object) -> KnotAdapter:
    settings = {**lab.adapter_settings(), **changes}
    return KnotAdapter(settings, zones=[dns.name.from_text(z) for z in zones])


def csk_plan(zone: str) -> KeyPlan:
    now = int(time.time()) - 1
    name = dns.name.from_text(zone)
    csk = generate_key(zone, 13, 257)
    return KeyPlan(name, (PlannedKey(csk, "CSK", KeyTiming(now, now, now)),))


def kasp_keys(lab: KnotLab, zone: str) -> list[object]:
    return list(adapter(lab).tools.keys(dns.name.from_text(zone)))


def test_a_zone_with_a_manual_policy_passes(knotd: KnotLab) -> None:
    assert adapter(knotd, "good.example.").check() == []


def test_signing_off_is_reported_and_refused_before_the_kasp_is_touched(knotd: KnotLab) -> None:
    problems = adapter(knotd, "plain.example.").check()
    assert [p.what for p in problems] == [
        "zone plain.example. has dnssec-signing off, so Knot would not sign with the keys"
    ]
    with pytest.raises(AdapterError, match="dnssec-signing off"):
        adapter(knotd).apply(dns.name.from_text("plain.example."), csk_plan("plain.example."))
    assert kasp_keys(knotd, "plain.example.") == []


def test_a_policy_that_is_not_manual_is_reported(knotd: KnotLab) -> None:
    (problem,) = adapter(knotd, "auto.example.").check()
    assert "policy automatic, which is not manual" in problem.what
    assert "manual: on" in problem.fix
    before = kasp_keys(knotd, "auto.example.")  # the keys Knot made itself
    with pytest.raises(AdapterError, match="not manual"):
        adapter(knotd).apply(dns.name.from_text("auto.example."), csk_plan("auto.example."))
    assert kasp_keys(knotd, "auto.example.") == before


def test_a_zone_knot_does_not_serve_is_reported(knotd: KnotLab) -> None:
    (problem,) = adapter(knotd, "other.example.").check()
    assert "Knot does not serve zone other.example." in problem.what
    assert "no such zone" in problem.what


def test_a_dead_control_socket_is_reported(knotd: KnotLab) -> None:
    knotd.stop()
    (problem,) = adapter(knotd, "good.example.").check()
    assert "control socket does not answer" in problem.what


@pytest.mark.parametrize("tool", ["knotc", "keymgr"])
def test_missing_tools_are_reported(knotd: KnotLab, tool: str) -> None:
    (problem,) = adapter(knotd, "good.example.", **{tool: f"/nonexistent/{tool}"}).check()
    assert problem.what == f"/nonexistent/{tool} not found"
    # keymgr moved from knot to knot-keymgr in Knot 3.5 (Debian testing); knotc stays in knot
    assert "apt-get install knot" in problem.fix
    assert ("knot-keymgr" in problem.fix) == (tool == "keymgr")
