"""``krs-kdc backup``, ``backup verify``, ``backup key generate`` and ``restore`` (kdc/backup.py,
docs/kdc.md "Backup and restore")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    load_hpke_private,
    load_hpke_public,
    load_jose_key,
    write_hpke_private,
    write_hpke_public,
)
from krs_plugin.errors import ConfigError, KeyFileError
from krs_plugin.humantime import format_time
from krs_plugin.kdc import backup as bk
from krs_plugin.kdc.clistate import operator, state_dir


def _recipient(args: argparse.Namespace) -> HpkeKey:
    path = Path(args.recipient) if args.recipient else state_dir(args) / bk.DEFAULT_RECIPIENT
    try:
        return load_hpke_public(path)
    except KeyFileError as exc:
        raise ConfigError(
            f"backup: the backup public key {path}: {exc} (make the pair with: krs-kdc backup "
            "key generate, on another host; give the public half with --recipient)"
        ) from exc


def _private(args: argparse.Namespace) -> HpkeKey:
    try:
        key = load_hpke_private(args.key)
    except KeyFileError as exc:
        raise ConfigError(f"backup private key {args.key}: {exc}") from exc
    return key


def _signing(args: argparse.Namespace) -> JoseKey | None:
    if not args.signing_key:
        return None
    try:
        return load_jose_key(args.signing_key).public_only()
    except KeyFileError as exc:
        raise ConfigError(f"--signing-key {args.signing_key}: {exc}") from exc


def cmd_backup(args: argparse.Namespace) -> int:
    if not args.output:
        raise ConfigError("backup: --output FILE or DIRECTORY is needed")
    state = state_dir(args)
    data, header = bk.make_backup(state, _recipient(args))
    path = bk.output_path(Path(args.output), header)
    bk.write_backup(path, data)
    result = {**header, "file": str(path), "bytes": len(data)}
    lines = [
        f"backup {header['backup_id']} of KDC {header['kdc']['control_zone']} written to {path} "
        f"({len(data)} bytes, 0600), audit head {header['audit_head']}",
        f"sealed to backup key {header['recipient'][:16]}; the KEK is not in it (custody "
        f"{header['custody']['kind']}): keep a copy of it apart (docs/kdc.md)",
    ]
    if header["custody"]["kind"] == "legacy":
        lines.append(
            "kdc.db holds its DNSSEC keys in the clear (custody legacy), and so does the backup "
            "inside its encryption: seal them with krs-kdc custody migrate --to file"
        )
    emit(result, lines, as_json=args.json)
    return 0


def _report_lines(report: dict[str, Any], verb: str) -> list[str]:
    lines = [
        f"backup {report['backup_id']} of KDC {report['kdc']['control_zone']} "
        f"(signing key {report['kdc']['signing_key']}), taken {format_time(report['created_at'])}"
        f": {verb}",
        f"  audit trail: {report['audit_entries']} entries verify, head {report['audit_head']}",
        f"  keys: {report['keys']} ({report['keys_sealed']} sealed, custody {report['custody']})",
    ]
    if report.get("kek_checked"):
        lines.append(f"  the KEK ({report['kek']}) opens every sealed key")
    elif report["custody"] != "legacy":
        lines.append(f"  KEK not checked: {report.get('kek_problem')}")
    else:
        lines.append("  custody legacy: kdc.db holds its keys in the clear (no KEK)")
    return lines


def cmd_backup_verify(args: argparse.Namespace) -> int:
    path = Path(args.file)
    opened = bk.open_backup(bk.read_file(path), _private(args), str(path))
    kek = Path(args.kek_file) if args.kek_file else None
    report = bk.check(
        opened,
        state_dir(args),
        kek_file=kek,
        expect_signing=_signing(args),
        need_kek=args.require_kek or kek is not None,
    )
    emit(report, _report_lines(report, "opens and checks"), as_json=args.json)
    return 0


def cmd_backup_key_generate(args: argparse.Namespace) -> int:
    private, public = Path(args.private), Path(args.public)
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"backup key generate: {path} exists; refusing to replace it")
    key = HpkeKey.generate()
    write_hpke_private(private, key, comment="krs-kdc backup key: keep it off the KDC host")
    write_hpke_public(public, key, comment="krs-kdc backup public key (krs-kdc backup --recipient)")
    data = {"private": str(private), "public": str(public), "fingerprint": key.fingerprint}
    lines = [
        f"backup key {key.fingerprint}: private half {private} (0600: keep it offline), public "
        f"half {public} (on the KDC host: STATE/{bk.DEFAULT_RECIPIENT} or --recipient)"
    ]
    emit(data, lines, as_json=args.json)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    path = Path(args.file)
    opened = bk.open_backup(bk.read_file(path), _private(args), str(path))
    kek = Path(args.kek_file) if args.kek_file else None
    state = state_dir(args)
    if args.check:
        report = bk.check(opened, state, kek_file=kek, expect_signing=_signing(args))
        emit(report, _report_lines(report, "opens and checks; nothing written"), as_json=args.json)
        return 0
    report = bk.restore(
        opened,
        state,
        actor=operator(),
        force=args.force,
        kek_file=kek,
        expect_signing=_signing(args),
    )
    lines = _report_lines(report, f"restored into {state}")
    lines.append(f"  audit entry 'restored from backup {report['backup_id']}': head now "
                 f"{report['audit_head_after']}")  # fmt: skip
    emit(report, lines, as_json=args.json)
    return 0


def _opening_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the backup file")
    p.add_argument("--key", required=True, metavar="FILE", help="the backup private key")
    p.add_argument(
        "--kek-file",
        metavar="FILE",
        help="a copy of the KDC's KEK (custody file), when it is not at STATE/keys/kdc.kek or "
        "in the systemd credential kdc-kek",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="the KDC signing public key as the nodes hold it: refuse a backup of another KDC",
    )


def add_parsers(sub: Any, add: Any) -> None:
    """``backup ...`` and ``restore`` under ``sub``; ``add`` is cli.py's helper."""
    p = add(
        sub,
        "backup",
        cmd_backup,
        "write kdc.db (one snapshot, while serve runs) and keys/ but the KEK, encrypted to a "
        "backup public key, as one 0600 file",
    )
    p.add_argument(
        "--output", "-o", metavar="PATH", help="the file, or a directory (kdc-TIME-ID.krsbackup)"
    )
    p.add_argument(
        "--recipient",
        metavar="FILE",
        help=f"the backup public key (default STATE/{bk.DEFAULT_RECIPIENT})",
    )
    group = p.add_subparsers(dest="backup_command", metavar="ACTION", required=False)
    v = add(group, "verify", cmd_backup_verify, "open and check a backup; write nothing")
    _opening_options(v)
    v.add_argument(
        "--require-kek",
        action="store_true",
        help="fail unless this host's KEK (or --kek-file) opens every sealed key",
    )
    key = group.add_parser("key", help="the backup key pair").add_subparsers(
        dest="backup_key_command", metavar="ACTION", required=True
    )
    g = add(key, "generate", cmd_backup_key_generate, "make a backup key pair (on another host)")
    g.add_argument("--private", required=True, metavar="FILE", help="private half (0600)")
    g.add_argument("--public", required=True, metavar="FILE", help="public half")

    r = add(
        sub,
        "restore",
        cmd_restore,
        "restore a backup into a new, empty state directory, after checking it and the KEK",
    )
    _opening_options(r)
    r.add_argument("--force", action="store_true", help="replace kdc.db and keys/ of a KDC")
    r.add_argument("--check", action="store_true", help="check as restore does; write nothing")
