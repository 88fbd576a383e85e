"""``krs-kdc backup`` and ``restore``: the KDC's state as one encrypted file (docs/kdc.md,
"Backup and restore"; docs/security.md, "Backups").

A backup is ``MAGIC || header length (4 bytes, big-endian) || header (JSON) || HPKE ciphertext``.
The header (format, backup id, time, KDC id, custody, audit head, backup key) is readable
without the key and bound to the ciphertext as HPKE associated data: a byte changed anywhere
makes the file refused. The ciphertext is the project's HPKE (crypto/hpke.py) sealed to a
backup public key whose private half stays off the KDC host, so cron needs no passphrase. Its
plaintext is a tar of ``kdc.db`` (one snapshot through SQLite's backup API, taken in memory:
no copy of it is written in the clear) and the files of ``keys/`` but the KEK: kdc.db's DNSSEC
keys stay sealed under a KEK the backup does not hold.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.crypto.hpke import open_sealed, seal
from krs_plugin.errors import DecryptionError, KeyFileError, KrsError
from krs_plugin.files import SECRET_MODE, atomic_write, sync_directory
from krs_plugin.kdc import audit
from krs_plugin.kdc import custody as cu

MAGIC = b"KRS-KDC-BACKUP\n\0"
FORMAT = "krs-kdc-backup/1"
INFO = b"krs-kdc backup v1"  # HPKE info: a key for backups opens nothing else sealed this way
MAX_HEADER = 64 * 1024
DB_NAME = "kdc.db"
KEYS_DIR = "keys"
SIGNING_PUBKEY = "kdc.signing.pubkey"
SIGNING_FILE = "kdc.signing.privatekey"  # identity.SIGNING_FILE (custody file only)
SUFFIX = ".krsbackup"
DEFAULT_RECIPIENT = "keys/backup.pubkey"  # under the state directory
STAGING = ".restore-"


class BackupError(KrsError):
    """A backup could not be made, or a backup file is refused; nothing was written. The KDC's
    own operation, not a stage of a distribution (errors.STAGES): its messages say "backup" or
    "restore" themselves."""


@dataclass(frozen=True)
class Opened:
    """A backup file opened and checked: its header and the files it carries."""

    header: dict[str, Any]
    db: bytes
    keys: dict[str, tuple[bytes, int]]  # keys/ file name -> (content, mode)

    @property
    def backup_id(self) -> str:
        return str(self.header["backup_id"])


# --- writing ----------------------------------------------------------------------------------


def snapshot(db_path: Path) -> sqlite3.Connection:
    """kdc.db as one consistent snapshot, in memory: SQLite's backup API copies every page in
    one step inside one read transaction, whatever ``serve`` writes meanwhile."""
    uri = "file:" + urllib.parse.quote(str(db_path.resolve())) + "?mode=ro"
    try:
        source = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError(f"backup: cannot open {db_path}: {exc}") from exc
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        source.backup(copy)  # pages=-1: all at once, one snapshot
    except sqlite3.Error as exc:
        copy.close()
        raise BackupError(f"backup: reading {db_path} failed: {exc}") from exc
    finally:
        source.close()
    copy.row_factory = sqlite3.Row
    return copy


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _head(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else f"{row[0]}:{row[1]}"


def _kept_out(state: Path, settings: cu.CustodySettings) -> set[Path]:
    """Files of ``keys/`` a backup never carries: the KEK (and a PIN file kept there)."""
    out = {cu.kek_path(state, settings).resolve(), (state / cu.DEFAULT_KEK_FILE).resolve()}
    if settings.pin_file:
        out.add(Path(settings.pin_file).resolve())
    return out


def key_files(state: Path, settings: cu.CustodySettings) -> dict[str, tuple[bytes, int]]:
    """The regular files of ``keys/`` but the KEK, with their modes."""
    directory = state / KEYS_DIR
    if not directory.is_dir():
        raise BackupError(f"backup: {directory}: no such directory (the KDC's own keys)")
    skip = _kept_out(state, settings)
    files: dict[str, tuple[bytes, int]] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.is_symlink() or path.resolve() in skip:
            continue
        if path.name.endswith(".kek") or path.name.startswith("."):
            continue  # a KEK under another name; an editor's or atomic_write's leftovers
        files[path.name] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return files


def _tar(db: bytes, keys: dict[str, tuple[bytes, int]], at: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in [(DB_NAME, db, 0o600)] + [
            (f"{KEYS_DIR}/{n}", d, m) for n, (d, m) in keys.items()
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, at
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def frame(header: dict[str, Any]) -> bytes:
    """MAGIC, the header's length and the header: what the ciphertext is bound to."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(text)) + text


def make_backup(
    state: Path, recipient: HpkeKey, *, now: float | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The encrypted backup of the KDC in ``state`` and its header."""
    db_path = state / DB_NAME
    if not db_path.exists():
        raise BackupError(f"backup: {state}: no KDC state here (no {DB_NAME})")
    at = int(time.time() if now is None else now)
    copy = snapshot(db_path)
    try:
        settings = cu.CustodySettings.loads(_meta(copy, cu.META_KEY))
        keys = key_files(state, settings)
        where = f"{state / KEYS_DIR}"
        others = [  # a signing-key roll under way (kdc/signroll.py): its other key's files
            _jwk(data, name, where).public_only()
            for name, (data, _) in keys.items()
            if name.startswith("kdc.signing.")
            and name.endswith(".pubkey")
            and name != SIGNING_PUBKEY
        ]
        anchors = _anchors(keys, others, where=where)
        verdict = audit.verify(copy, anchors)
        if not verdict.ok:
            raise BackupError(
                f"backup: the audit trail in the snapshot of {db_path} does not verify "
                f"({verdict.to_json()['broken']}); no backup written: run krs-kdc audit verify"
            )
        head = _head(copy)
        control_zone = _meta(copy, "control_zone")
        data = rollback_mode(copy.serialize())
    finally:
        copy.close()
    header = {
        "format": FORMAT,
        "backup_id": secrets.token_hex(8),
        "created_at": at,
        "kdc": {"control_zone": control_zone, "signing_key": anchors[0].thumbprint},
        "custody": {k: v for k, v in json.loads(settings.dumps()).items() if k != "kek_check"},
        "audit_head": head,
        "recipient": recipient.public_hex,
        "files": [DB_NAME] + [f"{KEYS_DIR}/{n}" for n in keys],
    }
    framed = frame(header)
    sealed = seal(_tar(data, keys, at), recipient, info=INFO, aad=framed)
    return framed + sealed, header


def output_path(output: Path, header: dict[str, Any]) -> Path:
    """``output``, or in a directory ``kdc-<UTC time>-<id>.krsbackup`` (for cron)."""
    if output.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(header["created_at"]))
        return output / f"kdc-{stamp}-{header['backup_id']}{SUFFIX}"
    return output


def write_backup(path: Path, data: bytes) -> None:
    """0600 from its first byte (atomic_write's temporary file), renamed into place."""
    if path.exists():
        raise BackupError(f"backup: {path} exists; refusing to replace it")
    atomic_write(path, data, SECRET_MODE)


# --- reading ----------------------------------------------------------------------------------


def read_header(blob: bytes, where: str) -> tuple[dict[str, Any], int]:
    """The header and where the ciphertext starts; the header is not trusted until opened."""
    if not blob.startswith(MAGIC):
        raise BackupError(f"backup {where}: header: not a krs-kdc backup (no {MAGIC[:14]!r})")
    if len(blob) < len(MAGIC) + 4:
        raise BackupError(f"backup {where}: header: truncated")
    (size,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if size > MAX_HEADER or start + size > len(blob):
        raise BackupError(f"backup {where}: header: length {size} is not possible (altered?)")
    try:
        header = json.loads(blob[start : start + size])
    except ValueError as exc:
        raise BackupError(f"backup {where}: header: not JSON (altered?): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise BackupError(
            f"backup {where}: header: format {found!r}, this krs-kdc reads {FORMAT!r}"
        )
    for name in ("backup_id", "created_at", "kdc", "custody", "recipient", "files"):
        if name not in header:
            raise BackupError(f"backup {where}: header: no {name!r} (altered?)")
    return header, start + size


def open_backup(blob: bytes, key: HpkeKey, where: str) -> Opened:
    """Check the header, open the ciphertext with the backup private key (which authenticates
    header and content), and return the files, checked by name."""
    header, start = read_header(blob, where)
    if header["recipient"] != key.public_hex:
        raise BackupError(
            f"backup {where}: decryption: sealed to backup key {str(header['recipient'])[:16]}, "
            f"not to this one ({key.fingerprint}): give the private half of the backup key it "
            "was made with"
        )
    try:
        plain = open_sealed(blob[start:], key, where=f"backup {where}", info=INFO, aad=blob[:start])
    except DecryptionError as exc:
        raise BackupError(
            f"backup {where}: decryption: the file was altered (header or content) or cut "
            f"short: {exc}"
        ) from exc
    db: bytes | None = None
    keys: dict[str, tuple[bytes, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r") as tar:
        for member in tar.getmembers():
            name = member.name
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is None:
                raise BackupError(f"backup {where}: content: {name!r} is not a regular file")
            data = extracted.read()
            parts = name.split("/")
            if name == DB_NAME:
                db = data
            elif len(parts) == 2 and parts[0] == KEYS_DIR and parts[1] not in ("", ".", ".."):
                keys[parts[1]] = (data, 0o600 if member.mode & 0o044 == 0 else 0o644)
            else:
                raise BackupError(f"backup {where}: content: unexpected member {name!r}")
    if db is None:
        raise BackupError(f"backup {where}: content: no {DB_NAME}")
    if sorted([DB_NAME] + [f"{KEYS_DIR}/{n}" for n in keys]) != sorted(header["files"]):
        raise BackupError(f"backup {where}: content: files differ from the header's list")
    return Opened(header, db, keys)


def _anchors(
    keys: dict[str, tuple[bytes, int]], extra: Sequence[JoseKey], *, where: str
) -> list[JoseKey]:
    """The signing public key the backup carries, then those the operator gave."""
    if SIGNING_PUBKEY not in keys:
        raise BackupError(f"backup: {where}: no {SIGNING_PUBKEY} (the KDC's signing public key)")
    return [_jwk(keys[SIGNING_PUBKEY][0], SIGNING_PUBKEY, where).public_only(), *extra]


def _jwk(data: bytes, name: str, where: str) -> JoseKey:
    """A JWK key file's content (``#`` comment lines allowed, as crypto/keys.py reads them)."""
    text = data.decode(errors="replace")
    lines = [s for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    try:
        return JoseKey.from_jwk_text("\n".join(lines), where=name)
    except (KeyFileError, ValueError, TypeError) as exc:
        raise BackupError(f"backup: {where}: {name}: {exc}") from exc


def rollback_mode(data: bytes) -> bytes:
    """The database file with its header's WAL flags (bytes 18, 19: 2) set to the rollback
    journal's (1): SQLite opens a WAL file in memory only so; kdc.db turns WAL again when a
    Store opens it (sqlitedb.py)."""
    if data[18:20] == b"\x02\x02":
        return data[:18] + b"\x01\x01" + data[20:]
    return data


@contextmanager
def database(data: bytes) -> Iterator[sqlite3.Connection]:
    """A backup's kdc.db opened in memory (nothing written to disk)."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.deserialize(rollback_mode(data))
        yield db
    finally:
        db.close()


def check(
    opened: Opened,
    state: Path,
    *,
    kek_file: Path | None = None,
    expect_signing: JoseKey | None = None,
    need_kek: bool = True,
) -> dict[str, Any]:
    """What restore checks before writing anything: kdc.db's integrity, its audit trail (signed
    by the KDC whose key the backup carries, or ``expect_signing`` as the nodes hold it), and
    that the KEK on this host opens every sealed key. Returns a report; raises BackupError."""
    where = f"backup {opened.backup_id}"
    signing = _anchors(opened.keys, [], where=where)[0]
    if expect_signing is not None and expect_signing.thumbprint != signing.thumbprint:
        raise BackupError(
            f"{where}: identity: its KDC signing key is {signing.thumbprint}, not "
            f"{expect_signing.thumbprint} (--signing-key): a backup of another KDC"
        )
    if opened.header["kdc"].get("signing_key") != signing.thumbprint:
        raise BackupError(f"{where}: header: KDC id does not match {SIGNING_PUBKEY}")
    private = opened.keys.get(SIGNING_FILE)
    if (
        private is not None
        and _jwk(private[0], SIGNING_FILE, where).thumbprint != signing.thumbprint
    ):
        raise BackupError(f"{where}: identity: {SIGNING_FILE} is not the key of {SIGNING_PUBKEY}")
    with database(opened.db) as db:
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise BackupError(f"{where}: kdc.db: not a database: {exc}") from exc
        if result != "ok":
            raise BackupError(f"{where}: kdc.db: integrity_check: {result}")
        verdict = audit.verify(db, [signing])
        if not verdict.ok:
            raise BackupError(
                f"{where}: audit: the trail does not verify: {verdict.to_json()['broken']}"
            )
        if verdict.entries == 0:  # init records one: every KDC's trail has begun
            raise BackupError(f"{where}: audit: the trail is empty: not a KDC's kdc.db")
        if _head(db) != opened.header.get("audit_head"):
            raise BackupError(f"{where}: audit: head differs from the header's")
        settings = cu.CustodySettings.loads(_meta(db, cu.META_KEY))
        kek = kek_check(db, settings, state, opened, kek_file, need_kek=need_kek)
    return {
        "backup_id": opened.backup_id,
        "created_at": opened.header["created_at"],
        "kdc": opened.header["kdc"],
        "custody": settings.kind,
        "audit_head": opened.header.get("audit_head"),
        "audit_entries": verdict.entries,
        "files": opened.header["files"],
        **kek,
    }


def kek_source(
    settings: cu.CustodySettings, state: Path, kek_file: Path | None
) -> tuple[cu.CustodySettings, Path | None]:
    """Where this host has the file custody's KEK: ``--kek-file``, else the systemd credential
    ``kdc-kek`` or the path kdc.db records (default STATE/keys/kdc.kek), as ``serve`` reads it.
    Returns the settings to open it with and, for ``--kek-file``, the file to install."""
    if kek_file is None:
        return settings, None
    if settings.kek_file and Path(settings.kek_file).is_absolute():
        if Path(settings.kek_file).resolve() != kek_file.resolve():
            raise BackupError(
                f"restore: kdc.db expects its KEK at {settings.kek_file}: put the copy there "
                "instead of --kek-file"
            )
        return settings, None
    return replace(settings, kek_file=str(kek_file.resolve())), kek_file


def kek_check(
    db: sqlite3.Connection,
    settings: cu.CustodySettings,
    state: Path,
    opened: Opened,
    kek_file: Path | None,
    *,
    need_kek: bool,
) -> dict[str, Any]:
    """Open every sealed DNSSEC key of the backup's kdc.db with this host's KEK."""
    rows = db.execute(
        "SELECT zone, key_tag, algorithm, role, private_pem, private_sealed FROM keys"
    ).fetchall()
    sealed = [r for r in rows if r["private_sealed"] is not None and not r["private_pem"]]
    report: dict[str, Any] = {"keys": len(rows), "keys_sealed": len(sealed)}
    if settings.kind == "legacy":
        return report | {"kek": None, "kek_checked": False}
    opener, _ = kek_source(settings, state, kek_file)
    custody = cu.open_custody(state, opener)
    where = f"backup {opened.backup_id}"
    try:
        custody.verify()
        for r in sealed:
            what = f"the private key of {r['zone']} tag {r['key_tag']}"
            aad = cu.key_aad(r["zone"], r["key_tag"], r["algorithm"], r["role"])
            custody.open(bytes(r["private_sealed"]), aad, what=what)
        if settings.kind == "pkcs11":
            token = custody.signing_key().thumbprint
            if token != opened.header["kdc"]["signing_key"]:
                raise cu.CustodyError(
                    f"custody pkcs11: token {settings.token!r} holds signing key {token}, not "
                    f"the KDC's {opened.header['kdc']['signing_key']}"
                )
    except cu.CustodyError as exc:
        if not need_kek:
            return report | {"kek": None, "kek_checked": False, "kek_problem": str(exc)}
        missing = (
            f"the file custody's KEK (STATE/{cu.DEFAULT_KEK_FILE} in the target, --kek-file, or "
            f"the systemd credential {cu.KEK_CREDENTIAL})"
            if settings.kind == "file"
            else f"the PKCS#11 token {settings.token!r} (module {settings.module}) with its PIN"
        )
        raise BackupError(
            f"{where}: custody: {exc}. kdc.db's {len(sealed)} DNSSEC key(s) are sealed under a "
            f"KEK the backup does not hold: {missing} is needed; nothing was restored"
        ) from exc
    return report | {"kek": custody.kek_name, "kek_checked": True}


# --- restoring --------------------------------------------------------------------------------


def _occupied(state: Path) -> list[str]:
    """What is in ``state`` besides a KEK placed there for the restore."""
    if not state.exists():
        return []
    found = []
    for path in sorted(state.rglob("*")):
        relative = path.relative_to(state).as_posix()
        if relative.startswith(STAGING):
            continue  # this restore's own staging directory
        if relative == KEYS_DIR and path.is_dir():
            continue
        if relative == cu.DEFAULT_KEK_FILE:
            continue
        found.append(relative)
    return found


def restore(
    opened: Opened,
    state: Path,
    *,
    actor: str,
    force: bool = False,
    kek_file: Path | None = None,
    expect_signing: JoseKey | None = None,
) -> dict[str, Any]:
    """Check everything, build the state in a directory beside ``state``, record the restore in
    its audit trail, then move it into place; on any refusal nothing is left behind."""
    from krs_plugin.kdc.store import Store

    occupied = _occupied(state)
    if occupied and not force:
        raise BackupError(
            f"restore: {state} is not empty ({', '.join(occupied[:5])}"
            f"{', ...' if len(occupied) > 5 else ''}): restore into a new directory, or give "
            "--force to replace its kdc.db and keys/ (stop krs-kdc serve first)"
        )
    report = check(opened, state, kek_file=kek_file, expect_signing=expect_signing)
    with database(opened.db) as db:
        settings = cu.CustodySettings.loads(_meta(db, cu.META_KEY))
    _, install_kek = kek_source(settings, state, kek_file)
    # Staged on the target's file system (inside it when it exists: it may be a mount point),
    # so that putting it in place is renames only.
    fresh = not state.exists()
    if fresh:
        state.parent.mkdir(parents=True, exist_ok=True)
    where = state.parent if fresh else state
    staging = Path(tempfile.mkdtemp(prefix=f".{state.name}{STAGING}" if fresh else STAGING,
                                    dir=where))  # fmt: skip
    try:
        (staging / KEYS_DIR).mkdir(mode=0o700)
        for name, (data, mode) in opened.keys.items():
            atomic_write(staging / KEYS_DIR / name, data, mode)
        if install_kek is not None:  # where kdc.db names it (a rotate-kek: keys/kdc.TIME.kek)
            relative = Path(settings.kek_file or cu.DEFAULT_KEK_FILE)
            if relative.parent != Path(KEYS_DIR) or relative.name in ("", ".", ".."):
                relative = Path(cu.DEFAULT_KEK_FILE)  # never outside keys/ (a forged backup)
            atomic_write(staging / relative, install_kek.read_bytes(), SECRET_MODE)
        atomic_write(staging / DB_NAME, opened.db, SECRET_MODE)
        store = Store(staging / DB_NAME)
        try:
            store.actor = actor
            with store.transaction():
                store.audit(
                    "backup.restore",
                    details={
                        "message": f"restored from backup {opened.backup_id}",
                        "backup": opened.backup_id,
                        "backup_created_at": opened.header["created_at"],
                        "backup_audit_head": opened.header.get("audit_head"),
                    },
                )
            verdict = audit.verify(store.db, _anchors(opened.keys, [], where="restore"))
            if not verdict.ok:
                raise BackupError(f"restore: audit verify after the restore: {verdict.to_json()}")
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            head = _head(store.db)
        finally:
            store.close()
        for side in ("-wal", "-shm"):
            Path(f"{staging / DB_NAME}{side}").unlink(missing_ok=True)
        _install(staging, state, fresh=fresh, force=force)
    except OSError as exc:
        raise BackupError(
            f"restore: writing into {state} failed: {exc}; if it failed while moving the files "
            "in place, restore again with --force"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report | {"state": str(state), "audit_head_after": head}


def _install(staging: Path, state: Path, *, fresh: bool, force: bool) -> None:
    """Into a missing ``state``: one rename. Into an existing one (empty, with a KEK placed
    there, or --force): keys/ first, kdc.db last, the old kdc.db's log and shared memory
    removed before."""
    if fresh:
        os.chmod(staging, 0o700)
        os.replace(staging, state)
        sync_directory(state.parent)
        return
    if not force and _occupied(state):
        raise BackupError(f"restore: {state} changed while restoring; nothing was restored")
    state.chmod(0o700)
    keys = state / KEYS_DIR
    keys.mkdir(mode=0o700, exist_ok=True)
    keys.chmod(0o700)
    for name in ("kdc.db", "kdc.db-wal", "kdc.db-shm"):
        (state / name).unlink(missing_ok=True)
    for path in (staging / KEYS_DIR).iterdir():
        os.replace(path, keys / path.name)
    sync_directory(keys)
    os.replace(staging / DB_NAME, state / DB_NAME)
    sync_directory(state)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BackupError(f"backup {path}: cannot read it: {exc.strerror}") from None
