"""``krs-kdc identity roll|status``: the KDC's signing-key rollover (kdc/signroll.py;
docs/security.md, "Rotation"; docs/kdc.md, "Rolling the KDC's signing key"). cli.py only
wires these in."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.humantime import format_time
from krs_plugin.kdc import pqcli, signroll
from krs_plugin.kdc.clistate import open_store, state_dir
from krs_plugin.kdc.identity import load_identity
from krs_plugin.kdc.store import StateError
from krs_plugin.kdc.wake import wake_serve

FORCE_WARNING = (
    "WARNING: --force: {step} although {count} node(s) have not confirmed: {nodes}. "
    "Their next distribution fails at stage 'signature' until their operator trusts the new "
    "key by hand (krs trust-kdc-key FILE --fingerprint=THUMBPRINT, docs/security.md 'Rotation')."
)


def cmd_identity_roll(args: argparse.Namespace) -> int:
    store = open_store(args)
    identity = load_identity(state_dir(args) / "keys", store.custody)
    now = time.time()
    if args.resume and args.to_file:
        raise StateError("--to-file goes with a new roll, not with --continue")
    if not args.resume:
        if args.force:
            raise StateError("--force goes with --continue (it passes a held step)")
        row = signroll.start(store, identity, now=now, to_file=args.to_file)
        sent = signroll.resend(store, identity, [n.id for n in store.nodes()], now=now)
        wake_serve(store)
        emit(
            {
                "next": row.thumbprint,
                "custody": row.custody,
                "locator": row.locator,
                "distributions": list(sent),
            },
            [
                f"next signing key {row.thumbprint} ({row.custody}: {row.locator})",
                f"announced to the nodes in {len(sent)} distribution(s), signed by the current "
                "key; krs-kdc serve switches once every node has confirmed it",
                "watch: krs-kdc identity status",
            ],
            as_json=args.json,
        )
        return 0
    gate = signroll.gate(store)
    if gate.phase == "idle":
        emit({"taken": None, "phase": "idle"}, ["no signing-key roll under way"], as_json=args.json)
        return 0
    if gate.holding and args.force:
        step = "switching" if gate.phase == "announcing" else "retiring the old key"
        print(
            FORCE_WARNING.format(
                step=step,
                count=len(gate.holding),
                nodes=", ".join(h.node_id for h in gate.holding),
            ),
            file=sys.stderr,
        )
    result = signroll.advance(store, identity, now=now, force=args.force)
    if result.taken is None:
        emit(
            {"taken": None, "phase": gate.phase, "holding": _holding(gate)},
            [f"{gate.phase}: held by {len(gate.holding)} node(s)"]
            + [f"  {h.node_id}: {h.why}" for h in gate.holding]
            + ["krs-kdc identity roll --continue --force passes them (they recover by hand)"],
            as_json=args.json,
        )
        return 1
    wake_serve(store)
    text = {
        "switched": "switched: distributions are signed by the new key now; the old key is "
        "retired once every node trusts only the new one",
        "retired": "retired: the old key's private half is destroyed; the roll is over",
    }[result.taken]
    emit(
        {"taken": result.taken, "phase": result.gate.phase, "distributions": list(result.resent)},
        [text],
        as_json=args.json,
    )
    return 0


def _holding(gate: signroll.Gate) -> list[dict[str, str]]:
    return [{"node": h.node_id, "why": h.why} for h in gate.holding]


def cmd_identity_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    identity = load_identity(state_dir(args) / "keys", store.custody)
    data = signroll.status(store, identity)
    now = time.time()
    lines = [
        f"phase    {data['phase']}",
        f"current  {data['current']}",
    ]
    if data["next"]:
        lines.append(f"next     {data['next']}")
    if data["previous"]:
        lines.append(f"old      {data['previous']} (private half kept until retired)")
    nodes: list[dict[str, Any]] = data["nodes"]  # type: ignore[assignment]
    for node in nodes:
        seen = node["reported_at"]
        trusted = ", ".join(t[:16] for t in node["kdc_keys"]) or "nothing reported yet"
        when = f" ({format_time(seen, now=now)})" if seen else ""
        state = f"  HOLDS: {node['holding']}" if node["holding"] else ""
        lines.append(f"node {node['node']}: trusts {trusted}{when}{state}")
    if data["phase"] != "idle":
        lines.append("ready for the next step" if data["ready"] else "waiting for the nodes above")
    emit(data, lines, as_json=args.json)
    return 0


def add_parsers(sub: Any, add: Any) -> None:
    group = sub.add_parser(
        "identity", help="the KDC's signing key and its rollover"
    ).add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    p = add(
        group,
        "roll",
        cmd_identity_roll,
        "start a signing-key roll (a next key, announced to every node), or with --continue "
        "take its next step by hand",
    )
    p.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="switch to the next key, or retire the old one, once every node confirmed "
        "(krs-kdc serve does this by itself)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --continue: take the step although nodes have not confirmed (they then "
        "need krs trust-kdc-key by hand)",
    )
    p.add_argument(
        "--to-file",
        action="store_true",
        help="pkcs11 custody: make the next key a 0600 file, to leave the token (then custody "
        "migrate --to file once the roll is over)",
    )
    add(group, "status", cmd_identity_status, "signing keys, the roll's phase, what nodes trust")
    pqcli.add_parsers(group, add)  # the ML-DSA-65 key (kdc/pqcli.py)
