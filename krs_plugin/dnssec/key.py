"""A DNSSEC key pair: the private key, the DNSKEY it derives, and its key tag.

Every server we feed signs with whatever private key it is given, even one that does not belong to
the DNSKEY it publishes, and then serves signatures that never validate. So the DNSKEY here is
always *derived* from the private key, and ``check_key_matches`` compares it with what a KDC said.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import cached_property

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.dnssec.algorithms import PrivateKey, get_algorithm
from krs_plugin.errors import KeyFileError, KeyMismatchError

ZSK_FLAGS = 256
KSK_FLAGS = 257
VALID_FLAGS = (ZSK_FLAGS, KSK_FLAGS)


@dataclass(frozen=True)
class DnssecKey:
    """One zone's key. ``private_key`` never appears in repr, str or logs."""

    zone: dns.name.Name
    algorithm: int
    flags: int
    private_key: PrivateKey = field(repr=False, compare=False)
    ttl: int = 3600

    def __post_init__(self) -> None:
        algorithm = get_algorithm(self.algorithm)
        if not algorithm.accepts(self.private_key):
            raise KeyFileError(
                f"key for {self.zone}: a {type(self.private_key).__name__} cannot be used with "
                f"algorithm {self.algorithm} ({algorithm.mnemonic})"
            )
        if self.flags not in VALID_FLAGS:
            raise KeyFileError(f"key for {self.zone}: flags {self.flags} is neither 256 nor 257")

    @cached_property
    def dnskey(self) -> DNSKEY:
        """The DNSKEY rdata derived from the private key."""
        return dns.dnssec.make_dnskey(
            self.private_key.public_key(),
            self.algorithm,
            flags=self.flags,
        )

    @cached_property
    def key_tag(self) -> int:
        return dns.dnssec.key_id(self.dnskey)

    @property
    def role(self) -> str:
        return "KSK" if self.flags == KSK_FLAGS else "ZSK"

    @property
    def basename(self) -> str:
        """BIND's file name stem, ``K<zone>.+<alg>+<tag>`` (the zone keeps its trailing dot)."""
        return f"K{self.zone.to_text()}+{self.algorithm:03d}+{self.key_tag:05d}"

    def dnskey_text(self) -> str:
        """The DNSKEY RR as tdns writes it into payloads (tab-separated, with TTL and class)."""
        rd = self.dnskey
        rdata = f"{rd.flags} {rd.protocol} {int(rd.algorithm)} {base64.b64encode(rd.key).decode()}"
        return f"{self.zone.to_text()}\t{self.ttl}\tIN\tDNSKEY\t{rdata}"

    def to_pkcs8_pem(self) -> bytes:
        """PKCS#8 PEM, what tdns puts (base64-encoded) into a payload's ``private_key``."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __str__(self) -> str:
        return f"{self.role} {self.zone} algorithm {self.algorithm} tag {self.key_tag}"


def generate_key(
    zone: dns.name.Name | str,
    algorithm: int,
    flags: int,
    *,
    rsa_bits: int = 2048,
    ttl: int = 3600,
) -> DnssecKey:
    """A new key for ``zone`` (the KDC's key generation)."""
    name = dns.name.from_text(zone) if isinstance(zone, str) else zone
    private = get_algorithm(algorithm).generate(rsa_bits)
    return DnssecKey(name, algorithm, flags, private, ttl)


def load_pkcs8_pem(
    pem: bytes,
    zone: dns.name.Name | str,
    algorithm: int,
    flags: int,
    ttl: int = 3600,
    *,
    where: str = "private key",
) -> DnssecKey:
    """A key from PKCS#8 PEM (Go's ``x509.MarshalPKCS8PrivateKey``, as tdns sends it)."""
    name = dns.name.from_text(zone) if isinstance(zone, str) else zone
    get_algorithm(algorithm)
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where}: not an unencrypted PKCS#8 PEM private key ({exc})") from exc
    return DnssecKey(name, algorithm, flags, private, ttl)  # type: ignore[arg-type]


def check_key_matches(
    key: DnssecKey,
    dnskey: DNSKEY,
    expected_tag: int | None = None,
    *,
    where: str | None = None,
) -> None:
    """Require that ``key`` derives exactly ``dnskey`` (and ``expected_tag``, when given)."""
    place = where or f"key for {key.zone}"
    given_tag = dns.dnssec.key_id(dnskey)
    if key.dnskey != dnskey:
        raise KeyMismatchError(
            f"{place}: the private key derives DNSKEY tag {key.key_tag} (flags {key.flags}, "
            f"algorithm {key.algorithm}), but the DNSKEY given has tag {given_tag} (flags "
            f"{dnskey.flags}, algorithm {dnskey.algorithm})"
        )
    if expected_tag is not None and expected_tag != key.key_tag:
        raise KeyMismatchError(
            f"{place}: key tag {expected_tag} was announced, but the DNSKEY's tag is {key.key_tag}"
        )


def parse_dnskey_text(text: str, *, where: str) -> tuple[dns.name.Name, int, DNSKEY]:
    """Parse ``owner [TTL] [IN] DNSKEY <rdata>`` into owner, TTL (3600 if absent) and rdata."""
    fields = text.split()
    try:
        idx = next(i for i, f in enumerate(fields) if f.upper() == "DNSKEY")
    except StopIteration:
        raise KeyFileError(f"{where}: no DNSKEY record in {text[:60]!r}") from None
    head = fields[:idx]
    if not head:
        raise KeyFileError(f"{where}: DNSKEY record has no owner name")
    try:
        owner = dns.name.from_text(head[0])
        ttl = 3600
        for extra in head[1:]:
            if extra.isdigit():
                ttl = int(extra)
            elif extra.upper() != "IN":
                raise KeyFileError(f"{where}: unexpected {extra!r} before DNSKEY")
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.DNSKEY, " ".join(fields[idx + 1 :])
        )
    except KeyFileError:
        raise
    except Exception as exc:  # dnspython raises several types for bad text
        raise KeyFileError(f"{where}: malformed DNSKEY record: {exc}") from exc
    assert isinstance(rdata, DNSKEY)
    return owner, ttl, rdata
