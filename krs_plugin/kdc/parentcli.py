"""``krs-kdc parent set|show|check|remove``: where a zone's parent is, so that ``krs-kdc serve``
pushes its DS and sees it there itself (docs/lifecycle.md, "The parent").

``set`` checks everything it can before it records anything (addresses, the trust anchor, the
TSIG key file's form and mode); ``check`` asks every parent address now and prints what each
serves, validated, without recording it: the first thing to run after ``set``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krs_plugin.cliout import emit
from krs_plugin.errors import ConfigError
from krs_plugin.humantime import format_time
from krs_plugin.kdc.clistate import add_dry_run, open_store

if TYPE_CHECKING:  # the commands import them: not needed to build krs-kdc's parser (enginecli)
    from krs_plugin.kdc.parentwatch import ParentSettings


def cmd_parent_set(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.parentwatch import ParentSettings, set_parent

    anchor = None
    if args.trust_anchor_file is not None:
        try:
            anchor = Path(args.trust_anchor_file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"--trust-anchor-file {args.trust_anchor_file}: {exc.strerror or exc}"
            ) from None
    settings = ParentSettings(
        agents=tuple(args.agent or ()),
        resolver=args.resolver,
        trust_anchor=anchor,
        port=args.port,
        push_update=args.push_update,
        tsig_file=str(Path(args.tsig_file).resolve()) if args.tsig_file else None,
        parent_zone=args.parent_zone,
        push_hook=args.push_hook,
    ).check()
    store = open_store(args)
    zone = store.require_zone(args.zone)
    set_parent(store, zone, settings, now=int(time.time()))
    verb = "would set" if args.dry_run else "set"
    where = ", ".join(settings.agents) or f"its NS set, found through {settings.resolver}"
    push = (
        f"; the DS pushed by UPDATE to {settings.push_update}" if settings.push_update else ""
    ) + (f"; the DS given to {settings.push_hook}" if settings.push_hook else "")
    emit(
        {"zone": zone, "dry_run": args.dry_run, **_settings_json(settings)},
        [f"{verb}: the parent of {zone} is watched at {where}{push}",
         f"next: krs-kdc parent check {zone}"],
        as_json=args.json,
    )  # fmt: skip
    return 0


def _settings_json(settings: ParentSettings) -> dict[str, Any]:
    return {
        "agents": list(settings.agents),
        "resolver": settings.resolver,
        "trust_anchor": settings.trust_anchor,
        "port": settings.port,
        "push_update": settings.push_update,
        "tsig_file": settings.tsig_file,
        "parent_zone": settings.parent_zone,
        "push_hook": settings.push_hook,
    }


def cmd_parent_remove(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.parentwatch import set_parent

    store = open_store(args)
    zone = store.require_zone(args.zone)
    set_parent(store, zone, None, now=int(time.time()))
    verb = "would forget" if args.dry_run else "forgot"
    emit(
        {"zone": zone, "dry_run": args.dry_run},
        f"{verb} the parent of {zone}: its DS steps wait for krs-kdc ds seen|gone again",
        as_json=args.json,
    )
    return 0


def cmd_parent_show(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.parentwatch import parent_settings, watch_of

    store = open_store(args)
    zone = store.require_zone(args.zone)
    settings = parent_settings(store, zone)
    watch = watch_of(store, zone)
    now = int(time.time())
    data: dict[str, Any] = {
        "zone": zone,
        "settings": None if settings is None else _settings_json(settings),
        "watch": None if watch is None else {
            "purpose": watch.purpose, "next_at": watch.next_at, "checks": watch.checks,
            "checked_at": watch.checked_at, "why": watch.why, "view": watch.view,
            "ds_ttl": watch.ds_ttl, "pushed_at": watch.pushed_at, "push_ok": watch.push_ok,
            "push_detail": watch.push_detail,
        },
    }  # fmt: skip
    if settings is None:
        lines = [f"{zone}: no parent configured (DS steps wait for krs-kdc ds seen|gone)"]
    else:
        where = ", ".join(settings.agents) or f"NS set through {settings.resolver}"
        lines = [f"{zone}: parent watched at {where}"]
        if settings.push_update:
            lines.append(f"  push: UPDATE to {settings.push_update} (TSIG {settings.tsig_file})")
        if settings.push_hook:
            lines.append(f"  push: hook {settings.push_hook}")
        lines += watch_lines(watch.__dict__ if watch else None, now)
    emit(data, lines, as_json=args.json)
    return 0


def watch_lines(watch: dict[str, Any] | None, now: int) -> list[str]:
    """What the watch last saw, per parent address (``status`` and ``parent show``)."""
    if watch is None:
        return ["  nothing to watch for now"]
    lines = [f"  for {watch['purpose']}: {watch['why'] or 'not asked yet'}"]
    if watch.get("pushed_at"):
        result = "pushed" if watch.get("push_ok") else "push failed"
        lines.append(
            f"  DS {result} {format_time(watch['pushed_at'], now=now)}: {watch['push_detail']}"
        )
    view = watch.get("view") or {}
    if view.get("error"):
        lines.append(f"  parent: {view['error']}")
    for a in view.get("addresses", []):
        name = a["address"] if a["server"] in ("agent", a["address"]) else (
            f"{a['address']} ({a['server']})"
        )  # fmt: skip
        if a["error"]:
            lines.append(f"    {name}: {a['error']}")
        else:
            ds = ", ".join(a["ds"]) or "no DS (validated)"
            lines.append(f"    {name}: DS {ds} (TTL {a['ttl']})")
    if watch.get("checked_at"):
        lines.append(
            f"  asked {format_time(watch['checked_at'], now=now)}; "
            f"next {format_time(watch['next_at'], now=now)}"
        )
    return lines


def cmd_parent_check(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.parent import observe
    from krs_plugin.kdc.parentwatch import parent_settings, view_json

    store = open_store(args)
    zone = store.require_zone(args.zone)
    settings = parent_settings(store, zone)
    if settings is None:
        raise ConfigError(
            f"zone {zone} has no parent configured: krs-kdc parent set {zone} --agent HOST:PORT "
            "... --trust-anchor-file FILE"
        )
    view = observe(zone, settings.observe_config(), timeout=args.timeout)
    data = {"zone": zone, **view_json(view)}
    watch = {"purpose": "a check by hand", "why": None, "view": data}
    lines = [f"{zone}: parent {view.parent or '?'}", *watch_lines(watch, int(time.time()))[1:]]
    emit(data, lines, as_json=args.json)
    good = view.error is None and view.addresses and all(a.error is None for a in view.addresses)
    return 0 if good else 1


def add_parsers(sub: Any, add: Any) -> None:
    """``parent ...`` under ``sub``; ``add`` is cli.py's helper (help, --json, the command)."""
    parent = sub.add_parser(
        "parent", help="where a zone's parent is: the KDC pushes and sees its DS itself"
    ).add_subparsers(dest="parent_command", metavar="ACTION", required=True)
    p = add(parent, "set", cmd_parent_set, "watch (and push to) the zone's parent")
    p.add_argument("zone")
    p.add_argument(
        "--agent", action="append", metavar="HOST:PORT",
        help="a parent nameserver address to ask (repeatable; BIND's parental-agents)",
    )  # fmt: skip
    p.add_argument(
        "--resolver", metavar="HOST:PORT",
        help="a validating resolver: finds the parent's nameservers when no --agent is given, "
        "and validates the parent's keys when no --trust-anchor-file is",
    )  # fmt: skip
    p.add_argument(
        "--trust-anchor-file", metavar="FILE",
        help="the parent zone's DS or DNSKEY records (presentation format)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=53, help="port of nameservers found (53)")
    p.add_argument(
        "--push-update", metavar="HOST:PORT",
        help="push the DS by RFC 2136 UPDATE to the parent's primary (needs --tsig-file)",
    )  # fmt: skip
    p.add_argument(
        "--tsig-file", metavar="FILE", help="TSIG key file as tsig-keygen writes it (mode 0600)"
    )
    p.add_argument("--parent-zone", help="the zone the UPDATE is for (found by SOA if not given)")
    p.add_argument(
        "--push-hook", metavar="COMMAND",
        help="run COMMAND with the DS set on its input, one DS per line (e.g. a registrar's API)",
    )  # fmt: skip
    add_dry_run(p)
    p = add(parent, "show", cmd_parent_show, "the zone's parent and what the KDC last saw there")
    p.add_argument("zone")
    p = add(parent, "check", cmd_parent_check, "ask every parent address now (records nothing)")
    p.add_argument("zone")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per query (5)")
    p = add(parent, "remove", cmd_parent_remove, "forget the zone's parent (ds seen|gone by hand)")
    p.add_argument("zone")
    add_dry_run(p)
