"""A nameserver that is down, seen by the adapter (issue 21, item 6): ``server_problem()`` says
so for /healthz, and Knot's rollback with knotd stopped says where the previous keys are rather
than reading like a loss."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters.base import KeyPlan, PlannedKey, ReportsServerProblem
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import ZONES, KnotServerLab, NsdServerLab, ServerLab

pytestmark = pytest.mark.integration

ZONE = ZONES[0]
NAME = dns.name.from_text(ZONE)


def test_server_problem_is_none_while_the_server_runs_and_names_it_once_stopped(
    lab: ServerLab,
) -> None:
    adapter = lab.adapter()
    assert isinstance(adapter, ReportsServerProblem)
    assert adapter.server_problem() is None
    lab.stop()
    problem = adapter.server_problem()
    assert problem, "a stopped server must be reported"
    lab.start()
    assert adapter.server_problem() is None


def keys(ksk_too: bool) -> KeyPlan:
    now = int(time.time()) - 1
    timing = KeyTiming(created=now, publish=now, activate=now)
    planned = [PlannedKey(generate_key(ZONE, 13, 256), "ZSK", timing)]
    if ksk_too:
        planned.append(PlannedKey(generate_key(ZONE, 13, 257), "KSK", timing))
    return KeyPlan(NAME, tuple(planned))


@pytest.fixture
def knot() -> Iterator[KnotServerLab]:
    root = Path(tempfile.mkdtemp(prefix="krs-knot-"))
    os.chmod(root, 0o755)
    lab = KnotServerLab(root / "server")
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_knot_rollback_with_knotd_stopped_says_the_previous_keys_are_in_the_kasp_database(
    knot: KnotServerLab,
) -> None:
    # What crash recovery meets when knotd is down at the KRS's start: the journal's snapshot
    # is put back with keymgr (no knotd needed), only knotc cannot make knotd load it.
    lab = knot
    adapter = lab.adapter()
    apply_atomically(adapter, [keys(ksk_too=True)])
    before = lab.stored_tags()
    snapshot = adapter.snapshot(NAME)
    apply_atomically(adapter, [keys(ksk_too=False)])
    assert lab.stored_tags() != before
    lab.stop()
    said = adapter.restore(NAME, snapshot)  # no AdapterError: the keys themselves are back
    assert said.startswith("the previous keys are back in Knot's KASP database"), said
    assert "nothing is lost" in said and "serves them once it runs again" in said
    assert lab.stored_tags() == before


@pytest.fixture
def nsd() -> Iterator[NsdServerLab]:
    root = Path(tempfile.mkdtemp(prefix="krs-nsd-"))
    os.chmod(root, 0o755)
    lab = NsdServerLab(root / "server")
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_nsd_rollback_with_nsd_stopped_says_the_previous_keys_and_signed_file_are_in_place(
    nsd: NsdServerLab,
) -> None:
    adapter = nsd.adapter()
    apply_atomically(adapter, [keys(ksk_too=True)])
    before = nsd.stored_tags()
    snapshot = adapter.snapshot(NAME)
    apply_atomically(adapter, [keys(ksk_too=False)])
    assert nsd.stored_tags() != before
    nsd.stop()
    said = adapter.restore(NAME, snapshot)  # no AdapterError: the keys themselves are back
    assert "NSD could not be told to reload it (nothing is lost" in said, said
    assert nsd.stored_tags() == before
