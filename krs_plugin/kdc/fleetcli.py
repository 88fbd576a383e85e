"""``krs-kdc status --nodes [--behind]``: every node, the worst first, with its last
confirmation, the keys it reports serving and its lag (docs/kdc.md, "The fleet"). The reading is
kdc/fleet.py's; enginecli.py wires the options into ``status``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.confirmation import clip
from krs_plugin.humantime import format_time
from krs_plugin.kdc.clistate import open_store
from krs_plugin.kdc.fleet import FLEET_STATES, NodeLag, ServedKeys, counts, lag_text, node_lags

SHOWN_ZONES = 3  # zones of a node shown in the text; --json and node show have every one


def cmd_status_nodes(args: argparse.Namespace) -> int:
    """The fleet in one read transaction (one consistent view)."""
    store = open_store(args)
    now = int(time.time())
    zones = [store.require_zone(z) for z in args.zone] if args.zone else None
    store.db.execute("BEGIN")
    try:
        nodes = node_lags(store.db, now, zones=zones, served=True)
    finally:
        store.db.execute("COMMIT")
    total = counts(nodes)
    if args.behind:
        nodes = [n for n in nodes if n.lagging]
    data = {"time": now, "counts": total, "nodes": [node_json(n, now) for n in nodes]}
    emit(data, fleet_lines(nodes, total, now, behind=args.behind), as_json=args.json)
    return 0


def fleet_lines(
    nodes: list[NodeLag], total: dict[str, int], now: int, *, behind: bool
) -> list[str]:
    """A summary line, then three lines per node."""
    head = f"{sum(total.values())} node(s): " + ", ".join(f"{total[s]} {s}" for s in FLEET_STATES)
    if behind and not nodes:
        return [head, "no node lags"]
    lines = [head]
    for node in nodes:
        lines += node_lines(node, now)
    return lines


def node_lines(node: NodeLag, now: int) -> list[str]:
    """``ns1.edge.example. in-sync`` and its last confirmation and key set, indented."""
    confirmed = (
        "never"
        if node.confirmed_id is None
        else f"{node.confirmed_id} at {format_time(node.confirmed_at, now=now)}"
    )
    return [
        f"{node.node_id} {lag_text(node, now)}",
        f"  last confirmed  {confirmed}",
        f"  serves          {served_text(node.served, node.node_id)}",
    ]


def served_text(served: tuple[ServedKeys, ...], node_id: str) -> str:
    """``example.com. KSK 30872, ZSK 21771 63667; example.net. CSK 1234`` (the first zones
    only; keys by role, then tag)."""
    if not served:
        return "not reported (no confirmation with served data)"
    parts = [_zone_keys(s) for s in served[:SHOWN_ZONES]]
    if len(served) > SHOWN_ZONES:
        parts.append(f"and {len(served) - SHOWN_ZONES} more zones (krs-kdc node show {node_id})")
    return "; ".join(parts)


def _zone_keys(served: ServedKeys) -> str:
    if served.error is not None:
        return f"{served.zone} unread ({clip(served.error, 80)})"
    roles: dict[str, list[str]] = {}
    for tag, _, role in served.keys:
        roles.setdefault(role, []).append(str(tag))
    keys = ", ".join(f"{role} {' '.join(tags)}" for role, tags in roles.items()) or "no DNSKEY"
    return f"{served.zone} {keys}"


def node_json(node: NodeLag, now: int) -> dict[str, Any]:
    """The same as data: Unix seconds, every lagging distribution and served zone."""
    confirmed = None
    if node.confirmed_id is not None:
        confirmed = {"distribution_id": node.confirmed_id, "confirmed_at": node.confirmed_at}
    return {
        "node_id": node.node_id,
        "state": node.state,
        "last_confirmation": confirmed,
        "lag": lag_json(node, now) if node.lagging else None,
        "served": [served_json(s) for s in node.served],
    }


def lag_json(node: NodeLag, now: int) -> dict[str, Any]:
    """Since when and on what the node lags: each distribution it has not caught up with."""
    return {
        "seconds": node.lag_seconds(now),
        "since": node.since,
        "zones": list(node.zones_behind),
        "failed_zones": list(node.failed_zones),
        "distributions": [
            {
                "distribution_id": d.distribution_id,
                "status": d.status,
                "created_at": d.created_at,
                "stage": d.stage,
                "error": d.error,
                "zones": list(d.zones),
            }
            for d in node.lagging
        ],
    }


def served_json(served: ServedKeys) -> dict[str, Any]:
    """One zone's served key set (the full report: ``node show --json``)."""
    return {
        "zone": served.zone,
        "distribution_id": served.distribution_id,
        "read_at": served.read_at,
        "error": served.error,
        "keys": [{"key_tag": t, "algorithm": a, "role": r} for t, a, r in served.keys],
    }


def add_options(p: argparse.ArgumentParser) -> None:
    """``--nodes`` and ``--behind`` on ``status``."""
    p.add_argument(
        "--nodes", action="store_true",
        help="every node instead, the worst first: its state (failed, behind, never, in-sync), "
        "last confirmation, the keys it serves and how long it lags",
    )  # fmt: skip
    p.add_argument(
        "--behind", action="store_true",
        help="only the nodes that lag (implies --nodes)",
    )  # fmt: skip


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "nodes", False) or getattr(args, "behind", False))


__all__ = ["add_options", "cmd_status_nodes", "wanted"]
