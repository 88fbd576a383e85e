"""``krs-kdc policy add|set|show|list|remove`` and ``zone set --policy``: key policies (issue 22).

The parsers and commands live here so that cli.py only wires them in. Durations are typed as
humantime reads them (``1h``, ``2w``, ``1d12h``); lifetimes also take ``0`` or ``unlimited``. Human
output writes durations the same way; ``--json`` writes whole seconds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.humantime import EXAMPLES, parse_duration
from krs_plugin.kdc.clistate import add_dry_run, open_store
from krs_plugin.kdc.policy import (
    ALGORITHM_METHODS,
    ALGORITHMS,
    CDS_MODES,
    CSK_METHODS,
    KSK_METHODS,
    LAYOUTS,
    ZSK_METHODS,
    Policy,
    check_policy_name,
    differences,
    validate,
    value_text,
)
from krs_plugin.kdc.store import StateError


def _duration(text: str) -> int:
    try:
        return round(parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as {EXAMPLES}, got {text!r}"
        ) from exc


def _lifetime(text: str) -> int:
    return 0 if text.strip().lower() in ("unlimited", "0") else _duration(text)


_duration.__name__ = "duration"
_lifetime.__name__ = "lifetime"

# option -> (type, choices, help). Defaults are Policy's; help names BIND/Knot where they differ.
_OPTIONS: dict[str, tuple[Any, tuple[Any, ...] | None, str]] = {
    "algorithm": (int, ALGORITHMS, "DNSSEC algorithm of new keys (13)"),
    "layout": (str, LAYOUTS, "ksk-zsk: a KSK and a ZSK (default); csk: one combined key"),
    "zsk_lifetime": (_lifetime, None, "ZSK lifetime from activation (30d; 0/unlimited: never)"),
    "ksk_lifetime": (_lifetime, None, "KSK lifetime (unlimited)"),
    "csk_lifetime": (_lifetime, None, "CSK lifetime (unlimited)"),
    "zsk_method": (str, ZSK_METHODS, "ZSK rollover method (pre-publish)"),
    "ksk_method": (str, KSK_METHODS, "KSK rollover method (double-ksk)"),
    "csk_method": (str, CSK_METHODS, "CSK rollover method (double-ksk)"),
    "dnskey_ttl": (_duration, None, "TTL of the DNSKEY RRset the servers serve (1h)"),
    "max_zone_ttl": (_duration, None, "largest TTL in the zone, negative answers included (1d)"),
    "negative_ttl": (_duration, None, "negative-answer TTL: min(SOA TTL, SOA minimum) (1h)"),
    "signatures_validity": (_duration, None, "RRSIG validity the servers sign with (2w)"),
    "signatures_refresh": (
        _duration, None, "servers renew an RRSIG when less than this is left (5d)"),
    "publish_safety": (_duration, None, "margin added to every publication interval (1h)"),
    "retire_safety": (_duration, None, "margin added to every retire interval (1h)"),
    "parent_ds_ttl": (_duration, None, "TTL of the DS RRset at the parent (1d)"),
    "parent_propagation_delay": (
        _duration, None, "time the parent takes to serve a DS change on all its servers (1h)"),
    "propagation_margin": (
        _duration, None, "margin for secondaries no KRS watches, after a node confirms (5m)"),
    "standby_zsks": (int, None, "extra ZSKs kept published for an emergency roll (0)"),
    "standby_ksk": (int, (0, 1), "1: keep a published KSK whose DS the parent has (0)"),
    "cds": (str, CDS_MODES,
            "CDS/CDNSKEY for the parent: while a KSK rollover waits for it (rollover), "
            "always, or none"),
    "algorithm_method": (str, ALGORITHM_METHODS,
                         "algorithm rollover: sign before publishing (conservative, RFC 6781), "
                         "or both at once (liberal: BIND nodes, which sign with published keys "
                         "only)"),
}  # fmt: skip


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    for name, (kind, choices, text) in _OPTIONS.items():
        metavar = None
        if kind is _duration:
            metavar = "DURATION"
        elif kind is _lifetime:
            metavar = "LIFETIME"
        elif kind is int and choices is None:
            metavar = "N"
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, choices=choices,
            metavar=metavar, help=text,
        )  # fmt: skip
    add_dry_run(p)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {n: getattr(args, n) for n in _OPTIONS if getattr(args, n, None) is not None}


def policy_json(name: str, policy: Policy, zones: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, **policy.to_json()}
    if zones is not None:
        data["zones"] = zones
    return data


def cmd_policy_add(args: argparse.Namespace) -> int:
    name = check_policy_name(args.name)
    policy = validate(Policy(**_given(args)), name=f"policy {name}")
    store = open_store(args)
    store.add_policy(name, policy)  # with --dry-run, rolled back (clistate.open_store)
    verb = "would add" if args.dry_run else "added"
    emit(
        {**policy_json(name, policy), "dry_run": args.dry_run},
        [f"{verb} policy {name}", *("  " + line for line in policy.describe())],
        as_json=args.json,
    )
    return 0


def cmd_policy_set(args: argparse.Namespace) -> int:
    store = open_store(args)
    given = _given(args)
    if not given:
        raise StateError("policy set: give at least one option to change (see --help)")
    old = store.require_policy(args.name)
    new = old.changed(**given)
    store.set_policy(args.name, new)
    changes = differences(old, new)
    verb = "would change" if args.dry_run else "changed"
    lines = [f"{verb} policy {args.name}" + ("" if changes else ": nothing differs")]
    lines += [
        f"  {f.replace('_', '-')}: {value_text(f, a)} -> {value_text(f, b)}" for f, a, b in changes
    ]
    zones = store.policy_zones(args.name)
    if changes and zones:
        lines.append(f"  zones using it: {', '.join(zones)} (from their next rollover step)")
    if zones and any(f == "algorithm" for f, _, _ in changes):
        lines.append(
            f"  each of them gets an algorithm rollover to {new.algorithm} (RFC 6781: sign, "
            "publish, the DS, remove), started by krs-kdc serve once no other rollover runs; "
            "krs-kdc status shows it"
        )
    emit(
        {
            **policy_json(args.name, new, zones),
            "changed": {f: {"from": a, "to": b} for f, a, b in changes},
            "dry_run": args.dry_run,
        },
        lines,
        as_json=args.json,
    )
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    policy = store.require_policy(args.name)
    zones = store.policy_zones(args.name)
    lines = [f"policy {args.name}", *("  " + line for line in policy.describe())]
    lines.append(f"  zones: {', '.join(zones) or 'none'}")
    emit(policy_json(args.name, policy, zones), lines, as_json=args.json)
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = [(n, p, store.policy_zones(n)) for n, p in store.policies()]
    lines = []
    for name, p, zones in rows:
        if p.layout == "csk":
            keys = f"CSK {value_text('csk_lifetime', p.csk_lifetime)} {p.csk_method}"
        else:
            keys = (
                f"KSK {value_text('ksk_lifetime', p.ksk_lifetime)} {p.ksk_method}, "
                f"ZSK {value_text('zsk_lifetime', p.zsk_lifetime)} {p.zsk_method}"
            )
        lines.append(f"{name:16} alg {p.algorithm:2} {keys}; zones: {len(zones)}")
    emit([policy_json(n, p, z) for n, p, z in rows], lines or ["no policies"], as_json=args.json)
    return 0


def cmd_policy_remove(args: argparse.Namespace) -> int:
    store = open_store(args)
    store.remove_policy(args.name)
    emit({"name": args.name, "removed": True}, [f"removed policy {args.name}"], as_json=args.json)
    return 0


def cmd_zone_set(args: argparse.Namespace) -> int:
    """Give a zone a key policy, or none (its keys by hand, as before issue 22)."""
    store = open_store(args)
    wanted = None if args.no_policy else args.policy
    if wanted is None and not args.no_policy:
        raise StateError("zone set: give --policy NAME or --no-policy")
    before = store.zone_policy(args.zone)
    zone = store.set_zone_policy(args.zone, wanted)
    if wanted is not None:  # its keys are the engine's from now: adopted at once, not next pass
        from krs_plugin.kdc.engine import Engine  # not to build the parser (enginecli.py)

        Engine(store).adopt(zone, int(time.time()), cause="command: krs-kdc zone set --policy")
    verb = "would set" if args.dry_run else "set"
    text = f"policy {wanted}" if wanted else "no policy (keys by hand)"
    lines = [f"{verb} zone {zone}: {text}" + (" (unchanged)" if before == wanted else "")]
    emit(
        {"zone": zone, "policy": wanted, "previous_policy": before, "dry_run": args.dry_run},
        lines,
        as_json=args.json,
    )
    return 0


def add_parsers(sub: Any, zone: Any, add: Any) -> None:
    """``policy ...`` under ``sub`` and ``zone set`` under ``zone``; ``add`` is cli.py's helper."""

    p = add(zone, "set", cmd_zone_set, "give a zone a key policy, or none")
    p.add_argument("zone")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--policy", metavar="NAME", help="the policy its keys roll by")
    which.add_argument(
        "--no-policy", action="store_true", help="no policy: its keys by hand (no automatic rolls)"
    )
    add_dry_run(p)

    policy = sub.add_parser(
        "policy", help="key policies: lifetimes, rollover methods and timing of zones' keys"
    ).add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    p = add(policy, "add", cmd_policy_add, "add a key policy (defaults: docs/lifecycle.md)")
    p.add_argument("name")
    _add_policy_options(p)
    p = add(policy, "set", cmd_policy_set, "change fields of a key policy")
    p.add_argument("name")
    _add_policy_options(p)
    p = add(policy, "show", cmd_policy_show, "one policy: every field and its zones")
    p.add_argument("name")
    add(policy, "list", cmd_policy_list, "list key policies")
    p = add(policy, "remove", cmd_policy_remove, "remove a policy no zone uses")
    p.add_argument("name")
    add_dry_run(p)
