"""A DNSSEC key pair: the private key, the DNSKEY it derives, and its key tag.

Every server we feed signs with whatever private key it is given, even one that does not belong to
the DNSKEY it publishes, and then serves signatures that never validate. So the DNSKEY here is
always *derived* from the private key, and ``check_key_matches`` compares it with what a KDC or a
``.key`` file said before anything is installed.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from functools import cached_property

import dns.dnssec
import dns.exception
import dns.name
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.dnssec.algorithms import (
    RSA_MAX_BITS,
    RSA_MIN_BITS,
    PrivateKey,
    describe_key,
    get_algorithm,
)
from krs_plugin.dnssec.bindtext import (
    DEFAULT_TTL,
    MAX_TTL,
    bind_key_stem,
    format_bind_private,
    format_bind_public,
)
from krs_plugin.dnssec.timing import KeyTiming
from krs_plugin.errors import KeyFileError, KeyMismatchError

ZSK_FLAGS = 256
KSK_FLAGS = 257  # also a CSK's: the flags cannot tell a KSK from a CSK
VALID_FLAGS = (ZSK_FLAGS, KSK_FLAGS)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_MAX_PEM = 16 * 1024
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_PKCS8_PEM = re.compile(
    rb"\A\s*-----BEGIN PRIVATE KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PRIVATE KEY-----\s*\Z"
)


@dataclass(frozen=True)
class DnssecKey:
    """One zone's key. ``private_key`` never appears in repr, str or logs."""

    zone: dns.name.Name
    algorithm: int
    flags: int
    key_material: PrivateKey | bytes = field(repr=False, compare=False)
    """The private key; kept as PKCS#8 DER once checked (see ``private_key``)."""
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        material = self.key_material
        private = _load_der(material) if isinstance(material, bytes) else material
        self._check(private)
        if not isinstance(material, bytes):
            der = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            object.__setattr__(self, "key_material", der)

    @property
    def private_key(self) -> PrivateKey:
        """The private key object, loaded from DER at each use.

        A loaded key holds about 2 KB of OpenSSL memory and its DER 70-1,200 bytes; a
        distribution for 10,000 zones carries 20,000 keys, so the KRS keeps only the DER
        (loading one costs 3-130 microseconds).
        """
        return _load_der(self.key_material)  # type: ignore[arg-type]  # always DER after init

    def _check(self, private: PrivateKey) -> None:
        if not isinstance(self.zone, dns.name.Name) or not self.zone.is_absolute():
            raise KeyFileError(f"key zone {self.zone!r} is not an absolute domain name")
        algorithm = get_algorithm(self.algorithm)
        # dnspython hands out IntEnum algorithms; keep plain ints so text and JSON never vary.
        object.__setattr__(self, "algorithm", algorithm.number)
        if self.flags not in VALID_FLAGS:
            raise KeyFileError(
                f"key for {self.zone}: flags {self.flags!r} are neither 256 (ZSK) nor 257 (KSK/CSK)"
            )
        object.__setattr__(self, "flags", int(self.flags))
        if not algorithm.accepts(private):
            raise KeyFileError(
                f"key for {self.zone}: {describe_key(private)} cannot be used with "
                f"algorithm {algorithm.number} ({algorithm.mnemonic}), which needs "
                f"{algorithm.key_description}"
            )
        if isinstance(private, rsa.RSAPrivateKey):
            _check_rsa_size(private.key_size, f"key for {self.zone}")
        if (
            not isinstance(self.ttl, int)
            or isinstance(self.ttl, bool)
            or not 0 <= self.ttl <= MAX_TTL
        ):
            raise KeyFileError(f"key for {self.zone}: TTL {self.ttl!r} is not in 0..{MAX_TTL}")

    @cached_property
    def dnskey(self) -> DNSKEY:
        """The DNSKEY rdata derived from the private key."""
        return dns.dnssec.make_dnskey(self.public_key, self.algorithm, flags=self.flags)

    @cached_property
    def key_tag(self) -> int:
        """RFC 4034 appendix B key tag of ``dnskey`` (dnspython's ``key_id``)."""
        return dns.dnssec.key_id(self.dnskey)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def role(self) -> str:
        """``KSK`` for flags 257 (a KSK or a CSK), ``ZSK`` for 256."""
        return "KSK" if self.flags == KSK_FLAGS else "ZSK"

    @property
    def basename(self) -> str:
        """BIND's file name stem, ``K<zone>+<alg:03d>+<tag:05d>`` (``Kexample.com.+013+01234``)."""
        return bind_key_stem(self.zone, self.algorithm, self.key_tag)

    def dnskey_text(self) -> str:
        """The DNSKEY RR as tdns writes it into payloads (miekg/dns ``String()``: tab-separated)."""
        rd = self.dnskey
        rdata = f"{rd.flags} {rd.protocol} {int(rd.algorithm)} {base64.b64encode(rd.key).decode()}"
        return f"{self.zone.to_text()}\t{self.ttl}\tIN\tDNSKEY\t{rdata}"

    def to_pkcs8_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM: what tdns sends, base64-encoded, as ``private_key``."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def to_bind_private(self, timing: KeyTiming | None = None) -> str:
        """The ``.private`` file text (``Private-key-format: v1.3``)."""
        return format_bind_private(self.algorithm, self.private_key, timing)

    def to_bind_public(self, timing: KeyTiming | None = None) -> str:
        """The ``.key`` file text: dnssec-keygen's comments, then the DNSKEY RR."""
        return format_bind_public(self.zone, self.ttl, self.dnskey, self.key_tag, timing)

    def __str__(self) -> str:
        return f"{self.role} {self.zone} algorithm {self.algorithm} tag {self.key_tag}"


def _load_der(der: bytes) -> PrivateKey:
    # RSA keys were checked when first loaded from the KDC's PEM or a .private file.
    key = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    return key  # type: ignore[return-value]  # the DER was made from a PrivateKey


def _check_rsa_size(bits: int, where: str) -> None:
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        raise KeyFileError(
            f"{where}: RSA key of {bits} bits; DNSSEC servers take {RSA_MIN_BITS}..{RSA_MAX_BITS}"
        )


def _as_name(zone: dns.name.Name | str) -> dns.name.Name:
    if isinstance(zone, dns.name.Name):
        return zone
    try:
        return dns.name.from_text(zone)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise KeyFileError(f"zone {zone[:80]!r} is not a domain name: {exc}") from None


def generate_key(
    zone: dns.name.Name | str,
    algorithm: int,
    flags: int,
    *,
    rsa_bits: int = 2048,
    ttl: int = DEFAULT_TTL,
) -> DnssecKey:
    """A new key for ``zone`` (the KDC's key generation)."""
    name = _as_name(zone)
    alg = get_algorithm(algorithm)
    if alg.number == 8:
        _check_rsa_size(rsa_bits, f"key for {name}")
    return DnssecKey(name, alg.number, flags, alg.generate(rsa_bits), ttl)


def load_pkcs8_pem(
    pem: bytes,
    zone: dns.name.Name | str,
    algorithm: int,
    flags: int,
    ttl: int = DEFAULT_TTL,
    *,
    where: str = "private key",
) -> DnssecKey:
    """A key from unencrypted PKCS#8 PEM (Go's ``x509.MarshalPKCS8PrivateKey``, as tdns sends it).

    Only one ``PRIVATE KEY`` block is accepted: PKCS#1/SEC1 (``RSA``/``EC PRIVATE KEY``) and
    encrypted PEM are refused, so there is one format to reason about. The key must be of the
    type ``algorithm`` needs (``KeyFileError`` otherwise).
    """
    name = _as_name(zone)
    get_algorithm(algorithm)
    if not isinstance(pem, bytes | bytearray):
        raise KeyFileError(f"{where}: expected PEM bytes, got {type(pem).__name__}")
    if len(pem) > _MAX_PEM:
        raise KeyFileError(f"{where}: {len(pem)} bytes is too long for a PEM private key")
    match = _PKCS8_PEM.match(bytes(pem))
    if match is None:
        label = _PEM_LABEL.search(pem)
        if label is None:
            raise KeyFileError(f"{where}: not a PEM private key (no '-----BEGIN' line)")
        if label.group(1) != b"PRIVATE KEY":
            raise KeyFileError(
                f"{where}: PEM block is '{label.group(1).decode()}'; expected an unencrypted "
                "PKCS#8 'PRIVATE KEY'"
            )
        raise KeyFileError(f"{where}: malformed PKCS#8 PEM (one 'PRIVATE KEY' block expected)")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: the PEM body is not valid base64") from None
    if not _is_pkcs8_der(der):
        raise KeyFileError(f"{where}: the PEM body is not a PKCS#8 PrivateKeyInfo structure")
    try:
        private = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{where}: the PKCS#8 structure holds no usable private key") from None
    if not isinstance(
        private,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise KeyFileError(f"{where}: {describe_key(private)} is not a DNSSEC signing key")
    try:
        return DnssecKey(name, algorithm, flags, private, ttl)
    except KeyFileError as exc:
        raise KeyFileError(f"{where}: {exc}") from None


def _is_pkcs8_der(der: bytes) -> bool:
    """``SEQUENCE { INTEGER 0|1, SEQUENCE AlgorithmIdentifier, … }`` filling ``der`` exactly.

    PKCS#1 (``SEQUENCE { INTEGER 0, INTEGER n, … }``) and SEC1 (``SEQUENCE { INTEGER 1,
    OCTET STRING … }``) fail here, though cryptography would load them too.
    """
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        start, length = 2, der[1]
    else:
        count = der[1] & 0x7F
        if not 1 <= count <= 3 or len(der) < 2 + count:
            return False
        start, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    if start + length != len(der):
        return False
    return (
        der[start : start + 3] in (b"\x02\x01\x00", b"\x02\x01\x01")
        and der[start + 3 : start + 4] == b"\x30"
    )


def check_key_matches(
    key: DnssecKey,
    dnskey: DNSKEY,
    expected_tag: int | None = None,
    *,
    where: str | None = None,
) -> None:
    """Require that ``key`` derives exactly ``dnskey`` (and ``expected_tag``, when given).

    ``KeyMismatchError`` names the zone, the tag that was expected and the tag found.
    """
    place = f"{where}: key for {key.zone}" if where else f"key for {key.zone}"
    given_tag = dns.dnssec.key_id(dnskey)
    if key.dnskey != dnskey:
        raise KeyMismatchError(
            f"{place}: the private key derives DNSKEY tag {key.key_tag} (flags {key.flags}, "
            f"algorithm {key.algorithm}), but the DNSKEY given has tag {given_tag} (flags "
            f"{dnskey.flags}, algorithm {int(dnskey.algorithm)})"
        )
    if expected_tag is not None and expected_tag != key.key_tag:
        raise KeyMismatchError(
            f"{place}: key tag {expected_tag} was expected, but the DNSKEY's tag is {key.key_tag}"
        )
