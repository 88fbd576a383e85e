"""``krs-kdc audit verify|export|list``: the audit trail (kdc/audit.py; docs/security.md, "Audit
trail"). cli.py only wires these in. ``audit verify --pack FILE --key FILE`` needs no state
directory: it is the auditor's offline check of an evidence pack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.crypto import JoseKey, load_jose_key
from krs_plugin.crypto.keys import write_public_file
from krs_plugin.errors import ConfigError, KeyFileError
from krs_plugin.humantime import format_time, past_time_argument
from krs_plugin.kdc import audit
from krs_plugin.kdc.clistate import open_store, state_dir
from krs_plugin.kdc.store import canonical

SIGNING_PUBKEY = "kdc.signing.pubkey"


def _anchors(args: argparse.Namespace) -> list[JoseKey]:
    """The KDC signing public key(s) the chain is checked against: ``--key`` (repeatable), else
    the state directory's ``keys/kdc.signing.pubkey``."""
    paths = [Path(p) for p in args.key or []]
    if not paths:
        paths = [state_dir(args) / "keys" / SIGNING_PUBKEY]
    keys = []
    for path in paths:
        try:
            keys.append(load_jose_key(path).public_only())
        except (KeyFileError, OSError) as exc:
            raise ConfigError(f"KDC signing public key {path}: {exc}") from exc
    return keys


def _verdict_lines(verdict: audit.Verdict, what: str) -> list[str]:
    head = verdict.head
    head_text = "none (empty)" if head is None else f"{head[0]}:{head[1]}"
    if verdict.broken is None:
        lines = [f"{what}: {verdict.entries} entries, chain and signatures verified"]
    else:
        b = verdict.broken
        lines = [f"{what}: BROKEN at entry {b.seq}: {b.reason}: {b.detail}"]
    lines.append(f"head {head_text}")
    if verdict.broken is None and head is not None:
        lines.append(
            f"note the head elsewhere; later: krs-kdc audit verify --expect-head {head_text}"
        )
    return lines


def cmd_audit_verify(args: argparse.Namespace) -> int:
    expect = audit.parse_head(args.expect_head) if args.expect_head else None
    if args.pack:
        if not args.key:
            raise ConfigError(
                "audit verify --pack needs --key FILE: the KDC signing public key "
                "(kdc.signing.pubkey) as you hold it, not as the pack carries it"
            )
        try:
            pack = json.loads(Path(args.pack).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"evidence pack {args.pack}: {exc}") from exc
        if not isinstance(pack, dict):
            raise ConfigError(f"evidence pack {args.pack}: not a JSON object")
        verdict = audit.verify_pack(pack, _anchors(args), expect_head=expect)
        data = {**verdict.to_json(), "pack": args.pack, "filter": pack.get("filter")}
        lines = _verdict_lines(verdict, f"evidence pack {args.pack}")
        if verdict.ok:
            shown = [e for e in pack["entries"] if "kind" in e]
            filt = pack.get("filter") or {}
            lines.insert(
                1,
                f"entries {pack['entries'][0]['seq']} to {verdict.head[0] if verdict.head else '?'}"
                f": {len(shown)} with content (zone {filt.get('zone') or 'any'}, since "
                f"{format_time(filt.get('since'))}), {verdict.entries - len(shown)} of others "
                "without",
            )
        emit(data, lines, as_json=args.json)
        return 0 if verdict.ok else 1
    store = open_store(args)
    verdict = audit.verify(store.db, _anchors(args), expect_head=expect)
    emit(verdict.to_json(), _verdict_lines(verdict, "audit trail"), as_json=args.json)
    return 0 if verdict.ok else 1


def cmd_audit_export(args: argparse.Namespace) -> int:
    store = open_store(args)
    zone = canonical(args.zone) if args.zone else None
    anchors = _anchors(args)
    pack = audit.export_pack(store.db, anchors, zone=zone, since=args.since)
    verdict = audit.verify_pack(pack, anchors)
    if not verdict.ok:  # it would fail at the auditor's: say so here, write nothing
        assert verdict.broken is not None
        raise audit.AuditError(
            f"the audit trail is broken at entry {verdict.broken.seq} "
            f"({verdict.broken.reason}: {verdict.broken.detail}); no pack written (krs-kdc "
            "audit verify)"
        )
    text = json.dumps(pack, indent=1, sort_keys=True) + "\n"
    entries = pack["entries"]
    whole = sum(1 for e in entries if "kind" in e)
    summary = {
        "file": args.output,
        "entries": len(entries),
        "with_content": whole,
        "first": entries[0]["seq"],
        "head": pack["head"],
    }
    if args.output:
        write_public_file(args.output, text)
        emit(
            summary,
            [
                f"evidence pack written to {args.output}: entries {entries[0]['seq']} to "
                f"{pack['head']['seq']}, {whole} with content, {len(entries) - whole} of others "
                "without",
                f"the auditor checks it with: krs-kdc audit verify --pack {args.output} "
                f"--key {SIGNING_PUBKEY}",
            ],
            as_json=args.json,
        )
    else:
        sys.stdout.write(text)
    return 0


def cmd_audit_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    zone = canonical(args.zone) if args.zone else None
    found = audit.entries(store.db, zone=zone, since=args.since)
    now = time.time()
    lines = []
    for e in found:
        where = " ".join(x for x in (e.zone, e.node) if x) or "-"
        details = audit.canonical_json(e.details)
        if len(details) > 160:
            details = details[:157] + "..."
        lines.append(f"{e.seq:6} {format_time(e.at, now=now)} {e.kind:22} {where} ({e.actor})")
        lines.append(f"       {details}")
    emit([e.to_json() for e in found], lines or ["no audit entries"], as_json=args.json)
    return 0


def add_parsers(sub: Any, add: Any) -> None:
    """``audit ...`` under ``sub``; ``add`` is cli.py's helper (help, --json, the command)."""
    group = sub.add_parser(
        "audit", help="the signed, hash-chained audit trail of every change"
    ).add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = add(
        group,
        "verify",
        cmd_audit_verify,
        "check the audit trail (or an evidence pack, offline): every entry, hash and signature; "
        "print the head; exit 1 on a broken chain",
    )
    p.add_argument(
        "--expect-head",
        metavar="SEQ:HASH",
        help="the head noted earlier: a log cut short after it is found",
    )
    p.add_argument(
        "--pack", metavar="FILE", help="verify this evidence pack (audit export); no kdc.db needed"
    )
    p.add_argument(
        "--key",
        action="append",
        metavar="FILE",
        help=f"KDC signing public key ({SIGNING_PUBKEY}) to check signatures with (repeatable; "
        "default: the state directory's; required with --pack)",
    )
    p = add(
        group,
        "export",
        cmd_audit_export,
        "write an evidence pack: the entries of a zone from a time, the chain to the head and "
        "the KDC's signing public keys",
    )
    p.add_argument("--zone", help="the zone's entries whole, others without content")
    add_since(p)
    p.add_argument("--output", "-o", metavar="FILE", help="pack file (default: standard output)")
    p.add_argument("--key", action="append", metavar="FILE", help=argparse.SUPPRESS)
    p = add(group, "list", cmd_audit_list, "list audit entries")
    p.add_argument("--zone", help="only entries that concern this zone")
    add_since(p)


def add_since(parser: argparse.ArgumentParser) -> None:
    """``--since TIME``, the same for ``audit export`` and ``audit list``."""
    parser.add_argument(
        "--since",
        type=past_time_argument(),
        metavar="TIME",
        help="from this time: a duration back (7d) or an ISO 8601 UTC time (2026-12-01)",
    )
