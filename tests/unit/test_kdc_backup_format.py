"""The backup file's format (krs_plugin/kdc/backup.py, docs/kdc.md "Backup and restore"): what
is refused before and after decryption, each naming the stage, for a backup of a real KDC."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import tarfile
from pathlib import Path

import pytest

from krs_plugin.crypto import HpkeKey
from krs_plugin.crypto.hpke import seal
from krs_plugin.kdc import backup as bk
from krs_plugin.kdc.cli import main


@pytest.fixture
def made(tmp_path: Path) -> tuple[bytes, dict[str, object], HpkeKey]:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--state", str(tmp_path / "s"), "init", "--control-zone", "kdc.ex."]) == 0
    key = HpkeKey.generate()
    data, header = bk.make_backup(tmp_path / "s", key.public_only())
    return data, header, key


def resealed(header: dict[str, object], members: dict[str, bytes], key: HpkeKey) -> bytes:
    """A file made as make_backup makes one, with other content: what a forger with the
    public key can write."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    framed = bk.frame(header)
    return framed + seal(out.getvalue(), key.public_only(), info=bk.INFO, aad=framed)


def test_a_backup_opens_with_its_key_and_lists_its_files(
    made: tuple[bytes, dict[str, object], HpkeKey],
) -> None:
    data, header, key = made
    opened = bk.open_backup(data, key, "b")
    assert opened.db.startswith(b"SQLite format 3\0")
    assert "kdc.kek" not in opened.keys and "kdc.signing.privatekey" in opened.keys
    assert opened.keys["kdc.hpke.privatekey"][1] == 0o600
    assert opened.keys["kdc.hpke.pubkey"][1] == 0o644
    assert header["files"] == ["kdc.db"] + [f"keys/{n}" for n in opened.keys]


def test_what_is_not_a_backup_or_of_another_format_is_refused_at_the_header(
    made: tuple[bytes, dict[str, object], HpkeKey],
) -> None:
    data, header, key = made
    with pytest.raises(bk.BackupError, match="header: not a krs-kdc backup"):
        bk.open_backup(b"SQLite format 3\0" + data[16:], key, "b")
    with pytest.raises(bk.BackupError, match="header: truncated"):
        bk.open_backup(bk.MAGIC + b"\0", key, "b")
    long = bk.MAGIC + struct.pack(">I", 10**6) + data[len(bk.MAGIC) + 4 :]
    with pytest.raises(bk.BackupError, match="header: length 1000000 is not possible"):
        bk.open_backup(long, key, "b")
    future = bk.frame({**header, "format": "krs-kdc-backup/2"}) + b"\0" * 64
    with pytest.raises(bk.BackupError, match="format 'krs-kdc-backup/2', this krs-kdc reads"):
        bk.open_backup(future, key, "b")


def test_content_other_than_kdc_db_and_keys_files_is_refused(
    made: tuple[bytes, dict[str, object], HpkeKey],
) -> None:
    _, header, key = made
    evil = resealed({**header, "files": ["kdc.db", "../kdc.kek"]},
                    {"kdc.db": b"x", "../kdc.kek": b"y"}, key)  # fmt: skip
    with pytest.raises(bk.BackupError, match=re.escape("content: unexpected member '../kdc.kek'")):
        bk.open_backup(evil, key, "b")
    nested = resealed({**header, "files": ["kdc.db", "keys/a/b"]},
                      {"kdc.db": b"x", "keys/a/b": b"y"}, key)  # fmt: skip
    with pytest.raises(bk.BackupError, match="unexpected member 'keys/a/b'"):
        bk.open_backup(nested, key, "b")
    listed = resealed(header, {"kdc.db": b"x"}, key)
    with pytest.raises(bk.BackupError, match="content: files differ from the header's list"):
        bk.open_backup(listed, key, "b")
    no_db = resealed({**header, "files": []}, {}, key)
    with pytest.raises(bk.BackupError, match=re.escape("content: no kdc.db")):
        bk.open_backup(no_db, key, "b")


def test_a_forged_kdc_db_does_not_pass_the_checks(
    made: tuple[bytes, dict[str, object], HpkeKey], tmp_path: Path
) -> None:
    """Someone with the backup public key can seal anything; the checks after opening refuse
    a kdc.db that is not a database, or one whose audit trail is not the KDC's."""
    data, header, key = made
    opened = bk.open_backup(data, key, "b")
    members = {"kdc.db": b"not a database" * 100}
    members |= {f"keys/{n}": d for n, (d, _) in opened.keys.items()}
    forged = bk.open_backup(resealed(header, members, key), key, "b")
    with pytest.raises(bk.BackupError, match=r"kdc\.db: not a database|integrity_check"):
        bk.check(forged, tmp_path / "new", need_kek=False)
    # The real kdc.db with another KDC's signing key beside it: its trail does not verify.
    other = HpkeKey.generate()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--state", str(tmp_path / "o"), "init", "--control-zone", "kdc.ex."]) == 0
    theirs = bk.open_backup(bk.make_backup(tmp_path / "o", other.public_only())[0], other, "o")
    swapped = {"kdc.db": opened.db} | {f"keys/{n}": d for n, (d, _) in theirs.keys.items()}
    header2 = {**header, "kdc": json.loads(json.dumps(theirs.header["kdc"]))}
    forged = bk.open_backup(resealed(header2, swapped, key), key, "b")
    with pytest.raises(bk.BackupError, match="audit: the trail does not verify"):
        bk.check(forged, tmp_path / "new", need_kek=False)
    assert not (tmp_path / "new").exists()
