"""BIND key file pairs on disk: ``K<zone>+<alg>+<tag>.key`` (0644) and ``.private`` (0600).

Reading requires the private key to derive exactly the ``.key`` file's DNSKEY (and the key tag in
the file name), because a server happily signs with a mismatched pair. Writing is atomic and the
``.private`` file is 0600 from the moment it exists (see ``krs_plugin.files``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dns.dnssec

from krs_plugin.dnssec.bindtext import parse_bind_private, parse_dnskey_text
from krs_plugin.dnssec.key import VALID_FLAGS, DnssecKey, check_key_matches
from krs_plugin.dnssec.timing import KeyTiming
from krs_plugin.errors import KeyFileError, KeyMismatchError, UnsupportedAlgorithmError
from krs_plugin.files import PUBLIC_MODE, SECRET_MODE, atomic_write

MAX_KEY_FILE = 64 * 1024  # a 4096-bit RSA .private is about 3.3 KB
_STEM = re.compile(r"K.+\+(\d{3})\+(\d{5})")


def bind_private_text(key: DnssecKey, timing: KeyTiming | None = None) -> str:
    """The ``.private`` file content for ``key`` (same as ``key.to_bind_private(timing)``)."""
    return key.to_bind_private(timing)


def bind_public_text(key: DnssecKey, timing: KeyTiming | None = None) -> str:
    """The ``.key`` file content for ``key`` (same as ``key.to_bind_public(timing)``)."""
    return key.to_bind_public(timing)


def key_file_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(``.key``, ``.private``) for a path to either file or to their common stem."""
    text = os.fspath(path)
    for suffix in (".key", ".private"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return Path(text + ".key"), Path(text + ".private")


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE} bytes, not a key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: not ASCII text (byte {exc.start})") from None


def read_bind_key_pair(path: str | os.PathLike[str]) -> tuple[DnssecKey, KeyTiming]:
    """Read both files of a BIND key (``path`` is the ``.key``, the ``.private`` or the stem).

    The private key must derive the ``.key`` file's DNSKEY, and, when the file name has BIND's
    ``K<zone>+<alg>+<tag>`` form, that algorithm and tag: ``KeyMismatchError`` naming the file and
    both key tags otherwise. Every error has the stage ``apply``: a key file on this node is its
    own side, not a refusal of the KDC's data (krs_plugin/errors.py).
    """
    try:
        return _read_bind_key_pair(path)
    except (KeyMismatchError, UnsupportedAlgorithmError) as exc:
        exc.stage = "apply"
        raise


def _read_bind_key_pair(path: str | os.PathLike[str]) -> tuple[DnssecKey, KeyTiming]:
    key_path, private_path = key_file_paths(path)
    owner, ttl, dnskey = parse_dnskey_text(_read(key_path), where=str(key_path))
    algorithm, private, timing = parse_bind_private(_read(private_path), where=str(private_path))
    dnskey_tag = dns.dnssec.key_id(dnskey)
    if algorithm != int(dnskey.algorithm):
        raise KeyMismatchError(
            f"{private_path}: holds an algorithm {algorithm} key, but {key_path.name} has an "
            f"algorithm {int(dnskey.algorithm)} DNSKEY (tag {dnskey_tag})"
        )
    if dnskey.flags not in VALID_FLAGS:
        raise KeyFileError(
            f"{key_path}: DNSKEY flags {dnskey.flags} are neither 256 (ZSK) nor 257 (KSK/CSK)"
        )
    try:
        key = DnssecKey(owner, algorithm, dnskey.flags, private, ttl)
    except KeyFileError as exc:
        raise KeyFileError(f"{private_path}: {exc}") from None
    check_key_matches(key, dnskey, where=str(private_path))
    stem = _STEM.fullmatch(key_path.name[: -len(".key")])
    if stem is not None and key_path.name[: -len(".key")] != key.basename:
        raise KeyMismatchError(
            f"{key_path}: the file name says algorithm {int(stem.group(1))} tag "
            f"{int(stem.group(2))}, but the key is {key.basename} (algorithm {key.algorithm} "
            f"tag {key.key_tag})"
        )
    return key, timing


def write_bind_key_pair(
    directory: str | os.PathLike[str], key: DnssecKey, timing: KeyTiming | None = None
) -> tuple[Path, Path]:
    """Write ``.private`` (0600 from creation) then ``.key`` (0644), each atomically.

    Each file goes to a temporary file in ``directory`` (created 0600 by ``mkstemp``) and is
    renamed over the target with ``os.replace``; a reader never sees half a file. Returns
    (``.key`` path, ``.private`` path).
    """
    base = Path(directory) / key.basename
    key_path, private_path = Path(f"{base}.key"), Path(f"{base}.private")
    atomic_write(private_path, key.to_bind_private(timing).encode("ascii"), SECRET_MODE)
    atomic_write(key_path, key.to_bind_public(timing).encode("ascii"), PUBLIC_MODE)
    return key_path, private_path
