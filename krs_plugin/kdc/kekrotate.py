"""``krs-kdc custody rotate-kek``: a new key-encryption key, every sealed key of kdc.db sealed
again under it, the old KEK destroyed (docs/security.md, "Key custody", "Rotating the KEK").

Crash safety rests on one rule: kdc.db's meta ``custody`` always names the KEK its rows are
sealed with, and that KEK is destroyed only after a committed transaction names another. The
steps, each recorded in meta ``custody_kek_rotation`` before it is taken:

1. ``pending``: the new KEK (a 0600 file written atomically, or a token object with a label of
   its own) is recorded, then made. A crash here leaves kdc.db on the old KEK, which still
   exists; the next ``rotate-kek`` destroys the pending one (it sealed nothing committed).
2. one transaction: every row sealed again under the new KEK, meta ``custody`` naming it, the
   old one recorded as ``retired``, the audit entry. Then VACUUM and the WAL emptied.
3. the old KEK is destroyed (file overwritten and removed, token object destroyed), then the
   record cleared. A crash before leaves both KEKs; kdc.db opens with the new one, and the next
   ``rotate-kek`` (or this one run again) destroys the retired one first.

A leftover is destroyed only when meta ``custody`` does not name it, so no step can destroy the
KEK kdc.db needs.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krs_plugin import failpoints
from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.kdc import custody as cu
from krs_plugin.kdc.custodycli import reseal
from krs_plugin.kdc.store import Store
from krs_plugin.kdc.wake import wake_serve

META_ROTATION = "custody_kek_rotation"
_STAMP = re.compile(r"[.@]\d{8}T\d{6}Z$")


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _record(store: Store, data: dict[str, Any] | None) -> None:
    if data is None:
        with store.transaction():
            store.db.execute("DELETE FROM meta WHERE key = ?", (META_ROTATION,))
    else:
        store.set_meta(META_ROTATION, json.dumps(data, sort_keys=True))


def _destroy(store: Store, state: Path, leftover: dict[str, Any]) -> str | None:
    """Destroy a pending or retired KEK, unless meta ``custody`` names it (then it is the KEK
    kdc.db needs). What was destroyed, for the output."""
    settings = store.custody.settings
    if leftover["kind"] == "file":
        path = Path(leftover["path"])
        if settings.kind == "file" and cu.kek_path(state, settings).resolve() == path.resolve():
            return None
        if path.exists():
            cu.shred(path)
            return f"KEK file {path}"
        return None
    label = str(leftover["label"])
    token = replace(settings, token=leftover["token"], module=leftover["module"])
    if settings.kind == "pkcs11" and settings.kek_label == label:
        return None
    if cu.destroy_token_kek(token, label):
        return f"token {leftover['token']!r} key {label!r}"
    return None


def _make(store: Store, pending: dict[str, Any], make: Callable[[], None]) -> None:
    """Record the new KEK as pending, then make it; a refusal (the name is taken: another
    KEK) drops the record, so no later run destroys what this one did not make."""
    _record(store, {"pending": pending})
    try:
        make()
    except cu.CustodyError:
        _record(store, None)
        raise


def finish(store: Store, state: Path) -> list[str]:
    """Destroy what an interrupted rotation left (a pending or a retired KEK)."""
    text = store.get_meta(META_ROTATION)
    if text is None:
        return []
    data = json.loads(text)
    done = [d for d in (_destroy(store, state, data[k]) for k in ("pending", "retired")
                        if data.get(k)) if d]  # fmt: skip
    _record(store, None)
    return done


def _new_file_kek(
    state: Path, settings: cu.CustodySettings, given: Path | None, now: float
) -> tuple[Path, dict[str, Any] | None]:
    """Where the new file KEK is, and the pending record when the KDC makes it (an
    operator's own file is never destroyed by a later run)."""
    if cu.credential_kek() is not None and given is None:
        raise ConfigError(
            f"custody rotate-kek: the KEK comes from the systemd credential {cu.KEK_CREDENTIAL}; "
            "give the new KEK as --new-kek-file FILE (the KDC cannot replace a credential: "
            "docs/security.md, 'Rotating the KEK'); nothing was changed"
        )
    old = cu.kek_path(state, settings)
    if given is not None:
        path = given.resolve()
        if path == old.resolve():
            raise ConfigError(f"custody rotate-kek: {path} is the current KEK file")
        return path, None if path.exists() else {"kind": "file", "path": str(path)}
    # NAME.TIME.kek: a backup leaves out every *.kek of keys/ (kdc/backup.py), leftovers too
    stem = _STAMP.sub("", old.name.removesuffix(".kek"))
    path = old.with_name(f"{stem}.{_stamp(now)}.kek")
    return path, {"kind": "file", "path": str(path)}


def rotate(store: Store, state: Path, *, new_kek_file: Path | None, now: float) -> dict[str, Any]:
    """Make a new KEK, seal every key under it in one transaction, destroy the old one."""
    current = store.custody
    settings = current.settings
    if settings.kind == "legacy":
        raise ConfigError(
            "custody rotate-kek: custody legacy has no KEK; seal the keys first with "
            "krs-kdc custody migrate --to file (docs/security.md, 'Key custody')"
        )
    if new_kek_file is not None and settings.kind != "file":
        raise ConfigError("custody rotate-kek: --new-kek-file is for custody file only")
    if wake_serve(store):  # it answered: it holds the old KEK in memory (kdc/wake.py)
        raise ConfigError(
            "custody rotate-kek: krs-kdc serve is running on this kdc.db and keeps the old KEK "
            "open; stop it first (it would fail to open the keys afterwards). Nothing was changed"
        )
    cleaned = finish(store, state)
    current = store.custody
    current.verify()  # the KEK kdc.db needs is here, before anything is made
    old_id = cu.kek_id(settings)
    if settings.kind == "file":
        path, pending = _new_file_kek(state, settings, new_kek_file, now)
        if pending is not None:
            _make(store, pending, lambda: cu.write_kek(path))
        failpoints.reached("kek_written")
        relative = path.relative_to(state) if path.is_relative_to(state) else path
        target = replace(settings, kek_file=str(relative), kek_check=None)
        raw, source = cu.read_kek(state, target, credential=False)
        new: cu.Custody = cu.FileCustody(target, state, source=source, _kek=AESGCM(raw))
        # the old file (with a credential: a copy, if one is left) goes; a credential is the
        # operator's to replace and remove (docs/security.md, "Rotating the KEK")
        retired: dict[str, Any] = {"kind": "file", "path": str(cu.kek_path(state, settings))}
    else:
        label = _STAMP.sub("", settings.kek_label) + "@" + _stamp(now)
        token_kek = {"kind": "pkcs11", "label": label, "token": settings.token,
                   "module": settings.module}  # fmt: skip
        _make(store, token_kek, lambda: cu.make_token_kek(settings, label))
        failpoints.reached("kek_written")
        target = replace(settings, kek_label=label, kek_check=None)
        new = cu.Pkcs11Custody(target, state)
        retired = {"kind": "pkcs11", "label": settings.kek_label, "token": settings.token,
                   "module": settings.module}  # fmt: skip
    if settings.kek_check and new.opens(settings.kek_check):
        raise ConfigError("custody rotate-kek: the new KEK is the current one; nothing was changed")
    sealed_settings = cu.with_check(new)
    new_id = cu.kek_id(sealed_settings)
    try:
        count = reseal(
            store,
            new,
            sealed_settings,
            only_plain=False,
            event=("custody.rotate_kek", {"custody": settings.kind, "from": old_id, "to": new_id}),
            always_audit=True,
            meta={META_ROTATION: json.dumps({"retired": retired}, sort_keys=True)},
        )
    except KrsError:
        # not committed: the pending KEK goes; committed: the retired one (else the next run)
        with contextlib.suppress(KrsError):
            finish(store, state)
        raise
    failpoints.reached("kek_committed")
    destroyed = finish(store, state)
    return {
        "custody": settings.kind,
        "from": old_id,
        "to": new_id,
        "kek": str(cu.kek_path(state, target)) if target.kind == "file" else target.kek_label,
        "sealed": count,
        "destroyed": destroyed,
        "cleaned_before": cleaned,
        "credential": cu.credential_kek() is not None,
    }
