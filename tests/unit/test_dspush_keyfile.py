"""The TSIG key file of a DS push (krs_plugin/kdc/dspush.py) is read strictly: what tsig-keygen
writes is taken, anything else is refused naming the file and the problem, a world-readable file
is refused, and the secret never appears in a message."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import dns.name
import dns.tsig
import pytest

from krs_plugin.kdc.dspush import PushConfig, ds_records, push_ds
from krs_plugin.tsigkey import TsigKeyFileError, parse_tsig_key, read_tsig_key

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
GOOD = f'key "ds-push" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    file = tmp_path / "ds-push.key"
    file.write_text(text)
    file.chmod(mode)
    return file


def test_reads_what_tsig_keygen_writes(tmp_path: Path) -> None:
    key = read_tsig_key(write(tmp_path, GOOD))
    assert key.name == dns.name.from_text("ds-push")
    assert key.algorithm == dns.tsig.HMAC_SHA256
    assert key.secret == b"secret-secret-secret-secret-secr"


@pytest.mark.skipif(shutil.which("tsig-keygen") is None, reason="needs tsig-keygen (bind9)")
def test_reads_tsig_keygen_output(tmp_path: Path) -> None:
    made = subprocess.run(
        ["tsig-keygen", "-a", "hmac-sha512", "parent-update"], capture_output=True, text=True
    )
    key = read_tsig_key(write(tmp_path, made.stdout, 0o640))
    assert key.algorithm == dns.tsig.HMAC_SHA512
    assert len(key.secret) == 64


def test_comments_are_allowed() -> None:
    text = f"# made by hand\n// for the parent\n/* two\nlines */\n{GOOD}"
    assert parse_tsig_key(text).name == dns.name.from_text("ds-push")


def test_world_readable_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path, GOOD, 0o644)
    with pytest.raises(TsigKeyFileError, match=r"readable by every user \(mode 0644\)") as info:
        read_tsig_key(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key"),
        (GOOD + GOOD, "2 key statements"),
        (GOOD.replace("hmac-sha256", "hmac-sha999"), "unknown algorithm hmac-sha999"),
        (GOOD.replace(SECRET, "not*base64"), "the secret is not base64"),
        (GOOD.replace(f'\tsecret "{SECRET}";\n', ""), "no secret"),
        (GOOD.replace("\talgorithm hmac-sha256;\n", ""), "no algorithm"),
        (GOOD.replace("algorithm hmac-sha256;", "algorithm hmac-sha256; algorithm x;"), "twice"),
        (GOOD.replace("secret", "secrte"), "unexpected"),
        (GOOD + "options { };", "outside the key statement"),
    ],
)
def test_bad_files_are_refused_naming_file_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    file = write(tmp_path, text)
    with pytest.raises(TsigKeyFileError) as info:
        read_tsig_key(file)
    assert str(file) in str(info.value)
    assert problem in str(info.value)
    assert SECRET not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TsigKeyFileError, match="No such file"):
        read_tsig_key(tmp_path / "absent.key")


def test_ds_lines_of_another_owner_are_refused() -> None:
    zone = dns.name.from_text("child.lab.example.")
    assert len(ds_records(zone, ["child.lab.example. IN DS 1 13 2 " + "aa" * 32])) == 1
    with pytest.raises(ValueError, match=r"not child\.lab\.example\."):
        ds_records(zone, ["other.lab.example. IN DS 1 13 2 " + "aa" * 32])


def test_push_refuses_before_sending(tmp_path: Path) -> None:
    ds = ["child.lab.example. IN DS 1 13 2 " + "aa" * 32]
    assert push_ds("child.lab.example.", ds, PushConfig()).detail.startswith("nowhere to push")
    assert not push_ds("child.lab.example.", [], PushConfig(hook="true")).ok
    leaky = write(tmp_path, GOOD, 0o604)
    result = push_ds(
        "child.lab.example.", ds, PushConfig(update="127.0.0.1:9", tsig_file=str(leaky))
    )
    assert not result.ok
    assert "UPDATE not sent" in result.detail and "readable by every user" in result.detail
    assert SECRET not in result.detail


def test_comment_markers_inside_the_secret_are_part_of_it() -> None:
    """A base64 secret holds "//" about once in a hundred keys (CI drew one)."""
    secret = "ab//cd+/ef//gh//ij//kl//mn//op//qr//st//uv//wx8="
    key = parse_tsig_key(f'key "k" {{ algorithm hmac-sha256; secret "{secret}"; }}; // end\n')
    assert key.secret == base64.b64decode(secret)
