"""The ``krs-kdc`` command: the Python Key Distribution Center.

State lives in one directory (``--state``, or ``$KRS_KDC_STATE``, default ``./kdc-state``): the
SQLite database ``kdc.db`` and the KDC's own keys under ``keys/``. Output and exit codes as in
``krs_plugin/cliout.py``: 0 ok, 1 operational failure, 2 usage or configuration error (including
references to things that do not exist).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from krs_plugin import __version__
from krs_plugin.cliout import add_json_option, emit, error_exit
from krs_plugin.completion import SHELLS, completion_script
from krs_plugin.confirmation import clip
from krs_plugin.crypto import write_secret_file
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.errors import ConfigError, KeyFileError, KrsError
from krs_plugin.humantime import duration_argument, format_duration, format_time
from krs_plugin.kdc.auditcli import add_parsers as add_audit_parsers
from krs_plugin.kdc.backupcli import add_parsers as add_backup_parsers
from krs_plugin.kdc.clistate import (
    DEFAULT_STATE,
    add_dry_run,
    check_address,
    close_stores,
    end_dry_runs,
    manual_zone,
    open_store,
    record_command,
    state_dir,
)
from krs_plugin.kdc.custody import kek_path
from krs_plugin.kdc.custodycli import add_custody_options, init_custody
from krs_plugin.kdc.custodycli import add_parsers as add_custody_parsers
from krs_plugin.kdc.custodycli import settings_from as custody_settings
from krs_plugin.kdc.distribute import distribute_node, distribute_zone, dnskey_of
from krs_plugin.kdc.enginecli import add_parsers as add_engine_parsers
from krs_plugin.kdc.identity import create_identity, load_identity
from krs_plugin.kdc.identitycli import add_parsers as add_identity_parsers
from krs_plugin.kdc.keygen import ROLE_FLAGS, new_key, store_key
from krs_plugin.kdc.nodecli import add_parsers as add_node_parsers
from krs_plugin.kdc.nodecli import served_json, served_text
from krs_plugin.kdc.parentcli import add_parsers as add_parent_parsers
from krs_plugin.kdc.policycli import add_parsers as add_policy_parsers
from krs_plugin.kdc.store import (
    ServedRow,
    StateError,
    Store,
    canonical,
)
from krs_plugin.kdc.wake import wake_serve
from krs_plugin.protocol.chunking import DEFAULT_CHUNK_SIZE

# --- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    state = state_dir(args)
    if (state / "kdc.db").exists():
        raise ConfigError(f"{state}: a KDC is already initialised here")
    control_zone = canonical(args.control_zone)
    custody_settings(args)  # refuse bad options before anything is made
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings, token_signer = init_custody(state, args)
    identity = create_identity(state / "keys", signer=token_signer)
    store = Store(state / "kdc.db")
    store.set_meta("custody", settings.dumps())
    store.set_meta("control_zone", control_zone)
    data = {
        "state": str(state),
        "control_zone": control_zone,
        "custody": settings.kind,
        "signing_key": identity.signer.thumbprint,
        "signing_pubkey_file": str(state / "keys" / "kdc.signing.pubkey"),
    }
    where = {"file": f"KEK {kek_path(state, settings)}",
             "pkcs11": f"signing key and KEK in token {settings.token}"}[settings.kind]  # fmt: skip
    emit(
        data,
        [
            f"initialised KDC in {state} for control zone {control_zone}",
            f"custody {settings.kind}: {where} (docs/security.md)",
            f"signing key {identity.signer.thumbprint}",
            f"give every KRS this verification key: {data['signing_pubkey_file']}",
        ],
        as_json=args.json,
    )
    return 0


def cmd_zone_add(args: argparse.Namespace) -> int:
    store = open_store(args)
    zone = store.add_zone(args.zone, policy=args.policy)
    how = f"policy {args.policy}" if args.policy else "no policy: keys by hand"
    verb = "would add" if args.dry_run else "added"
    emit(
        {"zone": zone, "policy": args.policy, "dry_run": args.dry_run},
        [f"{verb} zone {zone} ({how})"],
        as_json=args.json,
    )
    return 0


def cmd_zone_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    zones = store.zones()
    emit(zones, zones, as_json=args.json)
    return 0


DS_DIGESTS = {"SHA-256": "SHA256", "SHA-384": "SHA384"}  # our name: dnspython's


def cmd_zone_ds(args: argparse.Namespace) -> int:
    """DS, CDS and CDNSKEY of the zone's published and active KSKs/CSKs, for the parent; on a
    zone a policy runs, not those whose DS a rollover is withdrawing (the set the parent is to
    serve, docs/lifecycle.md)."""
    import dns.dnssec
    import dns.rdata

    from krs_plugin.kdc.enginestate import EngineState  # not to build the parser (enginecli.py)

    store = open_store(args)
    zone = store.require_zone(args.zone)
    digests = list(dict.fromkeys(args.digest or ["SHA-256"]))
    live = store.keys(zone, states=("published", "active"))
    rows = [r for r in live if r.role in ("KSK", "CSK")]
    leaving = EngineState(store).ds_leaving(zone)  # a rollover's: not for the parent any more
    rows = [r for r in rows if r.id not in leaving]
    if not rows:
        raise StateError(
            f"zone {zone} has no published or active KSK or CSK (a new key is published by its "
            f"first distribution: krs-kdc distribute --zone {zone}; see krs-kdc key list)"
        )
    keys, ds_lines, cds_lines = [], [], []
    for row in rows:
        dnskey = dnskey_of(row)  # the public key only: nothing is opened under the KEK
        ds = [dns.dnssec.make_ds(zone, dnskey, DS_DIGESTS[d]) for d in digests]
        cds = [dns.dnssec.make_cds(zone, dnskey, DS_DIGESTS[d]) for d in digests]
        cdnskey = dns.rdata.from_text("IN", "CDNSKEY", dnskey.to_text())
        ds_lines += [f"{zone} IN DS {r.to_text()}" for r in ds]
        cds_lines += [f"{zone} IN CDS {r.to_text()}" for r in cds]
        cds_lines.append(f"{zone} IN CDNSKEY {cdnskey.to_text()}")
        keys.append(
            {
                "key_tag": row.key_tag,
                "algorithm": row.algorithm,
                "role": row.role,
                "state": row.state,
                "ds": [
                    {
                        "digest_type": r.digest_type,
                        "digest": r.digest.hex(),
                        "text": r.to_text(),
                    }
                    for r in ds
                ],
                "cds": [r.to_text() for r in cds],
                "cdnskey": cdnskey.to_text(),
            }
        )
    if args.trust_anchors:
        lines = [_trust_anchors(zone, ds_lines)]
    else:
        lines = [
            f"; DS for the parent of {zone} ({', '.join(digests)}): give these to the registrar",
            *ds_lines,
            f"; CDS and CDNSKEY (RFC 7344, RFC 8078), for a parent that scans {zone}'s apex",
            *cds_lines,
        ]
    emit({"zone": zone, "keys": keys}, lines, as_json=args.json)
    return 0


def _trust_anchors(zone: str, ds_lines: list[str]) -> str:
    """The DS records as BIND's ``trust-anchors`` statement (``static-ds``), which ``delv -a``
    and named read: to validate the zone before its parent has the DS."""
    entries = []
    for line in ds_lines:
        tag, algorithm, digest_type, digest = line.split(" IN DS ", 1)[1].split(maxsplit=3)
        digest = digest.replace(" ", "")
        entries.append(f'    {zone} static-ds {tag} {algorithm} {digest_type} "{digest}";')
    return "trust-anchors {\n" + "\n".join(entries) + "\n};"


def cmd_key_generate(args: argparse.Namespace) -> int:
    store = open_store(args)
    zone = manual_zone(store, args.zone, "key generate")
    activate, retire, remove = args.activate_after, args.retire_after, args.remove_after
    if remove is not None and retire is None:
        raise StateError("key generate: --remove-after needs --retire-after (a key retires first)")
    if retire is not None and retire <= activate:
        raise StateError(
            f"key generate: --retire-after ({format_duration(retire)}) must be later than "
            f"--activate-after ({format_duration(activate)})"
        )
    if remove is not None and retire is not None and remove < retire:
        raise StateError(
            f"key generate: --remove-after ({format_duration(remove)}) must not be before "
            f"--retire-after ({format_duration(retire)})"
        )
    now = int(time.time())
    row = new_key(
        store,
        zone,
        args.role,
        args.algorithm,
        now=now,
        publish_at=now,
        activate_at=now + int(activate),
        inactive_at=None if retire is None else now + int(retire),
        delete_at=None if remove is None else now + int(remove),
    )
    emit(
        key_json(row),
        [f"generated {row.role} for {zone}: algorithm {row.algorithm}, tag {row.key_tag}"],
        as_json=args.json,
    )
    return 0


def cmd_key_import(args: argparse.Namespace) -> int:
    from itertools import pairwise

    store = open_store(args)
    key, timing = read_bind_key_pair(args.path)
    zone = manual_zone(store, key.zone.to_text(), "key import")
    role = args.role or ("KSK" if key.flags == 257 else "ZSK")
    if ROLE_FLAGS[role] != key.flags:
        raise StateError(
            f"{args.path}: a {role} needs flags {ROLE_FLAGS[role]}, key has {key.flags}"
        )
    now = int(time.time())
    publish = timing.publish if timing.publish is not None else now
    activate = timing.activate if timing.activate is not None else now
    # The file's Inactive and Delete too: serve and the nodes act on them as on key generate's.
    times = [("Publish", publish), ("Activate", activate), ("Inactive", timing.inactive),
             ("Delete", timing.delete)]  # fmt: skip
    present = [(name, t) for name, t in times if t is not None]
    for (first, early), (then, late) in pairwise(present):
        if late < early:
            raise StateError(
                f"{args.path}: {then} ({format_time(late)}) is before {first} "
                f"({format_time(early)}); fix the key's timing (dnssec-settime) and import again"
            )
    row = store_key(
        store, zone, key, role, now=now, publish_at=publish, activate_at=activate,
        inactive_at=timing.inactive, delete_at=timing.delete, origin="import",
    )  # fmt: skip
    emit(key_json(row), [f"imported {row.role} {zone} tag {row.key_tag}"], as_json=args.json)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = store.keys(args.zone)
    now = time.time()
    lines = []
    for r in rows:
        lines.append(f"{r.zone:28} {r.role} alg {r.algorithm:2} tag {r.key_tag:5} {r.state}")
        for label, stamp in (
            ("publish", r.publish_at),
            ("activate", r.activate_at),
            ("retire", r.inactive_at),
            ("remove", r.delete_at),
        ):
            if stamp is not None:
                lines.append(f"    {label:9}{format_time(stamp, now=now)}")
    emit([key_json(r) for r in rows], lines or ["no keys"], as_json=args.json)
    return 0


def cmd_key_retire(args: argparse.Namespace) -> int:
    """Stop signing with a key; it stays published until removed. Guarded (store.retire_key)."""
    store = open_store(args)
    manual_zone(store, args.zone, "key retire")
    row = store.retire_key(args.zone, args.tag, force=args.force, now=time.time())
    emit(
        key_json(row),
        [
            f"retired {row.role} {row.zone} tag {row.key_tag}",
            f"send it to the nodes: krs-kdc distribute --zone {row.zone}",
        ],
        as_json=args.json,
    )
    return 0


def cmd_key_remove(args: argparse.Namespace) -> int:
    """Withdraw a key: the next distribution tells the nodes to delete it. Guarded
    (store.remove_key); ``key restore`` brings it back."""
    store = open_store(args)
    manual_zone(store, args.zone, "key remove")
    row = store.remove_key(args.zone, args.tag, force=args.force, now=time.time())
    emit(
        key_json(row),
        [
            f"removed {row.role} {row.zone} tag {row.key_tag} (undo: krs-kdc key restore "
            f"--zone {row.zone} --tag {row.key_tag})",
            f"send it to the nodes: krs-kdc distribute --zone {row.zone}",
        ],
        as_json=args.json,
    )
    return 0


def cmd_key_restore(args: argparse.Namespace) -> int:
    """Bring a removed key back (its private key is still in kdc.db)."""
    store = open_store(args)
    manual_zone(store, args.zone, "key restore")
    row = store.restore_key(args.zone, args.tag, now=time.time())
    signing = "published, not signing" if row.state == "retired" else "signs from its activate time"
    emit(
        key_json(row),
        [
            f"restored {row.role} {row.zone} tag {row.key_tag}: {row.state} ({signing})",
            f"send it to the nodes again: krs-kdc distribute --zone {row.zone}",
        ],
        as_json=args.json,
    )
    return 0


def key_json(row: Any) -> dict[str, Any]:
    """A key row as ``key list --json`` shows it: never its private half."""
    data = asdict(row)
    data.pop("private_pem")  # never printed
    data.pop("sealed", None)
    return data


def cmd_distribute(args: argparse.Namespace) -> int:
    if args.all_zones:
        return _distribute_node(args)
    if not args.zone:
        raise StateError("distribute: --zone is required (or --all-zones with one --node)")
    store = open_store(args)
    identity = load_identity(state_dir(args) / "keys", store.custody)
    show = _progress if not args.json and sys.stderr.isatty() else None
    summary = distribute_zone(
        store,
        identity,
        args.zone,
        node_ids=args.node or None,
        now=time.time(),
        ttl=args.ttl,
        chunk_size=args.chunk_size,
        progress=show,
    )
    if not args.dry_run:
        wake_serve(store)  # serve NOTIFYs the nodes now, not at its next tick (kdc/wake.py)
    emit(
        asdict(summary),
        [
            f"distribution {summary.distribution_id} for {summary.zone}: {summary.key_count} "
            f"key(s), {summary.delete_count} deletion(s), to {len(summary.nodes)} node(s)"
        ],
        as_json=args.json,
    )
    return 0


def _distribute_node(args: argparse.Namespace) -> int:
    """``--all-zones``: one node's keys of every zone it serves, in one distribution."""
    if args.zone or len(args.node or []) != 1:
        raise StateError("distribute --all-zones takes exactly one --node and no --zone")
    store = open_store(args)
    identity = load_identity(state_dir(args) / "keys", store.custody)
    summary = distribute_node(
        store, identity, args.node[0], now=time.time(), ttl=args.ttl, chunk_size=args.chunk_size
    )
    if not args.dry_run:
        wake_serve(store)
    emit(
        asdict(summary),
        [
            f"distribution {summary.distribution_id} for {summary.nodes[0]}: "
            f"{len(summary.zones)} zone(s), {summary.key_count} key(s), "
            f"{summary.delete_count} deletion(s), {summary.records} record(s)"
        ],
        as_json=args.json,
    )
    return 0


def _progress(done: int, total: int) -> None:
    if total <= 5:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} nodes")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_distribution_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = store.distributions(status=args.status)
    now = time.time()
    emit(
        [asdict(r) for r in rows],
        [
            f"{r.id} {r.node_id:32} {r.zone or '-':24} {r.status:9} "
            f"created {format_time(r.created_at, now=now)}"
            + (f" at {r.stage or '?'}: {clip(r.error or '', 80)}" if r.status == "failed" else "")
            for r in rows
        ]
        or ["no distributions"],
        as_json=args.json,
    )
    return 0


def cmd_distribution_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = store.distributions(dist_id=args.distribution_id)
    if not rows:
        raise StateError(f"distribution {args.distribution_id} not found")
    served: dict[str, list[ServedRow]] = {}
    for state in store.served_state(dist_id=args.distribution_id):
        served.setdefault(state.node_id, []).append(state)
    lines = []
    now = time.time()
    for r in rows:
        lines.append(f"{r.id} node {r.node_id}: {r.status}, zone {r.zone or 'several'}, serial "
                     f"{r.serial}")  # fmt: skip
        lines.append(f"  created   {format_time(r.created_at, now=now)}")
        expired = "expired  " if r.expires_at < now else "expires  "
        lines.append(f"  {expired} {format_time(r.expires_at, now=now)}")
        lines.append(f"  notify    {_notify_text(r, now)}")
        lines.append(f"  confirmed {format_time(r.confirmed_at, now=now)}")
        if r.status == "failed":
            lines.append(
                f"  failed    {format_time(r.failed_at, now=now)} at "
                f"{r.stage or 'a stage the node did not name'} (the node's report)"
            )
        if r.error:
            lines.append(f"  error: {r.error}")
        for state in served.get(r.node_id, []):
            lines.append(f"  served {state.zone}: {served_text(state, now)}")
    emit(
        [{**asdict(r), "served": [served_json(x) for x in served.get(r.node_id, [])]}
         for r in rows],
        lines,
        as_json=args.json,
    )  # fmt: skip
    return 0


def _notify_text(row: Any, now: float) -> str:
    """``not notified yet`` or ``notified 3 times, last ...; acknowledged ...``."""
    if not row.notify_attempts:
        return "not notified yet"
    times = "once" if row.notify_attempts == 1 else f"{row.notify_attempts} times"
    text = f"notified {times}, last {format_time(row.notified_at, now=now)}"
    if row.notify_acked_at is None:
        return text + ", not acknowledged"
    return text + f", acknowledged {format_time(row.notify_acked_at, now=now)}"


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from krs_plugin.dnsio import connection_budget_problem
    from krs_plugin.kdc.server import ServeOptions, serve
    from krs_plugin.logs import setup_logging

    store = open_store(args)
    store.actor = "serve"  # the audit trail's name for what serve records
    control_zone = store.get_meta("control_zone")
    if control_zone is None:
        raise ConfigError(f"{state_dir(args)}: no control zone recorded (run init)")
    listen = []
    for text in args.listen or ["127.0.0.1:5354"]:
        check_address(text)
        host, _, port = text.rpartition(":")
        listen.append((host.strip("[]"), int(port)))
    if args.max_connections is not None:
        problem = connection_budget_problem(args.max_connections, len(listen))
        if args.max_connections < 1 or problem is not None:
            raise ConfigError(f"--max-connections: {problem or 'must be at least 1'}")
    if args.tcp_idle_timeout <= 0:
        raise ConfigError("--tcp-idle-timeout: must be more than 0 seconds")
    if args.clock_skew < 0:
        raise ConfigError("--clock-skew: must be 0 seconds or more")
    metrics = None
    if args.metrics is not None:
        check_address(args.metrics)
        host, _, port = args.metrics.rpartition(":")
        metrics = (host.strip("[]"), int(port))
    setup_logging(args.log_format)
    if store.custody.kind == "legacy":
        import logging

        logging.getLogger("krs_plugin.kdc.custody").warning(
            "kdc.db holds the zones' private keys in the clear (custody legacy): seal them with "
            "krs-kdc custody migrate --to file (docs/security.md, 'Key custody')"
        )
    options = ServeOptions(
        listen=tuple(listen),
        notify_retry_base=args.notify_retry,
        notify_retry_max=args.notify_retry_max,
        clock_skew=args.clock_skew,
        max_connections=args.max_connections,
        tcp_idle_timeout=args.tcp_idle_timeout,
        resend_after=args.resend_after,
        metrics=metrics,
        parent_check_interval=args.parent_check_interval,
        parent_check_max=max(args.parent_check_max, args.parent_check_interval),
    )
    options = dataclasses.replace(options, **primary_options(args))
    identity = load_identity(state_dir(args) / "keys", store.custody)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(store, control_zone, options, identity))
    return 0


def primary_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--also-notify``, ``--allow-transfer`` and ``--tsig-key`` as ServeOptions fields: the
    control zone as a hidden primary (docs/scale.md). Each secondary NOTIFYed may transfer."""
    from krs_plugin.kdc.publisher import PublishTarget
    from krs_plugin.kdc.xfr import TransferPolicy, parse_networks
    from krs_plugin.tsigkey import read_tsig_key

    secondaries = []
    for text in args.also_notify or []:
        check_address(text)
        host, _, port = text.rpartition(":")
        secondaries.append((host.strip("[]"), int(port)))
    try:
        allow = parse_networks([*(args.allow_transfer or []), *(h for h, _ in secondaries)])
    except ValueError as exc:
        raise ConfigError(f"--allow-transfer: {exc}") from None
    key = read_tsig_key(args.tsig_key) if args.tsig_key else None
    publish = None
    if args.publish_to:
        if key is None:
            raise ConfigError("--publish-to needs --tsig-key (the primary takes signed UPDATEs)")
        check_address(args.publish_to)
        host, _, port = args.publish_to.rpartition(":")
        publish = PublishTarget(host.strip("[]"), int(port), key)
    return {
        "also_notify": tuple(secondaries),
        "transfers": TransferPolicy(allow, key),
        "publish": publish,
    }


def cmd_enroll_create(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.enroll import create_package

    store = open_store(args)
    identity = load_identity(state_dir(args) / "keys", store.custody)
    check_address(args.kdc_address)
    valid = int(args.valid)
    issued = create_package(
        store, identity, args.node, zones=args.zones, backend=args.backend, valid_for=valid,
        kdc_address=args.kdc_address, now=time.time(),
    )  # fmt: skip
    package = issued.package
    output = Path(args.output or f"{package.node_id.rstrip('.')}.enroll")
    try:
        write_secret_file(output, package.to_text())
    except (OSError, KeyFileError) as exc:
        # Nobody holds the package: its token must not stay open (docs/enrollment.md).
        store.revoke_tokens(token_id=issued.token.token_id, now=time.time())
        raise ConfigError(f"cannot write the package: {exc}; token revoked") from exc
    data = {
        "node_id": package.node_id,
        "token_id": issued.token.token_id,
        "backend": package.backend,
        "zones": list(package.zones),
        "valid_until": package.valid_until,
        "file": str(output),
    }
    emit(
        data,
        [
            f"enrollment package for {package.node_id} written to {output} (0600)",
            f"token {issued.token.token_id}, {package.backend}, zones "
            f"{', '.join(package.zones) or 'none'}, valid until "
            f"{format_time(issued.token.expires_at)}",
            f"on the node: krs enroll {output.name}",
        ],
        as_json=args.json,
    )
    return 0


MAX_PACKAGE_VALIDITY = 7 * 86400  # a package is a bearer secret: keep it short


def cmd_enroll_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = time.time()
    tokens = store.tokens(args.node)
    rows = [
        {
            "token_id": t.token_id,
            "node_id": t.node_id,
            "backend": t.backend,
            "zones": list(t.zones),
            "created_at": t.created_at,
            "expires_at": t.expires_at,
            "used_at": t.used_at,
            "revoked_at": t.revoked_at,
            "status": t.status(now),
        }
        for t in tokens
    ]
    lines = [
        f"{t.token_id} {t.node_id:32} {t.backend:7} {t.status(now):8} "
        + (
            f"used {format_time(t.used_at, now=now)}"
            if t.used_at is not None
            else f"revoked {format_time(t.revoked_at, now=now)}"
            if t.revoked_at is not None
            else f"{'expired' if t.expires_at < now else 'until'} "
            f"{format_time(t.expires_at, now=now)}"
        )
        for t in tokens
    ] or ["no enrollment tokens"]
    emit(rows, lines, as_json=args.json)
    return 0


def cmd_enroll_revoke(args: argparse.Namespace) -> int:
    store = open_store(args)
    if bool(args.node) == bool(args.token):
        raise StateError("enroll revoke: give --node or --token (one of them)")
    revoked = store.revoke_tokens(node_id=args.node, token_id=args.token, now=time.time())
    if not revoked:
        what = f"node {canonical(args.node)}" if args.node else f"token {args.token}"
        raise StateError(f"no open enrollment token for {what} (see: krs-kdc enroll list)")
    ids = [t.token_id for t in revoked]
    emit({"revoked": ids}, [f"revoked token {i}" for i in ids], as_json=args.json)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Completion made from this parser (krs_plugin/completion.py); needs no state."""
    sys.stdout.write(completion_script(build_parser(), args.shell))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from krs_plugin.kdc.export import export_zone

    store = open_store(args)
    text = export_zone(store, store.get_meta("control_zone") or "")
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krs-kdc",
        description=(
            "Key Distribution Center: generates DNSSEC keys, seals them per node, publishes them "
            "as CHUNK records in a control zone and sends NOTIFY."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--state", help=f"state directory (default $KRS_KDC_STATE or ./{DEFAULT_STATE})"
    )
    add_json_option(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(parent: Any, name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        p = parent.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        add_json_option(p)
        return p

    p = add(sub, "init", cmd_init, "create the state directory, database and KDC keys")
    p.add_argument("--control-zone", required=True, help="e.g. kdc.example.")
    add_custody_options(p, target="init")

    zone = sub.add_parser("zone", help="zones whose keys this KDC manages").add_subparsers(
        dest="zone_command", metavar="ACTION", required=True
    )
    p = add(zone, "add", cmd_zone_add, "add a zone")
    add_dry_run(p)
    p.add_argument("zone")
    p.add_argument(
        "--policy", metavar="NAME", help="the key policy its keys roll by (default: none, by hand)"
    )
    add_policy_parsers(sub, zone, add)
    add(zone, "list", cmd_zone_list, "list zones")
    p = add(
        zone,
        "ds",
        cmd_zone_ds,
        "print the DS records (and CDS/CDNSKEY) of the zone's published and active KSKs and "
        "CSKs, in zone-file form for the registrar or the parent",
    )
    p.add_argument("zone")
    p.add_argument(
        "--digest",
        action="append",
        choices=tuple(DS_DIGESTS),
        help="DS digest (repeatable; default SHA-256)",
    )
    p.add_argument(
        "--trust-anchors",
        action="store_true",
        help="print the DS records as a trust-anchors statement (static-ds) for delv -a or "
        "named, to validate the zone before the parent serves its DS",
    )

    node = add_node_parsers(sub, add)
    add_engine_parsers(sub, node, add)
    add_parent_parsers(sub, add)

    key = sub.add_parser("key", help="DNSSEC keys").add_subparsers(
        dest="key_command", metavar="ACTION", required=True
    )
    p = add(key, "generate", cmd_key_generate, "generate a key for a zone")
    add_dry_run(p)
    p.add_argument("--zone", required=True)
    p.add_argument("--role", choices=tuple(ROLE_FLAGS), required=True)
    p.add_argument("--algorithm", type=int, choices=(8, 13, 14, 15, 16), default=13)
    when = duration_argument(whole=True)
    p.add_argument(
        "--activate-after",
        type=when,
        default=0.0,
        metavar="DURATION",
        help="published now, signing this long after (e.g. 1h; default 0: at once)",
    )
    p.add_argument(
        "--retire-after",
        type=when,
        metavar="DURATION",
        help="stops signing this long after now (its inactive time; e.g. 30d)",
    )
    p.add_argument(
        "--remove-after",
        type=when,
        metavar="DURATION",
        help="withdrawn from the zone this long after now (its delete time; needs --retire-after)",
    )
    p = add(key, "import", cmd_key_import, "import a BIND key pair (.key/.private)")
    add_dry_run(p)
    p.add_argument("path")
    p.add_argument("--role", choices=tuple(ROLE_FLAGS))
    force = (
        "also when it leaves the zone without a signing key of its role, or the key is a "
        "published KSK/CSK whose DS may be at the parent"
    )
    p = add(
        key,
        "retire",
        cmd_key_retire,
        "stop signing with a key (it stays published); refused when that breaks the zone",
    )
    p.add_argument("--zone", required=True)
    p.add_argument("--tag", type=int, required=True)
    add_dry_run(p)
    p.add_argument("--force", action="store_true", help=force)
    p = add(
        key,
        "remove",
        cmd_key_remove,
        "withdraw a key; nodes delete it on the next distribution; refused when that breaks the "
        "zone (undo: key restore)",
    )
    p.add_argument("--zone", required=True)
    p.add_argument("--tag", type=int, required=True)
    add_dry_run(p)
    p.add_argument("--force", action="store_true", help=force)
    p = add(
        key,
        "restore",
        cmd_key_restore,
        "bring a removed key back (retired when its retire time has passed, else published); "
        "the next distribution sends it again",
    )
    p.add_argument("--zone", required=True)
    p.add_argument("--tag", type=int, required=True)
    add_dry_run(p)
    p = add(key, "list", cmd_key_list, "list keys")
    p.add_argument("--zone")

    p = add(sub, "distribute", cmd_distribute, "seal the zone's keys for its nodes and publish")
    add_dry_run(p)
    p.add_argument("--zone", help="the zone whose keys to send (or --all-zones)")
    p.add_argument("--node", action="append", help="only this node (repeatable)")
    p.add_argument(
        "--all-zones",
        action="store_true",
        help="with one --node: the keys of every zone it serves, in one distribution",
    )
    p.add_argument(
        "--ttl",
        type=duration_argument(minimum=1, whole=True),
        default=300,
        metavar="DURATION",
        help="how long the distribution stays valid (default 300s; e.g. 15m)",
    )
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)

    dist = sub.add_parser("distribution", help="distributions and their status").add_subparsers(
        dest="distribution_command", metavar="ACTION", required=True
    )
    p = add(dist, "list", cmd_distribution_list, "list distributions")
    p.add_argument("--status", choices=("pending", "confirmed", "failed", "expired"))
    p = add(dist, "show", cmd_distribution_show, "show one distribution")
    p.add_argument("distribution_id")

    p = add(sub, "serve", cmd_serve, "serve the control zone, send NOTIFY, take confirmations")
    p.add_argument("--listen", action="append", help="host:port (repeatable; 127.0.0.1:5354)")
    p.add_argument(
        "--notify-retry",
        type=duration_argument(),
        default=1.0,
        metavar="DURATION",
        help="first wait before a NOTIFY is sent again, doubling (1s)",
    )
    p.add_argument(
        "--notify-retry-max",
        type=duration_argument(),
        default=60.0,
        metavar="DURATION",
        help="longest wait between NOTIFYs (60s)",
    )
    p.add_argument(
        "--clock-skew",
        type=duration_argument(),
        default=30.0,
        metavar="DURATION",
        help="clock difference allowed in a signed confirmation's time (30)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open TCP connections per listener (default: from the descriptor limit, at most 256)",
    )
    p.add_argument(
        "--tcp-idle-timeout",
        type=duration_argument(),
        default=30.0,
        metavar="DURATION",
        help="close a TCP connection without a complete message for this long (30s)",
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="log lines as krs run writes them, times in UTC: JSON, text, or auto (text on a "
        "terminal)",
    )
    p.add_argument(
        "--resend-after",
        type=duration_argument(),
        default=600.0,
        metavar="DURATION",
        help="send a rollover step again to a node that confirmed it but serves something else "
        "(10m)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz there (e.g. 127.0.0.1:9154; off by default)",
    )
    p.add_argument(
        "--also-notify",
        action="append",
        metavar="HOST:PORT",
        help="a secondary of the control zone: NOTIFYed at every new serial and allowed to "
        "transfer the zone (repeatable; docs/scale.md)",
    )
    p.add_argument(
        "--allow-transfer",
        action="append",
        metavar="ADDRESS[/LEN]",
        help="also allow AXFR/IXFR of the control zone from there (repeatable; none by default)",
    )
    p.add_argument(
        "--tsig-key",
        metavar="FILE",
        help="zone transfers must be signed with this TSIG key, and NOTIFYs to secondaries and "
        "UPDATEs to --publish-to are (a BIND key file, as tsig-keygen writes it; not readable by "
        "others)",
    )
    p.add_argument(
        "--publish-to",
        metavar="HOST:PORT",
        help="publish the control zone into this existing primary by RFC 2136 UPDATE signed with "
        "--tsig-key, at every change (docs/scale.md)",
    )
    p.add_argument(
        "--parent-check-interval",
        type=duration_argument(minimum=1),
        default=60.0,
        metavar="DURATION",
        help="first wait between looks at a parent for a DS change, doubling (1m)",
    )
    p.add_argument(
        "--parent-check-max",
        type=duration_argument(minimum=1),
        default=3600.0,
        metavar="DURATION",
        help="longest wait between looks at a parent (1h)",
    )
    enroll = sub.add_parser(
        "enroll", help="bootstrap packages: a new node joins without pre-shared keys"
    ).add_subparsers(dest="enroll_command", metavar="ACTION", required=True)
    p = add(enroll, "create", cmd_enroll_create, "write a single-use package for a new node")
    p.add_argument("--node", required=True, help="the new node's id, an FQDN")
    p.add_argument("--zones", nargs="+", required=True, metavar="ZONE", help="zones it serves")
    p.add_argument("--backend", choices=("hpke", "jose", "hpke-pq"), default="hpke")
    p.add_argument(
        "--valid",
        type=duration_argument(
            minimum=1,
            maximum=MAX_PACKAGE_VALIDITY,
            whole=True,
            why=" (a package is a secret: keep it short)",
        ),
        default=900,
        metavar="DURATION",
        help="how long the package works (default 15m; e.g. 2h, 1d; at most 7d)",
    )
    p.add_argument(
        "--kdc-address",
        default="127.0.0.1:5354",
        help="where the node reaches krs-kdc serve (host:port; default 127.0.0.1:5354)",
    )
    p.add_argument("--output", "-o", help="package file (default <node>.enroll)")
    p = add(enroll, "list", cmd_enroll_list, "list enrollment tokens and their status")
    p.add_argument("--node")
    p = add(enroll, "revoke", cmd_enroll_revoke, "revoke open tokens of a node, or one token")
    add_dry_run(p)
    p.add_argument("--node")
    p.add_argument("--token", help="a token id from enroll list")

    add_audit_parsers(sub, add)

    add_custody_parsers(sub, add)

    add_identity_parsers(sub, add)

    add_backup_parsers(sub, add)

    p = add(sub, "export", cmd_export, "write the control zone as a standard zone file")
    p.add_argument("--output", "-o", help="file (default: standard output)")

    p = add(sub, "completion", cmd_completion, "print the shell completion script of krs-kdc")
    p.add_argument("shell", choices=SHELLS, help="bash, or zsh (through its bashcompinit)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        status = int(func(args))
        if status == 0:
            record_command(args, sys.argv[1:] if argv is None else argv)
        return status
    except KrsError as exc:
        return error_exit("krs-kdc", exc, (ConfigError, StateError, KeyFileError))
    finally:
        if end_dry_runs():
            print("krs-kdc: dry run: nothing was changed", file=sys.stderr)
        close_stores()


if __name__ == "__main__":
    sys.exit(main())
