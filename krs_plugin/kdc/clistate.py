"""Where ``krs-kdc`` keeps its state, and the checks every command module shares.

State lives in one directory: ``--state``, or ``$KRS_KDC_STATE``, default ``./kdc-state``
(docs/kdc.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from krs_plugin.errors import ConfigError
from krs_plugin.kdc.store import StateError, Store

DEFAULT_STATE = "kdc-state"


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state or os.environ.get("KRS_KDC_STATE") or DEFAULT_STATE)


_DRY_RUNS: list[Store] = []


def open_store(args: argparse.Namespace) -> Store:
    """kdc.db for a command. With ``--dry-run``, everything the command does to it happens
    inside one transaction that ``end_dry_runs`` rolls back: the command is checked exactly as
    for real, prints what it would do, and changes nothing (docs/kdc.md, "Dry runs")."""
    state = state_dir(args)
    if not (state / "kdc.db").exists():
        raise ConfigError(f"{state}: no KDC state here (run: krs-kdc --state {state} init ...)")
    store = Store(state / "kdc.db")
    if getattr(args, "dry_run", False):
        store.db.execute("BEGIN IMMEDIATE")  # the command's own transactions nest inside
        _DRY_RUNS.append(store)
    return store


def end_dry_runs() -> bool:
    """Roll back what ``--dry-run`` commands did; True when there was one."""
    ended = bool(_DRY_RUNS)
    while _DRY_RUNS:
        store = _DRY_RUNS.pop()
        if store.db.in_transaction:
            store.db.execute("ROLLBACK")
    return ended


def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run", action="store_true", help="check and print what would change; change nothing"
    )


def check_address(text: str) -> None:
    """A ``host:port`` option (a node's NOTIFY address, a listen or KDC address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise StateError(f"address {text!r} must be host:port (e.g. 127.0.0.1:5355)")


def manual_zone(store: Store, zone: str, command: str) -> str:
    """``zone``, refused for a ``key`` command when a policy's engine runs its keys: two hands
    on one key set is how a zone goes bogus (docs/lifecycle.md, "Keys by hand and by policy")."""
    zone = store.require_zone(zone)
    policy = store.zone_policy(zone)
    if policy is not None:
        raise StateError(
            f"{command}: zone {zone} is run by policy {policy}: the lifecycle engine changes "
            f"its keys (krs-kdc rollover --zone {zone} --role ZSK|KSK|CSK starts a rollover "
            f"now). To change its keys by hand, first: krs-kdc zone set {zone} --no-policy"
        )
    return zone
