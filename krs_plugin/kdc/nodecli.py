"""``krs-kdc node add|list|show|remove|set``: the nodes (KRS instances) that receive keys, and
the per-node view of what each confirmed holding and serving (docs/kdc.md, "Nodes" and "What a
node holds"). cli.py only wires these in; ``served_json``/``served_text`` also serve
``distribution show``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.crypto import load_hpke_public, load_hybrid_public, load_jose_key
from krs_plugin.errors import WireError
from krs_plugin.humantime import format_time
from krs_plugin.kdc.clistate import add_dry_run, check_address, open_store
from krs_plugin.kdc.store import (
    DistributionRow,
    HeldKey,
    ServedRow,
    StateError,
    canonical,
    node_state,
)
from krs_plugin.protocol import check_node_id


def cmd_node_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        node_id = check_node_id(canonical(args.node_id)).to_text()
    except WireError as exc:
        raise StateError(str(exc)) from exc
    hpke = load_hpke_public(args.hpke_pubkey).public_hex if args.hpke_pubkey else None
    jose = json.dumps(load_jose_key(args.jose_pubkey).public_jwk) if args.jose_pubkey else None
    signing = (
        json.dumps(load_jose_key(args.signing_pubkey).public_jwk) if args.signing_pubkey else None
    )
    hybrid = load_hybrid_public(args.hpke_pq_pubkey).public_hex if args.hpke_pq_pubkey else None
    backend = args.backend or ("hpke" if hpke else "jose" if jose else "hpke-pq" if hybrid else "")
    if not backend:
        raise StateError(
            f"node {node_id}: give its public key: --hpke-pubkey, --jose-pubkey or --hpke-pq-pubkey"
        )
    if backend == "hpke-pq" and not hybrid:
        raise StateError(f"node {node_id}: backend hpke-pq needs --hpke-pq-pubkey")
    if backend == "hpke" and not hpke:
        raise StateError(f"node {node_id}: backend hpke needs --hpke-pubkey")
    if backend == "jose" and not jose:
        raise StateError(f"node {node_id}: backend jose needs --jose-pubkey")
    check_address(args.notify)
    node = store.add_node(
        node_id,
        notify_address=args.notify,
        backend=backend,
        hpke_pubkey=hpke,
        jose_pubkey=jose,
        signing_pubkey=signing,
        zones=args.zone or [],
        hpke_pq_pubkey=hybrid,
    )
    emit(
        asdict(node),
        [
            f"added node {node.id} ({node.backend}, notify {node.notify_address}), "
            f"zones: {', '.join(node.zones) or 'none'}"
        ],
        as_json=args.json,
    )
    return 0


def cmd_node_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    nodes = store.nodes(args.zone)
    states = {n: node_state(z) for n, z in store.zone_states().items()}
    emit(
        [{**asdict(n), "status": states.get(n.id, "none")} for n in nodes],
        [
            f"{n.id:32} {states.get(n.id, 'none'):7} {n.backend:7} {n.notify_address:22} "
            f"{' '.join(n.zones)}"
            for n in nodes
        ],
        as_json=args.json,
    )
    return 0


def cmd_node_show(args: argparse.Namespace) -> int:
    """One node: per zone its newest distribution and the keys it confirmed holding, its last
    failure and when it was last heard from (docs/kdc.md, "What a node holds")."""
    store = open_store(args)
    node = store.require_node(args.node_id)
    zones = store.zone_states(node.id)[node.id]
    held: dict[str, list[HeldKey]] = {}
    for key in store.held_keys(node.id):
        held.setdefault(key.zone, []).append(key)
    failure = store.last_failure(node.id)
    contact = store.last_contact(node.id)
    served = {r.zone: r for r in store.served_state(node_id=node.id, latest=True)}
    status = node_state(zones)
    now = time.time()
    data = {
        "node_id": node.id,
        "status": status,
        "backend": node.backend,
        "notify_address": node.notify_address,
        "last_contact": contact,
        "last_failure": None if failure is None else _failure_json(failure),
        "zones": [
            {
                "zone": z.zone,
                "distribution": None if z.distribution is None else _brief_json(z.distribution),
                "keys": [asdict(k) for k in held.get(z.zone, [])],
                "served": served_json(served.get(z.zone)),
            }
            for z in zones
        ],
    }
    lines = [
        f"node {node.id}: {status} ({node.backend}, notify {node.notify_address})",
        f"  last contact  {format_time(contact, now=now) if contact else 'never'}",
    ]
    from krs_plugin.kdc.rekeycli import show_part  # node keys and rotation (krs-kdc node rekey)

    data["node_keys"], key_lines = show_part(store, node.id, now=now)
    lines += key_lines
    if failure is not None:
        lines.append(
            f"  last failure  {format_time(failure.failed_at, now=now)}, distribution "
            f"{failure.id} at {failure.stage or 'an unnamed stage'}: {failure.error}"
        )
    for z in zones:
        lines.append(f"zone {z.zone}")
        lines.append(f"  newest distribution  {_distribution_text(z.distribution, now)}")
        keys = held.get(z.zone, [])
        if not keys:
            lines.append("  keys  none confirmed")
        for key in keys:
            what = f"{key.role or '?'} alg {key.algorithm or '?'} tag {key.key_tag}"
            verb = "deleted" if key.deleted else "holds  "
            lines.append(f"  {verb} {what} (confirmed in {key.distribution_id})")
        lines.append(f"  serves  {served_text(served.get(z.zone), now)}")
    emit(data, lines, as_json=args.json)
    return 0


def served_json(row: ServedRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"distribution_id": row.distribution_id, "recorded_at": row.recorded_at, **row.state}


def served_text(row: ServedRow | None, now: float) -> str:
    """What the node last read back from its server for a zone (the confirmation's ``served``):
    ``DNSKEY 12345/13/257 TTL 3600 (signed by 12345); SOA serial 7 TTL 3600 minimum 300 (signed
    by 54321, RRSIG ... to ...); read ... in <distribution>``."""
    if row is None:
        return "not reported (no confirmation with served data: directory adapter, tdns node)"
    st = row.state
    where = f"read {format_time(row.read_at, now=now)} in {row.distribution_id}"
    if "error" in st:
        return f"unread ({st['error']}); {where}"

    def tags(name: str) -> str:
        items = st.get(name)
        if not isinstance(items, list) or not items:
            return "none"
        return ", ".join("/".join(map(str, i)) if isinstance(i, list) else str(i) for i in items)

    text = (
        f"DNSKEY {tags('dnskey')} TTL {st.get('dnskey_ttl')} (signed by {tags('dnskey_signers')}); "
        f"SOA serial {st.get('soa_serial')} TTL {st.get('soa_ttl')} minimum "
        f"{st.get('soa_minimum')} (signed by {tags('soa_signers')}"
    )
    inception, expiration = st.get("soa_rrsig_inception"), st.get("soa_rrsig_expiration")
    if isinstance(inception, int) and isinstance(expiration, int):
        text += f", RRSIG {format_time(inception, now=now)} to {format_time(expiration, now=now)}"
    text += ")"
    for name in ("cds", "cdnskey"):
        if name in st:
            text += f"; {name.upper()} {tags(name)}"
    return f"{text}; {where}"


def _distribution_text(row: DistributionRow | None, now: float) -> str:
    if row is None:
        return "none yet"
    if row.status == "confirmed":
        return f"{row.id} confirmed {format_time(row.confirmed_at, now=now)}"
    if row.status == "failed":
        return (
            f"{row.id} failed {format_time(row.failed_at, now=now)} at "
            f"{row.stage or 'an unnamed stage'}: {row.error}"
        )
    if row.status == "expired":
        return f"{row.id} expired {format_time(row.expires_at, now=now)}, never confirmed"
    return f"{row.id} pending since {format_time(row.created_at, now=now)}"


def _brief_json(row: DistributionRow) -> dict[str, Any]:
    return {
        "distribution_id": row.id,
        "status": row.status,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "confirmed_at": row.confirmed_at,
        "failed_at": row.failed_at,
        "stage": row.stage,
        "error": row.error,
    }


def _failure_json(row: DistributionRow) -> dict[str, Any]:
    return {
        "distribution_id": row.id,
        "stage": row.stage,
        "error": row.error,
        "failed_at": row.failed_at,
    }


def cmd_node_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    store.remove_node(args.node_id)
    emit(
        {"removed": canonical(args.node_id)},
        [f"removed node {canonical(args.node_id)}"],
        as_json=args.json,
    )
    return 0


def cmd_node_set(args: argparse.Namespace) -> int:
    """Change the zones a node serves; its keys and notify address stay."""
    store = open_store(args)
    if not args.add_zone and not args.remove_zone:
        raise StateError("node set: give --add-zone or --remove-zone (repeatable)")
    node = store.change_node_zones(args.node_id, add=args.add_zone or (),
                                   remove=args.remove_zone or ())  # fmt: skip
    lines = [f"node {node.id} serves: {', '.join(node.zones) or 'no zones'}"]
    for zone in args.add_zone or ():
        zone = canonical(zone)
        lines.append(
            f"on the node: add {zone} to krs.yaml zones:, systemctl reload krs; then here: "
            f"krs-kdc distribute --zone {zone} --node {node.id}"
        )
    for zone in args.remove_zone or ():
        lines.append(
            f"on the node: remove {canonical(zone)} from krs.yaml zones: and systemctl reload "
            "krs (its keys stay in the nameserver until removed there)"
        )
    emit(asdict(node), lines, as_json=args.json)
    return 0


def add_parsers(sub: Any, add: Any) -> Any:
    """``node ...`` under ``sub``; ``add`` is cli.py's helper (help, --json, the command).
    Returns the ``node`` subparsers, for ``node evict`` (enginecli.py)."""
    node = sub.add_parser("node", help="nodes (KRS instances) that receive keys").add_subparsers(
        dest="node_command", metavar="ACTION", required=True
    )
    p = add(node, "add", cmd_node_add, "add a node with its public keys")
    add_dry_run(p)
    p.add_argument("node_id", help="node id, an FQDN such as ns1.edge.example.")
    p.add_argument("--notify", required=True, help="where the node listens for NOTIFY (host:port)")
    p.add_argument("--backend", choices=("hpke", "jose", "hpke-pq"))
    p.add_argument("--hpke-pubkey", help="file with the node's X25519 public key (hex)")
    p.add_argument("--jose-pubkey", help="file with the node's P-256 public JWK")
    p.add_argument(
        "--hpke-pq-pubkey",
        help="file with the node's ML-KEM-768 + X25519 public key (hex; the hpke-pq backend)",
    )
    p.add_argument("--signing-pubkey", help="file with the node's P-256 key for confirmations")
    p.add_argument("--zone", action="append", help="a zone the node serves (repeatable)")
    p = add(node, "list", cmd_node_list, "list nodes and their status")
    p.add_argument("--zone")
    p = add(node, "show", cmd_node_show, "one node: its zones, the keys it confirmed, failures")
    p.add_argument("node_id")
    from krs_plugin.kdc.rekeycli import add_parsers as add_rekey_parsers

    add_rekey_parsers(node, add)
    p = add(node, "remove", cmd_node_remove, "remove a node")
    add_dry_run(p)
    p.add_argument("node_id")
    p = add(
        node,
        "set",
        cmd_node_set,
        "change the zones a node serves (its keys stay); then distribute the added zones to it",
    )
    p.add_argument("node_id")
    p.add_argument("--add-zone", action="append", metavar="ZONE", help="serve this zone too "
                   "(repeatable)")  # fmt: skip
    p.add_argument("--remove-zone", action="append", metavar="ZONE",
                   help="no longer serve this zone (repeatable)")  # fmt: skip
    add_dry_run(p)
    return node
