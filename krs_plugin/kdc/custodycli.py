"""``krs-kdc init --custody``, ``krs-kdc custody migrate`` and ``krs-kdc custody status``: where
the KDC's signing key and key-encryption key live (kdc/custody.py, docs/security.md)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.crypto import JoseKey, load_jose_key
from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.kdc import custody as cu
from krs_plugin.kdc.clistate import open_store, state_dir
from krs_plugin.kdc.store import Store
from krs_plugin.sqlitedb import transaction

DEFAULT_CUSTODY = "file"  # new KDCs: kdc.db never holds a private key in the clear


def add_custody_options(p: argparse.ArgumentParser, *, target: str) -> None:
    """The options that say where the secrets go (init: ``--custody``; migrate: ``--to``)."""
    if target == "init":
        p.add_argument(
            "--custody",
            choices=("file", "pkcs11"),
            default=DEFAULT_CUSTODY,
            help="where the KEK (and with pkcs11 the signing key) lives (default: file)",
        )
    else:
        p.add_argument("--to", choices=("file", "pkcs11"), required=True, dest="custody")
    p.add_argument(
        "--kek-file",
        metavar="PATH",
        help=f"file custody: the KEK file (default STATE/{cu.DEFAULT_KEK_FILE}; made when "
        f"missing; a systemd credential {cu.KEK_CREDENTIAL} takes precedence)",
    )
    p.add_argument("--pkcs11-module", metavar="PATH", help="pkcs11: the PKCS#11 module (.so)")
    p.add_argument("--token", metavar="LABEL", help="pkcs11: the token's label")
    p.add_argument(
        "--pin-file",
        metavar="FILE",
        help=f"pkcs11: a file with the user PIN (else ${cu.PIN_ENV} or the systemd credential "
        f"{cu.PIN_CREDENTIAL}); only the path is recorded",
    )
    p.add_argument("--signing-label", default=cu.DEFAULT_SIGNING_LABEL, metavar="LABEL")
    p.add_argument("--kek-label", default=cu.DEFAULT_KEK_LABEL, metavar="LABEL")


def settings_from(args: argparse.Namespace) -> cu.CustodySettings:
    if args.custody == "file":
        for option in ("pkcs11_module", "token", "pin_file"):
            if getattr(args, option):
                raise ConfigError(f"--{option.replace('_', '-')} is for --custody pkcs11 only")
        kek = str(Path(args.kek_file).resolve()) if args.kek_file else None
        return cu.CustodySettings("file", kek_file=kek)
    if not args.pkcs11_module or not args.token:
        raise ConfigError("pkcs11 custody needs --pkcs11-module PATH and --token LABEL")
    if args.kek_file:
        raise ConfigError("--kek-file is for --custody file only (pkcs11: the KEK is the token's)")
    return cu.CustodySettings(
        "pkcs11",
        module=args.pkcs11_module,
        token=args.token,
        signing_label=args.signing_label,
        kek_label=args.kek_label,
        pin_file=str(Path(args.pin_file).resolve()) if args.pin_file else None,
    )


def prepare(
    state: Path, settings: cu.CustodySettings, signing: JoseKey | None, *, fresh: bool = False
) -> cu.Custody:
    """Make the target custody's secrets where missing (a KEK file; the token's KEK and signing
    key, ``signing`` imported into it), and return it opened, its KEK checked value-less."""
    if settings.kind == "file":
        path = cu.kek_path(state, settings)
        try:
            cu.read_kek(state, settings)
        except cu.CustodyError:
            if path.exists():
                raise  # there, but unusable: never replaced
            cu.write_kek(path)
    elif settings.kind == "pkcs11":
        cu.provision_token(settings, signing, fresh=fresh)
    return cu.open_custody(state, settings)


def init_custody(
    state: Path, args: argparse.Namespace
) -> tuple[cu.CustodySettings, JoseKey | None]:
    """For ``init``: the custody's settings (with the KEK's check value) and, for pkcs11, the
    token's signing key (its public key is written as keys/kdc.signing.pubkey)."""
    settings = settings_from(args)
    opened = prepare(state, settings, None, fresh=True)
    signer = None
    if settings.kind == "pkcs11":
        signer = opened.signing_key()
    return cu.with_check(opened), signer


def cmd_custody_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    data = custody_report(store)
    lines = [f"custody {data['custody']}: {data['keys_sealed']} key(s) sealed, "
             f"{data['keys_plain']} in the clear"]  # fmt: skip
    for name in ("kek", "module", "token", "signing_label", "kek_label", "pin", "signing_key"):
        if data.get(name) is not None:
            lines.append(f"  {name.replace('_', ' ')}: {data[name]}")
    if data["keys_plain"]:
        lines.append("  seal them: krs-kdc custody migrate --to file (or --to pkcs11 ...)")
    if data["kek_rotation_unfinished"]:
        lines.append(
            "  a KEK rotation was interrupted (kdc.db opens with the KEK above); the next "
            "krs-kdc custody rotate-kek destroys what it left"
        )
    lines.append(f"  usable: {'yes' if data['ok'] else 'NO: ' + str(data['problem'])}")
    emit(data, lines, as_json=args.json)
    return 0 if data["ok"] else 1


def custody_report(store: Store) -> dict[str, Any]:
    custody = store.custody
    counts = store.db.execute(
        "SELECT COUNT(*) FILTER (WHERE length(private_pem) > 0), "
        "COUNT(*) FILTER (WHERE private_sealed IS NOT NULL AND length(private_pem) = 0) FROM keys"
    ).fetchone()
    data: dict[str, Any] = {
        "custody": custody.kind,
        "keys_plain": int(counts[0]),
        "keys_sealed": int(counts[1]),
        "ok": True,
        "problem": None,
    }
    public = store.path.parent / cu.SIGNING_PUBLIC_FILE
    if public.exists():
        data["signing_key"] = load_jose_key(public).thumbprint
    try:
        data |= custody.status()
        custody.verify()
        if custody.kind == "pkcs11":
            custody.signing_key()
    except KrsError as exc:
        data |= {"ok": False, "problem": str(exc)}
    if custody.kind == "legacy":
        data["signing_key_file"] = str(store.path.parent / cu.SIGNING_FILE)
    unfinished = store.get_meta("custody_kek_rotation")  # kdc/kekrotate.py META_ROTATION
    data["kek_rotation_unfinished"] = json.loads(unfinished) if unfinished else None
    return data


def cmd_custody_migrate(args: argparse.Namespace) -> int:
    state = state_dir(args)
    store = open_store(args)
    current = store.custody
    target = settings_from(args)
    from krs_plugin.kdc.signroll import keys as signing_keys
    from krs_plugin.kdc.signroll import phase_of

    phase = phase_of(signing_keys(store.db))
    if phase != "idle":  # the roll's keys are in the current custody (kdc/signroll.py)
        raise ConfigError(
            f"custody migrate: a signing-key roll is under way ({phase}); finish it first "
            "(krs-kdc identity status, krs-kdc identity roll --continue); nothing was changed"
        )
    result = migrate(store, state, current, target)
    lines = [
        f"custody {result['from']} -> {result['to']}: {result['sealed']} key(s) sealed under the "
        "KEK" + (" (already done: nothing to change)" if result["unchanged"] else ""),
    ]
    if result["shredded"]:
        lines.append(f"signing key file overwritten and removed: {result['shredded']}")
    if target.kind == "file":
        lines.append(f"keep the KEK apart from kdc.db's backups: {result['kek']}")
    if result["kept_kek"]:
        lines.append(
            f"the old KEK stays in the token ({result['kept_kek']}): backups taken before need "
            "it; destroy it once none does (docs/security.md, 'Leaving a token')"
        )
    emit(result, lines, as_json=args.json)
    return 0


def cmd_custody_rotate_kek(args: argparse.Namespace) -> int:
    from krs_plugin.kdc import kekrotate

    store = open_store(args)
    given = Path(args.new_kek_file) if args.new_kek_file else None
    result = kekrotate.rotate(store, state_dir(args), new_kek_file=given, now=time.time())
    lines = [
        f"custody {result['custody']}: {result['sealed']} key(s) sealed under the new KEK "
        f"({result['kek']})",
        f"  from {result['from']}",
        f"  to   {result['to']}",
    ]
    lines += [f"  destroyed: {d}" for d in result["cleaned_before"] + result["destroyed"]]
    if result["credential"]:
        lines.append(
            f"  replace the systemd credential {cu.KEK_CREDENTIAL} with the new KEK now, then "
            "remove the plaintext file (docs/security.md, 'Rotating the KEK')"
        )
    lines.append(
        "  backups taken before open only with the old KEK's offline copy: take a new backup "
        "and keep a copy of the new KEK apart (docs/security.md, 'Rotating the KEK')"
    )
    emit(result, lines, as_json=args.json)
    return 0


def _same(a: cu.CustodySettings, b: cu.CustodySettings) -> bool:
    keys: tuple[str, ...] = ("kind", "module", "token", "signing_label", "kek_label")
    if a.kind == "file":
        keys = ("kind",)
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def migrate(
    store: Store, state: Path, current: cu.Custody, target: cu.CustodySettings
) -> dict[str, Any]:
    """Seal every key of kdc.db under the ``target`` custody's KEK in one transaction (all rows
    or none), record the settings, then VACUUM and checkpoint the WAL so that no page of the
    old plaintext stays in kdc.db or kdc.db-wal. Run again, it finishes what a crash left
    (a signing key file not removed yet, pages not vacuumed) and changes nothing else."""
    source = current.settings
    if source.kind == "pkcs11" and not _same(source, target) and source.signing_label:
        raise ConfigError(
            f"custody pkcs11 -> {target.kind}: the KDC's signing key is in token "
            f"{source.token!r} ({source.signing_label!r}, non-extractable) and cannot leave it; "
            "nothing was changed. Roll it to a key in a file first: krs-kdc identity roll "
            "--to-file, wait until krs-kdc identity status says phase idle, then run this "
            "again (docs/security.md, 'Leaving a token')"
        )
    if source.kind == target.kind == "file" and target.kek_file not in (None, source.kek_file):
        raise ConfigError(
            f"custody file already: its KEK is {cu.kek_path(state, source)}; another KEK for the "
            "same custody is a KEK rotation: krs-kdc custody rotate-kek --new-kek-file FILE. "
            "Nothing was changed"
        )
    unchanged = _same(source, target)
    signing_file = state / cu.SIGNING_FILE
    signing = None
    if target.kind == "pkcs11" and signing_file.exists():
        signing = load_jose_key(signing_file)
    new = current if unchanged else prepare(state, target, signing)
    if unchanged and target.kind == "pkcs11" and signing is not None:
        cu.provision_token(target, signing)  # a crash before the file went: check, then remove
    if target.kind == "pkcs11":
        token_key = new.signing_key()  # the token answers, with the KDC's key
        if signing is not None and token_key.thumbprint != signing.thumbprint:
            raise cu.CustodyError("custody pkcs11: the token's signing key is not the KDC's")
    new.verify()
    settings = new.settings if unchanged else cu.with_check(new)
    count = reseal(
        store,
        new,
        settings,
        only_plain=unchanged,
        event=("custody.migrate", {"from": source.kind, "to": target.kind}),
        always_audit=not unchanged,
    )
    shredded = None
    if target.kind == "pkcs11" and signing_file.exists():
        cu.shred(signing_file)
        shredded = str(signing_file)
    kept = None
    if source.kind == "pkcs11" and target.kind != "pkcs11":
        kept = f"token {source.token!r} key {source.kek_label!r}"  # older backups need it
    return {
        "from": source.kind,
        "to": target.kind,
        "kept_kek": kept,
        "sealed": count,
        "unchanged": unchanged and not count,
        "shredded": shredded,
        "kek": str(cu.kek_path(state, target)) if target.kind == "file" else None,
    }


def reseal(
    store: Store,
    new: cu.Custody,
    settings: cu.CustodySettings,
    *,
    only_plain: bool,
    event: tuple[str, dict[str, Any]],
    always_audit: bool,
    meta: dict[str, str | None] | None = None,
) -> int:
    """Open every key under kdc.db's current custody and seal it under ``new`` in one
    transaction with the new ``settings``, the audit entry ``event`` and the ``meta`` changes
    (None: deleted); then VACUUM and empty the WAL. ``only_plain``: the rows in the clear only
    (a migration run again). Used by ``custody migrate`` and ``custody rotate-kek``
    (docs/security.md, "Key custody"). Returns how many keys were sealed."""
    where = "length(private_pem) > 0" if only_plain else "1"
    rows = store.db.execute(f"SELECT id FROM keys WHERE {where} ORDER BY id").fetchall()
    store.db.execute("PRAGMA secure_delete = ON")  # freed cells are zeroed, not left behind
    with transaction(store.db):
        for (key_id,) in rows:
            row = store.key_by_id(int(key_id))
            pem = store.private_pem(row)  # opened under the current custody
            sealed = new.seal(pem, cu.key_aad(row.zone, row.key_tag, row.algorithm, row.role))
            store.db.execute(
                "UPDATE keys SET private_pem = X'', private_sealed = ? WHERE id = ?",
                (sealed, row.id),
            )
        store.db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (cu.META_KEY, settings.dumps())
        )
        for key, value in (meta or {}).items():
            if value is None:
                store.db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                store.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value)
                )
        if always_audit or rows:
            audit = getattr(store, "audit", None)
            if audit is not None:
                audit(event[0], details={**event[1], "keys": len(rows)})
    store.forget_custody()
    _compact(store)
    return len(rows)


def _compact(store: Store) -> None:
    """VACUUM (the old pages go), then copy the WAL into kdc.db and truncate it."""
    try:
        store.db.execute("VACUUM")
        busy, _, _ = store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"{store.path}: VACUUM after sealing the keys failed: {exc}") from exc
    if busy:
        raise ConfigError(
            f"{store.path}: the keys are sealed, but another process (krs-kdc serve?) has "
            "kdc.db open, so its -wal file could not be emptied and may still hold the old "
            "pages: stop it and run krs-kdc custody migrate again"
        )


def add_parsers(sub: Any, add: Any) -> None:
    """``custody ...`` under ``sub``; ``add`` is cli.py's helper."""
    group = sub.add_parser(
        "custody", help="where the KDC's signing key and key-encryption key live"
    ).add_subparsers(dest="custody_command", metavar="ACTION", required=True)
    p = add(
        group,
        "migrate",
        cmd_custody_migrate,
        "seal kdc.db's DNSSEC private keys under a KEK in a file or a PKCS#11 token (and move "
        "the signing key into the token), in one transaction; run again, changes nothing",
    )
    add_custody_options(p, target="migrate")
    add(group, "status", cmd_custody_status, "the custody, its keys, and whether it is usable")
    p = add(
        group,
        "rotate-kek",
        cmd_custody_rotate_kek,
        "a new key-encryption key (file or token object), every key sealed again under it in "
        "one transaction, the old KEK destroyed (after an interrupted run: what it left first)",
    )
    p.add_argument(
        "--new-kek-file",
        metavar="PATH",
        help="file custody: the new KEK file (made when missing; required when the KEK is the "
        f"systemd credential {cu.KEK_CREDENTIAL}); default: beside the current one, named "
        "with the time",
    )
