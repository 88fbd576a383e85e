"""``krs kdc-keys`` and ``krs trust-kdc-key``: the KDC verification keys this node trusts
(receiver/kdctrust.py; docs/security.md, "Rotation"; docs/operations.md, "The KDC's keys").

A node that missed a whole signing-key roll refuses the KDC's distributions at stage
``signature``; its operator trusts the new key by hand, and only after checking it out of band:
the command takes the key file and its RFC 7638 thumbprint as read from the KDC operator
(``krs-kdc identity status``), and refuses a key whose thumbprint is another.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import JoseKey, load_jose_key
from krs_plugin.errors import ConfigError, KeyFileError
from krs_plugin.humantime import format_time
from krs_plugin.receiver import kdctrust
from krs_plugin.receiver.store import ReceiverStore


def _configured(config: Config) -> JoseKey | None:
    path = config.kdc.verification_key
    return None if path is None else load_jose_key(path).public_only()


def trust_rows(config: Config, store: ReceiverStore) -> list[dict[str, Any]]:
    """Every KDC key the node knows: trusted ones first (the one that verified last first),
    then those a roll dropped."""
    configured = _configured(config)
    trusted = kdctrust.trusted_keys(store.db, configured)
    rows: list[dict[str, Any]] = [
        {"thumbprint": k.thumbprint, "state": "trusted", "source": k.source,
         "verified_at": k.verified_at}
        for k in trusted
    ]  # fmt: skip
    shown = {k.thumbprint for k in trusted}
    try:
        dropped = store.db.execute(
            "SELECT thumbprint, source, changed_at FROM kdc_trust WHERE state = 'dropped'"
        ).fetchall()
    except sqlite3.OperationalError:
        dropped = []
    for thumbprint, source, changed_at in (tuple(r) for r in dropped):
        if thumbprint not in shown:
            rows.append({"thumbprint": thumbprint, "state": "dropped", "source": source,
                         "verified_at": None, "dropped_at": changed_at})  # fmt: skip
    return rows


def status_lines(config: Config, store: ReceiverStore) -> list[str]:
    """``krs status``'s lines on the KDC keys."""
    now = time.time()
    lines = ["KDC verification keys:"]
    for row in trust_rows(config, store):
        when = row["verified_at"] or row.get("dropped_at")
        seen = f", last verified {format_time(when, now=now)}" if row["verified_at"] else ""
        if row["state"] == "dropped":
            seen = f", dropped {format_time(when, now=now)}" if when else ""
        lines.append(f"  {row['thumbprint']} {row['state']} ({row['source']}{seen})")
    if len(lines) == 1:
        lines.append("  none (kdc.allow_unsigned)")
    return lines


def kdc_keys_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = ReceiverStore(config.state)
    try:
        rows = trust_rows(config, store)
        emit(rows, status_lines(config, store)[1:], as_json=args.json)
    finally:
        store.close()
    return 0


def trust_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        key = load_jose_key(args.file).public_only()
    except (KeyFileError, OSError) as exc:
        raise ConfigError(f"trust-kdc-key: {args.file}: {exc}") from exc
    given = args.fingerprint.strip().removeprefix("SHA256:")
    if given != key.thumbprint:
        raise ConfigError(
            f"trust-kdc-key: {args.file} holds the key {key.thumbprint}, not {given!r}: "
            "nothing was changed. Get the key file again and compare its thumbprint with the "
            "KDC operator's (krs-kdc identity status) over a channel you trust"
        )
    store = ReceiverStore(config.state)
    try:
        kdctrust.trust_key(store.db, key)
    finally:
        store.close()
    emit(
        {"thumbprint": key.thumbprint, "state": "trusted", "source": "operator"},
        [
            f"KDC key {key.thumbprint} trusted (krs.db); krs run accepts distributions signed "
            "by it from now on, without a restart",
            "the KDC sends this node its keys again (krs-kdc serve, every --resend-after) once "
            "it heard of the refusal; or on the KDC: krs-kdc distribute --node NODE --all-zones",
        ],
        as_json=args.json,
    )
    return 0


def add_parsers(commands: Any, config_option: Any, json_option: Any) -> None:
    p = commands.add_parser(
        "kdc-keys",
        help="the KDC verification keys this node trusts",
        description="the KDC verification keys this node trusts: krs.yaml's, those a KDC "
        "signing-key roll announced, those trusted by hand, and those a roll dropped",
    )
    config_option(p)
    json_option(p)
    p = commands.add_parser(
        "trust-kdc-key",
        help="trust a new KDC signing key checked out of band (a roll this node missed)",
        description=(
            "Trust the KDC signing public key in FILE, once its RFC 7638 thumbprint equals "
            "--fingerprint, which you read from the KDC operator (krs-kdc identity status) "
            "over a channel you trust. Recorded in krs.db (krs.yaml is not changed); krs run "
            "uses it at the next distribution (docs/security.md, 'Rotation')."
        ),
    )
    p.add_argument("file", help="the KDC's kdc.signing.pubkey (a public JWK)")
    p.add_argument(
        "--fingerprint",
        required=True,
        metavar="THUMBPRINT",
        help="the key's RFC 7638 SHA-256 thumbprint (base64url), as krs-kdc identity status "
        "prints it; write it --fingerprint=THUMBPRINT, since a thumbprint may begin with '-'",
    )
    config_option(p)
    json_option(p)
