"""BIND's text forms of a key: the ``.private`` file (``Private-key-format: v1.3``), the ``.key``
file (comments + DNSKEY RR) and the ``K<zone>+<alg>+<tag>`` file name.

These are what BIND, Knot's ``keymgr import-bind``, PowerDNS and ldns take, so they are the form
in which received keys reach every nameserver. Writing reproduces ``dnssec-keygen``'s output;
reading accepts every field BIND 9.18 writes and refuses anything malformed with a
``KeyFileError`` that names the file and the field (never a bare ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import re

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.ttl
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.dnssec.algorithms import RSA_MAX_BITS, Algorithm, PrivateKey, get_algorithm
from krs_plugin.dnssec.timing import (
    BIND_FIELDS,
    OTHER_BIND_TIME_FIELDS,
    KeyTiming,
    format_bind_time,
    human_time,
    parse_bind_time,
)
from krs_plugin.errors import KeyFileError, UnsupportedAlgorithmError

SUPPORTED_FORMATS = ("v1.2", "v1.3")  # v1.2: BIND before 9.7, ldns, pdnsutil (no timing fields)
DEFAULT_TTL = 3600
MAX_TTL = 2**31 - 1
RSA_FIELDS = (
    "Modulus",
    "PublicExponent",
    "PrivateExponent",
    "Prime1",
    "Prime2",
    "Exponent1",
    "Exponent2",
    "Coefficient",
)
# Numeric (non-time) metadata BIND may write; checked to be numbers, otherwise ignored.
_BIND_NUMERIC_FIELDS = (
    "Predecessor",
    "Successor",
    "MaxTTL",
    "RollPeriod",
    "Lifetime",
    "DSPubCount",
    "DSRemCount",
)
_TIMING_BY_BIND = {bind: attr for attr, bind in BIND_FIELDS.items()}
_ALGORITHM_LINE = re.compile(r"([0-9]{1,3})(?:[ \t]+\(([A-Za-z0-9_-]+)\))?")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_B64_LINE = 56  # dnssec-keygen splits the DNSKEY's key into 56-character words
_FILENAME_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


# --- file names -----------------------------------------------------------------------------


def bind_key_stem(zone: dns.name.Name, algorithm: int, key_tag: int) -> str:
    """``K<zone>+<alg:03d>+<tag:05d>``, the zone as BIND's ``dns_name_tofilenametext`` writes it.

    That is: lower case, the trailing dot kept (``Kexample.com.+013+12345``, root ``K.+…``), and
    every byte other than letters, digits, ``-`` and ``_`` as ``%XX``, so no zone name can put a
    ``/`` into a path.
    """
    labels = []
    for label in zone.labels[:-1] if zone.is_absolute() else zone.labels:
        text = []
        for byte in label.lower():
            text.append(chr(byte) if byte in _FILENAME_SAFE else f"%{byte:02X}")
        labels.append("".join(text))
    name = ".".join(labels) + "." if labels else "."
    return f"K{name}+{algorithm:03d}+{key_tag:05d}"


# --- .private -------------------------------------------------------------------------------


def _b64_int(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")).decode()


def private_key_fields(algorithm: Algorithm, private: PrivateKey) -> list[tuple[str, str]]:
    """The key material fields of a ``.private`` file, in BIND's order."""
    if isinstance(private, rsa.RSAPrivateKey):
        n = private.private_numbers()
        values = (n.public_numbers.n, n.public_numbers.e, n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
        return [(name, _b64_int(v)) for name, v in zip(RSA_FIELDS, values, strict=True)]
    if isinstance(private, ec.EllipticCurvePrivateKey):
        scalar = private.private_numbers().private_value
        raw = scalar.to_bytes(algorithm.raw_private_bytes, "big")
    else:
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    return [("PrivateKey", base64.b64encode(raw).decode())]


def format_bind_private(algorithm: int, private: PrivateKey, timing: KeyTiming | None) -> str:
    """The ``.private`` file text: format, algorithm, key fields, then the timing fields."""
    alg = get_algorithm(algorithm)
    lines = ["Private-key-format: v1.3", f"Algorithm: {alg.number} ({alg.mnemonic})"]
    lines += [f"{name}: {value}" for name, value in private_key_fields(alg, private)]
    lines += [
        f"{name}: {format_bind_time(value)}" for name, value in (timing or KeyTiming()).items()
    ]
    return "\n".join(lines) + "\n"


def parse_bind_private(
    text: str, where: str = "private key file"
) -> tuple[int, PrivateKey, KeyTiming]:
    """Algorithm number, private key and timing from ``.private`` text.

    Unknown fields are tolerated (BIND adds fields over time); a missing, repeated or malformed
    known field is a ``KeyFileError`` naming ``where`` and the field.
    """
    fields = _private_fields(text, where)
    version = fields.get("Private-key-format")
    if version is None:
        raise KeyFileError(f"{where}: field 'Private-key-format' is missing (not a BIND key file)")
    if version not in SUPPORTED_FORMATS:
        raise KeyFileError(
            f"{where}: field 'Private-key-format' is {version[:20]!r}; "
            f"supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    algorithm = _algorithm_field(fields, where)
    if algorithm.number == 8:
        private: PrivateKey = _rsa_from_fields(fields, where)
    else:
        private = _raw_private_key(algorithm, _b64_field(fields, "PrivateKey", where), where)
    timing: dict[str, int] = {}
    for name, value in fields.items():
        if name in _TIMING_BY_BIND:
            timing[_TIMING_BY_BIND[name]] = parse_bind_time(value, f"{where}: field {name!r}")
        elif name in OTHER_BIND_TIME_FIELDS:
            parse_bind_time(value, f"{where}: field {name!r}")
        elif name in _BIND_NUMERIC_FIELDS and not (value.isascii() and value.isdigit()):
            raise KeyFileError(f"{where}: field {name!r} is {value[:20]!r}, not a number")
    return algorithm.number, private, KeyTiming(**timing)


def _private_fields(text: str, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith(";"):
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise KeyFileError(f"{where}: line {number} is not 'Field: value'")
        if not _FIELD_NAME.fullmatch(name):
            continue  # not a field of BIND's own (e.g. dnssec-settime's "SYNC Publish"): ignore
        if name in fields:
            raise KeyFileError(
                f"{where}: field {name!r} appears twice (lines {lines[name]} and {number})"
            )
        fields[name] = value.strip()
        lines[name] = number
    return fields


def _algorithm_field(fields: dict[str, str], where: str) -> Algorithm:
    text = fields.get("Algorithm")
    if text is None:
        raise KeyFileError(f"{where}: field 'Algorithm' is missing")
    match = _ALGORITHM_LINE.fullmatch(text)
    if match is None:
        raise KeyFileError(f"{where}: field 'Algorithm' is {text[:30]!r}, not '<number> (<name>)'")
    try:
        algorithm = get_algorithm(int(match.group(1)))
    except UnsupportedAlgorithmError as exc:
        raise UnsupportedAlgorithmError(f"{where}: field 'Algorithm': {exc}") from None
    mnemonic = match.group(2)
    if mnemonic is not None and mnemonic.upper() != algorithm.mnemonic:
        raise KeyFileError(
            f"{where}: field 'Algorithm' names {mnemonic!r}, but algorithm "
            f"{algorithm.number} is {algorithm.mnemonic}"
        )
    return algorithm


def _b64_field(fields: dict[str, str], name: str, where: str, max_bytes: int = 1024) -> bytes:
    if name not in fields:
        raise KeyFileError(f"{where}: field {name!r} is missing")
    text = "".join(fields[name].split())
    if not text:
        raise KeyFileError(f"{where}: field {name!r} is empty")
    too_long = KeyFileError(f"{where}: field {name!r} is longer than {max_bytes} bytes")
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise too_long
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: field {name!r} is not valid base64") from None
    if len(value) > max_bytes:
        raise too_long
    return value


def _rsa_from_fields(fields: dict[str, str], where: str) -> rsa.RSAPrivateKey:
    limit = RSA_MAX_BITS // 8
    n, e, d, p, q, dmp1, dmq1, iqmp = (
        int.from_bytes(_b64_field(fields, name, where, limit), "big") for name in RSA_FIELDS
    )
    public = rsa.RSAPublicNumbers(e, n)
    try:
        return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where}: the RSA fields do not form a valid RSA key: {exc}") from None


def _raw_private_key(algorithm: Algorithm, raw: bytes, where: str) -> PrivateKey:
    size = algorithm.raw_private_bytes
    if algorithm.number in (13, 14) and len(raw) < size:
        # dnssec-keygen writes the ECDSA scalar without its leading zero bytes (1 key in 256).
        raw = raw.rjust(size, b"\x00")
    if len(raw) != size:
        raise KeyFileError(
            f"{where}: field 'PrivateKey' is {len(raw)} bytes; algorithm {algorithm.number} "
            f"({algorithm.mnemonic}) needs {size}"
        )
    try:
        if algorithm.number == 13:
            return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        if algorithm.number == 14:
            return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP384R1())
        if algorithm.number == 15:
            return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        return ed448.Ed448PrivateKey.from_private_bytes(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"{where}: field 'PrivateKey' is not a valid {algorithm.mnemonic} private key"
        ) from None


# --- .key -----------------------------------------------------------------------------------


def dnskey_rdata_text(dnskey: DNSKEY) -> str:
    """DNSKEY rdata as dnssec-keygen writes it (the key in 56-character base64 words)."""
    b64 = base64.b64encode(dnskey.key).decode()
    words = " ".join(b64[i : i + _B64_LINE] for i in range(0, len(b64), _B64_LINE))
    return f"{dnskey.flags} {dnskey.protocol} {int(dnskey.algorithm)} {words}"


def format_bind_public(
    zone: dns.name.Name, ttl: int, dnskey: DNSKEY, key_tag: int, timing: KeyTiming | None
) -> str:
    """The ``.key`` file text: dnssec-keygen's comment lines, then the DNSKEY RR."""
    kind = "key-signing" if dnskey.flags & 1 else "zone-signing"
    lines = [f"; This is a {kind} key, keyid {key_tag}, for {zone.to_text()}"]
    for name, value in (timing or KeyTiming()).items():
        lines.append(f"; {name}: {format_bind_time(value)} ({human_time(value)})")
    lines.append(f"{zone.to_text()} {ttl} IN DNSKEY {dnskey_rdata_text(dnskey)}")
    return "\n".join(lines) + "\n"


def parse_dnskey_text(text: str, *, where: str) -> tuple[dns.name.Name, int, DNSKEY]:
    """Exactly one ``owner [TTL] [IN] DNSKEY <rdata>`` record (comments and blank lines allowed).

    Returns owner, TTL (``DEFAULT_TTL`` when the record has none, as in dnssec-keygen's files
    without ``-L``) and rdata. The owner must be absolute (end with a dot).
    """
    try:
        tok = dns.tokenizer.Tokenizer(text)
        token = tok.get()
        while token.is_eol():
            token = tok.get()
        if token.is_eof():
            raise KeyFileError(f"{where}: no DNSKEY record")
        if not token.is_identifier():
            raise KeyFileError(f"{where}: expected an owner name, found {token.value[:40]!r}")
        owner = dns.name.from_text(token.value, origin=None)
        if not owner.is_absolute():
            raise KeyFileError(f"{where}: owner {token.value[:60]!r} does not end with a dot")
        ttl: int | None = None
        seen_class = False
        while True:
            token = tok.get()
            word = token.value.upper() if token.is_identifier() else ""
            if word == "DNSKEY":
                break
            if word[:1].isdigit() and ttl is None:
                ttl = dns.ttl.from_text(token.value)
            elif word == "IN" and not seen_class:
                seen_class = True
            else:
                raise KeyFileError(
                    f"{where}: expected TTL, class IN or DNSKEY, found {token.value[:40]!r}"
                )
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, tok)
        token = tok.get()
        while token.is_eol():
            token = tok.get()
        if not token.is_eof():
            raise KeyFileError(f"{where}: more than one record (found {token.value[:40]!r})")
    except KeyFileError:
        raise
    except (dns.exception.DNSException, ValueError, binascii.Error, UnicodeError) as exc:
        raise KeyFileError(f"{where}: malformed DNSKEY record: {exc}") from None
    if ttl is not None and ttl > MAX_TTL:
        raise KeyFileError(f"{where}: TTL {ttl} is larger than {MAX_TTL}")
    assert isinstance(rdata, DNSKEY)
    return owner, DEFAULT_TTL if ttl is None else ttl, rdata
