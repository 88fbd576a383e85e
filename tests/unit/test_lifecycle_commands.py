"""The operator's commands of the lifecycle engine (docs/lifecycle.md, "What the operator sees"):
status, plan, rollover, ds seen|gone, history, node evict, each with --dry-run where it changes
state, run as ``krs-kdc`` runs them on a kdc.db the engine drove (the fleet of
tests/unit/test_lifecycle_engine.py: real sealed distributions, the nodes' confirmations recorded
as the KDC records them)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from krs_plugin.kdc.cli import main
from krs_plugin.kdc.enginestate import EngineState
from tests.unit.kdcdb import dump
from tests.unit.test_lifecycle_engine import NODES, ZONE, Fleet, fleet, signed

__all__ = ["fleet"]  # the fixture, imported for pytest


def kdc(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--state", str(state), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def state(fleet: Fleet) -> Path:
    return fleet.store.path.parent


def test_status_says_where_each_zone_stands(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = kdc(capsys, state, "status")
    assert code == 0 and f"{ZONE} (policy fast): no keys" in out
    signed(fleet)
    code, out, _ = kdc(capsys, state, "status")
    assert code == 0 and f"{ZONE} (policy fast): idle" in out
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[1]}
    fleet.run(3)
    code, out, _ = kdc(capsys, state, "status", "--json")
    (view,) = json.loads(out)["zones"]
    assert view["phase"] == "ZSK rollover" and view["waits_for"] == "nodes"
    assert view["step"] == "1 of 3: publish the new ZSK"
    assert list(view["lagging"]) == [NODES[1]]
    code, out, _ = kdc(capsys, state, "status")
    assert f"{NODES[1]}: has not confirmed this step yet" in out


def test_status_names_a_node_that_could_not_apply_the_step_with_its_error(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/lifecycle.md, "When a step is stuck": a node whose adapter refused the step (its
    report ``failed``) is named with the error it reported, not as one that did not answer."""
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[1]}
    fleet.run(2)
    (refused,) = [d for d in fleet.store.distributions(status="pending") if d.node_id == NODES[1]]
    fleet.store.set_distribution_status(
        refused.id, NODES[1], "failed", now=fleet.now, error="bind9: cannot sign", stage="apply"
    )
    fleet.run(1)
    code, out, _ = kdc(capsys, state, "status")
    assert code == 0 and f"{NODES[1]}: could not apply: bind9: cannot sign" in out, out


def test_plan_lists_every_coming_step_with_what_each_node_serves(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.run(2)
    code, out, _ = kdc(capsys, state, "plan", "--zone", ZONE, "--json")
    assert code == 0
    steps = json.loads(out)["steps"]
    assert [s["step"] for s in steps] == [2, 3]
    zsks = [k for k in fleet.store.keys(ZONE) if k.role == "ZSK"]
    old, new = sorted(zsks, key=lambda k: k.id)
    assert steps[0]["signing"] == sorted(
        [
            f"ZSK {new.key_tag}",
            f"KSK {next(k.key_tag for k in fleet.store.keys(ZONE) if k.role == 'KSK')}",
        ]
    )
    assert f"ZSK {old.key_tag}" not in steps[1]["dnskeys"]
    # Earliest times in order: each step after the previous one's waits.
    assert steps[0]["earliest_done"] <= steps[1]["earliest_start"] <= steps[1]["earliest_done"]


def test_rollover_dry_run_checks_and_changes_nothing(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    before = dump(fleet.store.path)
    code, out, _ = kdc(capsys, state, "rollover", "--zone", ZONE, "--role", "ZSK", "--dry-run")
    assert code == 0 and "would start a ZSK rollover" in out
    assert dump(fleet.store.path) == before
    code, _, err = kdc(capsys, state, "rollover", "--zone", ZONE, "--role", "CSK", "--dry-run")
    assert code == 2 and "no CSK to roll" in err
    code, out, _ = kdc(capsys, state, "rollover", "--zone", ZONE, "--role", "ZSK")
    assert code == 0 and "started a ZSK rollover" in out
    assert EngineState(fleet.store).current(ZONE) is not None
    code, _, err = kdc(capsys, state, "rollover", "--zone", ZONE, "--role", "KSK")
    assert code == 2 and "one rollover per zone at a time" in err


def test_key_commands_are_refused_on_a_zone_a_policy_runs(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    tag = str(fleet.store.keys(ZONE)[0].key_tag)
    before = dump(fleet.store.path)
    for args in (
        ("key", "generate", "--zone", ZONE, "--role", "ZSK"),
        ("key", "retire", "--zone", ZONE, "--tag", tag, "--force"),
        ("key", "remove", "--zone", ZONE, "--tag", tag, "--force"),
    ):
        code, _, err = kdc(capsys, state, *args)
        assert code == 2 and "is run by policy fast" in err and "--no-policy" in err, args
    assert dump(fleet.store.path) == before


def test_ds_words_and_their_dry_run(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    before = dump(fleet.store.path)
    code, out, _ = kdc(capsys, state, "ds", "seen", "--zone", ZONE, "--dry-run")
    assert code == 0 and out.startswith("would be recorded: the parent of")
    assert dump(fleet.store.path) == before
    code, _, err = kdc(capsys, state, "ds", "gone", "--zone", ZONE)
    assert code == 2 and "not at a step that waits for the old DS" in err
    code, out, _ = kdc(capsys, state, "ds", "seen", "--zone", ZONE)
    assert code == 0 and "recorded" in out
    code, out, _ = kdc(capsys, state, "history", "--zone", ZONE)
    assert " ds-seen: " in out and out.rstrip().endswith("(command: krs-kdc ds seen)")


def test_node_evict_lets_the_step_go_on_and_is_recorded(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    fleet.engine.start(ZONE, "ZSK", cause="command: test", now=fleet.now)
    fleet.down = {NODES[2]}
    fleet.run(30)
    assert EngineState(fleet.store).current(ZONE).step == 0  # type: ignore[union-attr]
    before = dump(fleet.store.path)
    code, out, _ = kdc(capsys, state, "node", "evict", NODES[2], "--zone", ZONE, "--dry-run")
    assert code == 0 and "would take" in out and dump(fleet.store.path) == before
    code, out, _ = kdc(capsys, state, "node", "evict", NODES[2], "--zone", ZONE)
    assert code == 0
    fleet.run(15)
    assert EngineState(fleet.store).current(ZONE).step == 1  # type: ignore[union-attr]
    code, out, _ = kdc(capsys, state, "history", "--json")
    evicted = [e for e in json.loads(out)["entries"] if e["event"] == "node-evicted"]
    assert evicted[0]["detail"] == {"node": NODES[2]}
    assert evicted[0]["cause"] == "command: krs-kdc node evict"


def test_the_history_cannot_be_rewritten(fleet: Fleet) -> None:
    signed(fleet)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        fleet.store.db.execute("UPDATE history SET cause = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        fleet.store.db.execute("DELETE FROM history")


def test_zone_ds_at_the_ds_step_gives_the_set_the_parent_is_to_serve(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed(fleet)
    old = next(k.key_tag for k in fleet.store.keys(ZONE) if k.role == "KSK")
    fleet.engine.ds_reported(ZONE, seen=True, now=fleet.now, cause="command: test")
    fleet.run(20)
    fleet.engine.start(ZONE, "KSK", cause="command: test", now=fleet.now)
    fleet.run(20)
    assert EngineState(fleet.store).current(ZONE).step == 1  # type: ignore[union-attr]
    new = next(k.key_tag for k in fleet.store.keys(ZONE) if k.role == "KSK" and k.key_tag != old)
    code, out, _ = kdc(capsys, state, "zone", "ds", ZONE, "--json")
    assert code == 0 and [k["key_tag"] for k in json.loads(out)["keys"]] == [new]


def test_zone_set_policy_adopts_the_keys_at_once_so_rollover_works_right_after(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found following docs/quickstart.md step 8: `zone set --policy` then `rollover` at once
    failed with "no ZSK signing now", the keys being adopted only at serve's next pass."""
    from krs_plugin.kdc.keygen import new_key

    fleet.store.add_zone("hand.test.", now=fleet.now)
    for role in ("KSK", "ZSK"):
        row = new_key(fleet.store, "hand.test.", role, 13, now=fleet.now, publish_at=fleet.now,
                      activate_at=fleet.now)  # fmt: skip
        fleet.store.set_key_state(row.id, "active")
    code, _, err = kdc(capsys, state, "zone", "set", "hand.test.", "--policy", "fast")
    assert code == 0, err
    code, out, err = kdc(capsys, state, "rollover", "--zone", "hand.test.", "--role", "ZSK")
    assert code == 0, err
    code, out, _ = kdc(capsys, state, "history", "--zone", "hand.test.", "--json")
    first = json.loads(out)["entries"][0]
    assert first["event"] == "adopted" and first["cause"] == "command: krs-kdc zone set --policy"


def test_emergency_rollover_and_compromised_node_commands(
    fleet: Fleet, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rollover --emergency --key TAG`` starts at once when nothing runs and is queued behind
    a running rollover; ``node compromised`` evicts the node everywhere and queues a rollover of
    every key it held; --dry-run changes nothing."""
    signed(fleet)
    keys = {k.role: k.key_tag for k in fleet.store.keys(ZONE)}
    code, _, err = kdc(capsys, state, "rollover", "--zone", ZONE, "--emergency")
    assert code == 2 and "give --key TAG" in err
    before = dump(fleet.store.path)
    code, out, _ = kdc(capsys, state, "node", "compromised", NODES[0], "--dry-run")
    assert code == 0 and "would take" in out and dump(fleet.store.path) == before
    code, out, _ = kdc(capsys, state, "rollover", "--zone", ZONE, "--emergency", "--key",
                       str(keys["ZSK"]), "--json")  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["old_key"] == keys["ZSK"] and data["method"] == "pre-publish"
    code, out, _ = kdc(capsys, state, "node", "compromised", NODES[0])
    assert code == 0 and f"KSK {keys['KSK']} queued" in out
    assert ZONE not in fleet.store.require_node(NODES[0]).zones
    code, out, _ = kdc(capsys, state, "rollover", "--zone", ZONE, "--emergency", "--key",
                       str(keys["KSK"]))  # fmt: skip
    assert code == 0 and "queued an emergency rollover" in out
    events = [e.event for e in EngineState(fleet.store).history(ZONE)]
    assert events.count("rollover-requested") == 1 and "node-evicted" in events
