"""Where ``krs-kdc`` keeps its state, and the checks every command module shares.

State lives in one directory: ``--state``, or ``$KRS_KDC_STATE``, default ``./kdc-state``
(docs/kdc.md).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
from collections.abc import Sequence
from pathlib import Path

from krs_plugin.errors import ConfigError
from krs_plugin.kdc.store import StateError, Store, canonical

DEFAULT_STATE = "kdc-state"


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state or os.environ.get("KRS_KDC_STATE") or DEFAULT_STATE)


_DRY_RUNS: list[Store] = []
_OPENED: list[Store] = []  # the command's kdc.db, for its audit entry (record_command)


def operator() -> str:
    """Who runs the command, as the audit trail names them."""
    try:
        return f"operator {getpass.getuser()}"
    except (KeyError, OSError):
        return f"operator uid {os.getuid()}"


def open_store(args: argparse.Namespace) -> Store:
    """kdc.db for a command. With ``--dry-run``, everything the command does to it happens
    inside one transaction that ``end_dry_runs`` rolls back: the command is checked exactly as
    for real, prints what it would do, and changes nothing (docs/kdc.md, "Dry runs")."""
    state = state_dir(args)
    if not (state / "kdc.db").exists():
        raise ConfigError(f"{state}: no KDC state here (run: krs-kdc --state {state} init ...)")
    store = Store(state / "kdc.db")
    store.actor = operator()
    _OPENED.append(store)
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


# Options whose value is a secret (a PIN, a passphrase): the audit trail records "<secret>" for
# them. Today no krs-kdc option takes one (keys and TSIG secrets are named by file); a token PIN
# will, and a new option whose name says pin, password, passphrase or secret is covered (not
# one that names a file: --pin-file's value is a path, kept).
_SECRET_OPTION = re.compile(r"^--[a-z0-9-]*(pin|password|passphrase|secret)(?!.*-file$)[a-z0-9-]*$")


def scrub_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret-bearing options replaced (``--pin 1234`` and
    ``--pin=1234`` both)."""
    out: list[str] = []
    hide = False
    for word in argv:
        if hide:
            out.append("<secret>")
            hide = False
            continue
        name, eq, _ = word.partition("=")
        if _SECRET_OPTION.match(name):
            out.append(f"{name}=<secret>" if eq else word)
            hide = not eq
            continue
        out.append(word)
    return out


def command_name(args: argparse.Namespace) -> str:
    """``key generate``, ``init``: the command as typed, without its options."""
    name = str(getattr(args, "command", "") or "")
    action = getattr(args, f"{name}_command", None)
    return f"{name} {action}" if action else name


# Change kdc.db but have no --dry-run (they write files, or move keys into a token).
ALWAYS_AUDITED = ("init", "enroll create", "custody migrate")


def record_command(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """The audit entry of a command that changed kdc.db (every command with ``--dry-run``, and
    those of ``ALWAYS_AUDITED``), after it succeeded: the command and its arguments, secrets
    replaced. A dry run changes nothing, so records nothing."""
    name = command_name(args)
    if getattr(args, "dry_run", False) or not (hasattr(args, "dry_run") or name in ALWAYS_AUDITED):
        return
    if _OPENED:
        store = _OPENED[-1]
    else:
        path = state_dir(args) / "kdc.db"
        if not path.exists():
            return
        store = Store(path)
        store.actor = operator()
        _OPENED.append(store)
    zones: list[str] = []
    for attr in ("zone", "zones", "add_zone", "remove_zone"):
        value = getattr(args, attr, None)
        for text in [value] if isinstance(value, str) else (value or []):
            try:
                zones.append(canonical(str(text)))
            except StateError:
                continue
    node = getattr(args, "node_id", None) or getattr(args, "node", None)
    if isinstance(node, list):
        node = node[0] if len(node) == 1 else None
    node_text = None
    if isinstance(node, str):
        try:
            node_text = canonical(node)
        except StateError:
            node_text = None
    # One zone: the entry is that zone's; several: no zone's (its argv names them all, and a
    # zone's evidence pack must not show another zone).
    zone = zones[0] if len(set(zones)) == 1 else None
    with store.transaction():
        store.audit(
            "command",
            zone=zone,
            node=node_text,
            details={"command": name, "argv": scrub_argv(argv), "outcome": "ok"},
        )


def close_stores() -> None:
    while _OPENED:
        _OPENED.pop()


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
