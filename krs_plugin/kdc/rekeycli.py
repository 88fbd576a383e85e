"""``krs-kdc node rekey``: ask a node to rotate its keys, or set the maximum node-key age after
which ``krs-kdc serve`` asks on its own (docs/kdc.md, "Rotating a node's keys"). The work is
``kdc/noderekey.py``'s; this module reads options and prints."""

from __future__ import annotations

import argparse
import time
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.humantime import duration_argument, format_duration, format_time
from krs_plugin.kdc.clistate import add_dry_run, open_store, state_dir
from krs_plugin.kdc.identity import load_identity
from krs_plugin.kdc.store import StateError, Store
from krs_plugin.kdc.wake import wake_serve


def cmd_node_rekey(args: argparse.Namespace) -> int:
    from krs_plugin.kdc import noderekey  # SIG(0) and all: not to build the parser (enginecli.py)

    store = open_store(args)
    now = time.time()
    if args.every is not None or args.never:
        if args.node_id or args.cancel:
            raise StateError("node rekey --every/--never sets the KDC's policy: give no NODE")
        seconds = None if args.never else int(args.every)
        noderekey.set_every(store, seconds)
        text = (
            "never"
            if seconds is None
            else f"when its keys are older than {format_duration(seconds)}"
        )
        emit({"every": seconds}, [f"krs-kdc serve asks a node to rekey {text}"], as_json=args.json)
        return 0
    if not args.node_id:
        raise StateError("node rekey: give NODE, or --every DURATION / --never for the policy")
    if args.cancel:
        done = noderekey.cancel(store, args.node_id, now=now)
        emit(
            {"node_id": args.node_id, "cancelled": done},
            [
                f"node {args.node_id}: "
                + ("request withdrawn" if done else "no request to withdraw")
            ],
            as_json=args.json,
        )
        return 0
    identity = load_identity(state_dir(args) / "keys", store.custody)
    backend = args.backend
    cause = "operator" if backend is None else f"operator: move to {backend}"
    dist_id = noderekey.request(
        store, identity, args.node_id, cause=cause, now=now, backend=backend
    )
    if dist_id is not None and not args.dry_run:
        wake_serve(store)
    node = store.require_node(args.node_id)
    emit(
        {"node_id": node.id, "distribution_id": dist_id},
        [
            f"node {node.id}: asked to rekey (distribution {dist_id}); krs run rotates its keys "
            "when it gets it"
            if dist_id
            else f"node {node.id}: already asked to rekey; nothing new sent"
        ],
        as_json=args.json,
    )
    return 0


def show_part(store: Store, node_id: str, *, now: float) -> tuple[dict[str, object], list[str]]:
    """``node show``'s node-key part: the JSON member and the text lines."""
    from krs_plugin.kdc import noderekey

    node = store.require_node(node_id)
    info = noderekey.describe(store, node, now=now)
    lines = [
        f"  node keys     recorded {format_time(int(str(info['keys_since'])), now=now)}, "
        f"rotation {info['rekey_state']}"
        + (f" (asked: {info['request_cause']})" if info["request_cause"] else ""),
    ]
    keys = info["keys"]
    assert isinstance(keys, dict)
    for name, thumb in keys.items():
        lines.append(f"    {name:8} {thumb}")
    if info["old_keys"]:
        lines.append("    old keys kept until a confirmation signed with the new key arrives")
    return info, lines


def add_parsers(node: Any, add: Any) -> None:
    p = add(
        node,
        "rekey",
        cmd_node_rekey,
        "ask a node to rotate its keys; or --every: the maximum node-key age for serve",
    )
    add_dry_run(p)
    p.add_argument("node_id", nargs="?", help="the node to ask (its next distribution carries it)")
    p.add_argument("--cancel", action="store_true", help="withdraw a request not acted on yet")
    p.add_argument(
        "--every",
        type=duration_argument(minimum=1, whole=True),
        help="serve asks every node whose keys are older than this (e.g. 365d)",
    )
    p.add_argument("--never", action="store_true", help="no maximum node-key age")
    p.add_argument(
        "--backend",
        choices=("hpke", "jose", "hpke-pq"),
        help="ask the node to move to this backend's key (docs/enrollment.md section 7)",
    )
