"""BIND key files: ``K<zone>+<alg>+<tag>.key`` and ``.private`` (``Private-key-format: v1.3``).

These are what BIND, Knot's ``keymgr import-bind``, PowerDNS and ldns take, so they are the form in
which received keys reach every nameserver. Reading tolerates fields BIND adds over time; writing
produces what ``dnssec-keygen`` produces.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from krs_plugin.dnssec.algorithms import PrivateKey, get_algorithm
from krs_plugin.dnssec.key import DnssecKey, check_key_matches, parse_dnskey_text
from krs_plugin.dnssec.timing import (
    BIND_FIELDS,
    KeyTiming,
    format_bind_time,
    human_time,
    parse_bind_time,
)
from krs_plugin.errors import KeyFileError, KrsError
from krs_plugin.files import PUBLIC_MODE, SECRET_MODE, atomic_write

SUPPORTED_FORMATS = ("v1.2", "v1.3")
_RSA_FIELDS = (
    "Modulus",
    "PublicExponent",
    "PrivateExponent",
    "Prime1",
    "Prime2",
    "Exponent1",
    "Exponent2",
    "Coefficient",
)
_TIMING_BY_BIND = {bind: attr for attr, bind in BIND_FIELDS.items()}


def _b64_int(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")).decode()


def bind_private_text(key: DnssecKey, timing: KeyTiming | None = None) -> str:
    """The ``.private`` file content for ``key``."""
    algorithm = get_algorithm(key.algorithm)
    lines = ["Private-key-format: v1.3", f"Algorithm: {key.algorithm} ({algorithm.mnemonic})"]
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        n = private.private_numbers()
        values = (n.public_numbers.n, n.public_numbers.e, n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
        lines += [f"{name}: {_b64_int(v)}" for name, v in zip(_RSA_FIELDS, values, strict=True)]
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        scalar = private.private_numbers().private_value
        raw = scalar.to_bytes(algorithm.raw_private_bytes, "big")
        lines.append(f"PrivateKey: {base64.b64encode(raw).decode()}")
    else:
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        lines.append(f"PrivateKey: {base64.b64encode(raw).decode()}")
    for name, value in (timing or KeyTiming()).items():
        lines.append(f"{name}: {format_bind_time(value)}")
    return "\n".join(lines) + "\n"


def bind_public_text(key: DnssecKey, timing: KeyTiming | None = None) -> str:
    """The ``.key`` file content: dnssec-keygen's comment lines, then the DNSKEY RR."""
    kind = "key-signing" if key.flags & 1 else "zone-signing"
    lines = [f"; This is a {kind} key, keyid {key.key_tag}, for {key.zone.to_text()}"]
    for name, value in (timing or KeyTiming()).items():
        lines.append(f"; {name}: {format_bind_time(value)} ({human_time(value)})")
    lines.append(f"{key.zone.to_text()} {key.ttl} IN DNSKEY {key.dnskey.to_text()}")
    return "\n".join(lines) + "\n"


def parse_bind_private(
    text: str, where: str = "private key file"
) -> tuple[int, PrivateKey, KeyTiming]:
    """Algorithm number, private key and timing from ``.private`` text."""
    fields: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith(";"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise KeyFileError(f"{where}: line {number} is not 'Field: value'")
        fields[name.strip()] = value.strip()
    version = fields.get("Private-key-format")
    if version is None:
        raise KeyFileError(f"{where}: missing 'Private-key-format' (not a BIND private key file)")
    if version not in SUPPORTED_FORMATS:
        raise KeyFileError(
            f"{where}: Private-key-format {version!r} is not supported "
            f"({' or '.join(SUPPORTED_FORMATS)})"
        )
    algorithm_text = fields.get("Algorithm", "").split(" ", 1)[0]
    if not algorithm_text.isdigit():
        raise KeyFileError(f"{where}: field 'Algorithm' is missing or not a number")
    algorithm = get_algorithm(int(algorithm_text))
    try:
        if algorithm.number == 8:
            private: PrivateKey = _rsa_from_fields(fields, where)
        else:
            raw = _b64_field(fields, "PrivateKey", where)
            if algorithm.number in (13, 14) and 0 < len(raw) < algorithm.raw_private_bytes:
                # BIND writes the ECDSA scalar without leading zero bytes (1 key in 128 for P-256).
                raw = raw.rjust(algorithm.raw_private_bytes, b"\x00")
            if len(raw) != algorithm.raw_private_bytes:
                raise KeyFileError(
                    f"{where}: field 'PrivateKey' is {len(raw)} bytes, algorithm "
                    f"{algorithm.number} needs {algorithm.raw_private_bytes}"
                )
            private = _raw_private(algorithm.number, raw)
    except KrsError:
        raise
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: not a valid algorithm {algorithm.number} key: {exc}") from exc
    timing_values: dict[str, int] = {}
    for bind_name, attr in _TIMING_BY_BIND.items():
        if bind_name in fields:
            timing_values[attr] = parse_bind_time(fields[bind_name], f"{where}: {bind_name}")
    return algorithm.number, private, KeyTiming(**timing_values)


def _b64_field(fields: dict[str, str], name: str, where: str) -> bytes:
    if name not in fields:
        raise KeyFileError(f"{where}: field {name!r} is missing")
    try:
        return base64.b64decode(fields[name].replace(" ", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{where}: field {name!r} is not base64: {exc}") from exc


def _rsa_from_fields(fields: dict[str, str], where: str) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dmp1, dmq1, iqmp = (
        int.from_bytes(_b64_field(fields, name, where), "big") for name in _RSA_FIELDS
    )
    numbers = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n))
    return numbers.private_key()


def _raw_private(algorithm: int, raw: bytes) -> PrivateKey:
    if algorithm == 13:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    if algorithm == 14:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP384R1())
    if algorithm == 15:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    return ed448.Ed448PrivateKey.from_private_bytes(raw)


def key_file_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(``.key``, ``.private``) for a path to either file or to their common stem."""
    text = os.fspath(path)
    for suffix in (".key", ".private"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return Path(text + ".key"), Path(text + ".private")


def read_bind_key_pair(path: str | os.PathLike[str]) -> tuple[DnssecKey, KeyTiming]:
    """Read both files of a BIND key; the private key must derive the ``.key`` file's DNSKEY."""
    key_path, private_path = key_file_paths(path)
    try:
        public_text = key_path.read_text(encoding="utf-8")
        private_text = private_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read BIND key files: {exc}") from exc
    records = [
        line
        for line in public_text.splitlines()
        if line.strip() and not line.lstrip().startswith(";")
    ]
    if len(records) != 1:
        raise KeyFileError(f"{key_path}: expected one DNSKEY record, found {len(records)} lines")
    owner, ttl, dnskey = parse_dnskey_text(records[0], where=str(key_path))
    algorithm, private, timing = parse_bind_private(private_text, where=str(private_path))
    if algorithm != dnskey.algorithm:
        raise KeyFileError(
            f"{private_path}: algorithm {algorithm} differs from {key_path}'s {dnskey.algorithm}"
        )
    key = DnssecKey(owner, algorithm, dnskey.flags, private, ttl)
    check_key_matches(key, dnskey, where=str(private_path))
    return key, timing


def write_bind_key_pair(
    directory: str | os.PathLike[str], key: DnssecKey, timing: KeyTiming | None = None
) -> tuple[Path, Path]:
    """Write ``.key`` (0644) and ``.private`` (0600 from creation), each atomically."""
    base = Path(directory) / key.basename
    key_path, private_path = Path(f"{base}.key"), Path(f"{base}.private")
    atomic_write(private_path, bind_private_text(key, timing).encode(), SECRET_MODE)
    atomic_write(key_path, bind_public_text(key, timing).encode(), PUBLIC_MODE)
    return key_path, private_path
