"""``krs-kdc status``, ``plan``, ``rollover``, ``ds seen|gone``, ``history`` and ``node evict``:
the operator's side of the lifecycle engine (docs/lifecycle.md, "What the operator sees").

Commands that change state take ``--dry-run`` (clistate.open_store): checked exactly as for
real, their output printed, nothing kept. The engine and the parent watch are imported by the
commands that use them, not to build the parser: every ``krs-kdc distribute`` builds it
(docs/development.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from krs_plugin.cliout import emit
from krs_plugin.humantime import format_time
from krs_plugin.kdc.clistate import add_dry_run, open_store
from krs_plugin.kdc.fleetcli import add_options as add_fleet_options
from krs_plugin.kdc.fleetcli import cmd_status_nodes
from krs_plugin.kdc.fleetcli import wanted as fleet_wanted
from krs_plugin.kdc.store import StateError, Store, canonical

if TYPE_CHECKING:
    from krs_plugin.kdc.engine import Engine, ZoneView
    from krs_plugin.kdc.enginestate import Rollover


def _when(stamp: int | None, now: int) -> str:
    return format_time(stamp, now=now)


def _utc(stamp: int) -> str:
    """A time in the history: absolute only (``relative`` would go stale in a log)."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stamp))


def view_json(view: ZoneView) -> dict[str, Any]:
    data = asdict(view)
    rollover = data.pop("rollover")
    data["rollover"] = None if rollover is None else {
        k: rollover[k] for k in ("id", "role", "method", "step", "keys", "nodes",
                                 "step_started_at", "reached_at", "cause")
    }  # fmt: skip
    data["next_rollover"] = (
        None if view.next_rollover is None
        else {"role": view.next_rollover[0], "at": view.next_rollover[1]}
    )  # fmt: skip
    return data


def view_lines(view: ZoneView, now: int) -> list[str]:
    if view.phase == "manual":
        return [f"{view.zone}: keys by hand (no policy)"]
    head = f"{view.zone} (policy {view.policy}): {view.phase}"
    if view.phase == "idle":
        if view.next_rollover is None:
            return [head + "; no rollover due by lifetime"]
        role, at = view.next_rollover
        return [head + f"; next {role} rollover {_when(at, now)}"]
    lines = [head + f", step {view.step}"]
    if view.waits_for == "nodes":
        lines.append(f"  waits for {len(view.lagging)} node(s):")
        lines += [f"    {node or '-'}: {why}" for node, why in sorted(view.lagging.items())]
    elif view.waits_for == "time":
        lines.append(f"  waits until {_when(view.until, now)}")
    elif view.waits_for == "parent":
        lines.append(f"  waits for the parent: {view.problem}")
    elif view.waits_for == "engine":
        lines.append(f"  held: {view.problem}" if view.problem else
                     "  the engine takes it at its next pass (krs-kdc serve)")  # fmt: skip
    elif view.problem:
        lines.append(f"  held: {view.problem}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    if fleet_wanted(args):  # --nodes, --behind: the fleet instead (kdc/fleetcli.py)
        return cmd_status_nodes(args)
    from krs_plugin.kdc.engine import Engine, policy_zones
    from krs_plugin.kdc.parentcli import watch_lines

    store = open_store(args)
    now = int(time.time())
    engine = Engine(store)
    zones = [canonical(z) for z in args.zone] if args.zone else [z for z, _ in policy_zones(store)]
    views = [engine.view(z, now) for z in zones]
    lines: list[str] = []
    out = []
    for view in views:
        data, more = view_json(view), view_lines(view, now)
        watch = _parent_watch(engine, view.zone)
        if watch is not None:
            data["parent"] = watch
            if view.waits_for == "parent":
                more[-1] = (
                    f"  waits for the parent (the KDC pushes and looks itself): {watch['why']}"
                )
                more += watch_lines(watch, now)[1:]
            elif view.phase in ("idle", "ZSK rollover"):
                more += [f"  waits for its first DS at the parent: {watch['why']}",
                         *watch_lines(watch, now)[1:]]  # fmt: skip
        lines += more
        out.append(data)
    emit({"time": now, "zones": out}, lines or [
        "no zone has a policy (krs-kdc zone set ZONE --policy NAME)"
    ], as_json=args.json)  # fmt: skip
    return 0


def _parent_watch(engine: Engine, zone: str) -> dict[str, Any] | None:
    """What the parent watch last saw for ``zone``, while the zone waits for its parent."""
    from krs_plugin.kdc.parentwatch import need_of, parent_settings, watch_of

    if parent_settings(engine.store, zone) is None or need_of(engine, zone) is None:
        return None
    watch = watch_of(engine.store, zone)
    if watch is None:
        return {"purpose": "", "why": "not asked yet (krs-kdc serve asks within a second)"}
    return dict(watch.__dict__)


def cmd_plan(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.engine import Engine

    store = open_store(args)
    now = int(time.time())
    steps = Engine(store).plan(args.zone, now)
    lines = [
        f"{s.role} step {s.step} of {s.of}: {s.says}\n"
        f"  earliest {format_time(s.earliest_start)}, done {format_time(s.earliest_done)}"
        f" (waits for {', '.join(s.waits_for)})\n"
        f"  every node serves DNSKEY {', '.join(s.dnskeys)}; signing: {', '.join(s.signing)}"
        for s in steps
    ] or [f"{canonical(args.zone)}: no step planned (no policy, or no rollover due by lifetime)"]
    emit({"zone": canonical(args.zone), "steps": [asdict(s) for s in steps]}, lines,
         as_json=args.json)  # fmt: skip
    return 0


def cmd_rollover(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.engine import Engine

    store = open_store(args)
    now = int(time.time())
    engine = Engine(store)
    if args.emergency:
        return _emergency(args, engine, now)
    if args.role is None:
        raise StateError("rollover: give --role ZSK|KSK|CSK (or --emergency --key TAG)")
    rollover = engine.start(
        args.zone, args.role, cause=f"command: krs-kdc rollover --role {args.role}", now=now
    )
    _started(args, rollover, store)
    return 0


def _started(args: argparse.Namespace, rollover: Rollover, store: Store) -> None:
    from krs_plugin.kdc.engine import Engine

    new_id = rollover.keys.get("new")
    new = store.key_by_id(new_id).key_tag if new_id is not None else None
    old_id = rollover.keys.get("old")
    old = store.key_by_id(old_id).key_tag if old_id is not None else None
    verb = "would start" if args.dry_run else "started"
    what = f"new {rollover.role} {new}" if new is not None else f"{rollover.role} {old} withdrawn"
    steps = Engine(store).steps(rollover)
    first = f", from step {rollover.step + 1} of {len(steps)}" if rollover.step else ""
    emit(
        {"zone": rollover.zone, "role": rollover.role, "method": rollover.method,
         "new_key": new, "old_key": old, "step": rollover.step, "dry_run": args.dry_run},
        [f"{verb} a {rollover.role} rollover of {rollover.zone} ({rollover.method}{first}): "
         f"{what}" + ("" if args.dry_run else
         "; krs-kdc serve takes its first step within a second (krs-kdc status)")],
        as_json=args.json,
    )  # fmt: skip


def _emergency(args: argparse.Namespace, engine: Engine, now: int) -> int:
    """``rollover --emergency --key TAG``: the compromised key replaced at once, or queued
    behind the zone's running rollover (docs/lifecycle.md, "Emergency rollovers")."""
    if args.key is None:
        raise StateError("rollover --emergency: give --key TAG, the compromised key")
    zone = engine.store.require_zone(args.zone)
    cause = f"command: krs-kdc rollover --emergency --key {args.key}"
    running = engine.state.current(zone)
    if running is None:
        _started(args, engine.emergency(zone, args.key, cause=cause, now=now), engine.store)
        return 0
    rows = [k for k in engine.store.keys(zone) if k.key_tag == args.key and k.state != "removed"]
    if not rows:
        raise StateError(f"zone {zone} has no live key {args.key} (see krs-kdc key list)")
    with engine.store.transaction():
        engine.state.request_rollover(zone, rows[0].id, cause=cause, now=now)
        engine.state.log(zone, "rollover-requested", {"key": args.key}, cause=cause, now=now)
    verb = "would queue" if args.dry_run else "queued"
    emit(
        {"zone": zone, "key": args.key, "queued": True, "dry_run": args.dry_run},
        [f"{verb} an emergency rollover of key {args.key}: it starts when the running "
         f"{running.role} rollover (step {running.step + 1}) is done (krs-kdc status)"],
        as_json=args.json,
    )  # fmt: skip
    return 0


def cmd_ds(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.engine import Engine

    store = open_store(args)
    now = int(time.time())
    seen = args.ds_command == "seen"
    text = Engine(store).ds_reported(
        args.zone, seen=seen, now=now, cause=f"command: krs-kdc ds {args.ds_command}"
    )
    if args.dry_run:
        text = "would be " + text
    emit({"zone": canonical(args.zone), "ds": args.ds_command, "dry_run": args.dry_run},
         [text], as_json=args.json)  # fmt: skip
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.enginestate import EngineState

    store = open_store(args)
    entries = EngineState(store).history(args.zone, limit=args.limit)
    lines = [
        f"{_utc(e.at)} {e.zone} {e.event}: {history_text(e.event, e.detail)} ({e.cause})"
        for e in entries
    ] or ["no history yet"]
    emit({"entries": [asdict(e) for e in entries]}, lines, as_json=args.json)
    return 0


def history_text(event: str, d: dict[str, Any]) -> str:
    """One history entry's detail as a sentence (``--json`` has the fields as recorded)."""

    def items(name: str) -> str:
        value = d.get(name) or []
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)

    step = f"step {d.get('step')}"
    if event == "rollover-started":
        keys = d.get("keys") or {}
        return f"{d.get('role')} {d.get('method')}, " + ", ".join(
            f"{which} {tag}" for which, tag in sorted(keys.items())
        )
    if event == "step-begun":
        sent = f"; distribution {d['distribution']}" if d.get("distribution") else ""
        return (
            f"{step} of {d.get('of')}: {d.get('does')} ({items('records')}){sent} to "
            f"{len(d.get('nodes') or [])} node(s)"
        )
    if event == "step-served":
        last = d.get("last_confirmation")
        when = _utc(last) if isinstance(last, int) else "-"
        return f"{step} served by {items('nodes')}; the last confirmed at {when}"
    if event == "step-done":
        return f"{step}: {items('records')}"
    if event == "step-resent":
        nodes = d.get("nodes") or {}
        why = "; ".join(f"{n}: {w}" for n, w in sorted(nodes.items()))
        return f"{step} sent again (distribution {d.get('distribution')}): {why}"
    if event in ("ds-seen", "ds-gone"):
        return items("keys") if "keys" in d else step
    if event == "node-evicted":
        return str(d.get("node"))
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def cmd_node_evict(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = int(time.time())
    zone = store.require_zone(args.zone)
    node = store.require_node(args.node_id)
    if zone not in node.zones:
        raise StateError(f"node {node.id} does not serve {zone}: nothing to evict")
    with store.transaction():
        evict(store, node.id, zone, cause="command: krs-kdc node evict", now=now)
    verb = "would take" if args.dry_run else "took"
    emit(
        {"zone": zone, "node": node.id, "dry_run": args.dry_run},
        [f"{verb} {node.id} out of {zone}: the zone's steps no longer wait for it, and it gets "
         "no more distributions of the zone (krs-kdc node set --add-zone brings it back)"],
        as_json=args.json,
    )  # fmt: skip
    return 0


def evict(store: Store, node_id: str, zone: str, *, cause: str, now: int) -> None:
    """Take ``node_id`` out of ``zone``: no more distributions, the running step stops waiting
    for it; recorded in the history (inside the caller's transaction)."""
    from krs_plugin.kdc.enginestate import EngineState

    state = EngineState(store)
    store.change_node_zones(node_id, add=(), remove=(zone,))
    rollover = state.current(zone)
    if rollover is not None:
        state.update_rollover(rollover.id, nodes=[n for n in rollover.nodes if n != node_id])
    state.log(zone, "node-evicted", {"node": node_id}, cause=cause, now=now)


def cmd_node_compromised(args: argparse.Namespace) -> int:
    """A node's keys may be in other hands: it leaves every zone it served, and every key it
    held is rolled, the ZSK first (docs/lifecycle.md, "A compromised node")."""
    from krs_plugin.kdc.engine import Engine, current_key

    store = open_store(args)
    now = int(time.time())
    node = store.require_node(args.node_id)
    engine = Engine(store)
    cause = f"command: krs-kdc node compromised {node.id}"
    lines, out = [], []
    with store.transaction():
        for zone in sorted(node.zones):
            evict(store, node.id, zone, cause=cause, now=now)
            if store.zone_policy(zone) is None:
                live = [k for k in store.keys(zone) if k.state in ("published", "active")]
                tags = ", ".join(f"{k.role} {k.key_tag}" for k in live)
                lines.append(f"  {zone}: keys by hand: roll {tags} yourself (krs-kdc key ...)")
                out.append({"zone": zone, "queued": [], "by_hand": [k.key_tag for k in live]})
                continue
            records, rows = engine.state.key_records(zone), store.keys(zone)
            roles = ("ZSK", "KSK") if "ZSK" in {r.role for r in records} else ("CSK",)
            held = [k for role in roles if (k := current_key(records, rows, role)) is not None]
            for key in held:
                engine.state.request_rollover(zone, key.id, cause=cause, now=now)
            out.append({"zone": zone, "queued": [k.key_tag for k in held], "by_hand": []})
            lines.append(
                f"  {zone}: emergency rollover of "
                + ", ".join(f"{k.role} {k.key_tag}" for k in held)
                + " queued (one at a time, after any running rollover)"
            )
    verb = "would take" if args.dry_run else "took"
    emit(
        {"node": node.id, "zones": out, "dry_run": args.dry_run},
        [f"{verb} {node.id} out of {len(node.zones)} zone(s); remove it for good with "
         f"krs-kdc node remove {node.id} once it is shut down", *lines],
        as_json=args.json,
    )  # fmt: skip
    return 0


def add_parsers(sub: Any, node: Any, add: Any) -> None:
    """The engine's commands under ``sub``, ``node evict`` under ``node``; ``add`` is cli.py's
    helper (help, --json, the command)."""
    p = add(sub, "status", cmd_status, "where each zone's key lifecycle stands, or each node's")
    p.add_argument("--zone", action="append", help="only this zone (repeatable)")
    add_fleet_options(p)
    p = add(sub, "plan", cmd_plan, "the coming rollover steps of a zone, with earliest times")
    p.add_argument("--zone", required=True)
    p = add(sub, "rollover", cmd_rollover, "start a rollover of a zone's key now")
    p.add_argument("--zone", required=True)
    p.add_argument("--role", choices=("ZSK", "KSK", "CSK"))
    p.add_argument(
        "--emergency", action="store_true",
        help="replace a compromised key (--key) by the fastest safe schedule: a standby ZSK "
        "when there is one",
    )  # fmt: skip
    p.add_argument("--key", type=int, metavar="TAG", help="the compromised key (--emergency)")
    add_dry_run(p)
    ds = sub.add_parser(
        "ds", help="tell the engine what the parent serves (KSK rollovers)"
    ).add_subparsers(dest="ds_command", metavar="ACTION", required=True)
    for word, text in (
        ("seen", "every parent nameserver serves the new DS"),
        ("gone", "no parent nameserver serves the old DS any more"),
    ):
        p = add(ds, word, cmd_ds, text)
        p.add_argument("--zone", required=True)
        add_dry_run(p)
    p = add(sub, "history", cmd_history, "every lifecycle transition with its cause")
    p.add_argument("--zone")
    p.add_argument("--limit", type=int, help="only the newest N entries")
    p = add(node, "evict", cmd_node_evict, "take a node out of a zone: steps stop waiting for it")
    p.add_argument("node_id")
    p.add_argument("--zone", required=True)
    add_dry_run(p)
    p = add(
        node, "compromised", cmd_node_compromised,
        "a node's keys may be in other hands: take it out of every zone and roll their keys",
    )  # fmt: skip
    p.add_argument("node_id")
    add_dry_run(p)
