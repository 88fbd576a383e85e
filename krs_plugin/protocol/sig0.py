"""SIG(0) transaction signatures (RFC 2931) on DNS messages in wire form, with their KEY records.

A node enrolls by sending a DNS UPDATE signed with its new key: the signature proves it holds the
private half of the KEY it asks to register. dnspython has no SIG(0) (and refuses to parse a
message that carries one), so this module works on the wire bytes directly.

Layout, as BIND's nsupdate and miekg/dns (the Go peer, tdns) write it: one SIG RR, the last record
of the additional section (after any OPT), owner ".", class ANY, TTL 0; RDATA type covered 0,
algorithm, labels 0, original TTL 0, expiration, inception, key tag, signer name (uncompressed),
signature. The signed data is that RDATA without the signature, followed by the message exactly as
it was before the SIG was appended (ARCOUNT one lower). Ed25519 signs that data itself; ECDSA P-256
signs its SHA-256 and is carried as raw r||s (64 bytes).

Times: like nsupdate and tdns we sign with inception = now - 300 s and expiration = now + 300 s.
The verifier allows a further ``DEFAULT_SKEW`` (60 s) beyond that window, for signers that do not
backdate (Perl's Net::DNS::SEC sets inception = now) and for transit time, and refuses windows
longer than ``MAX_VALIDITY`` so that a captured UPDATE cannot be replayed for long.

Second implementations checked in tests/integration/test_sig0_interop.py: BIND 9.18 nsupdate signs
(we verify) but named >= 9.18.28 no longer verifies SIG(0) (CVE-2024-1975), knotd and ldns have no
SIG(0); Perl's Net::DNS::SEC (Debian libnet-dns-sec-perl) signs and verifies, in both directions.
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.wire
import dns.zonefile
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dns.rdtypes.ANY.KEY import KEY

from krs_plugin.errors import SignatureError, UnsupportedAlgorithmError, WireError

ALG_ECDSAP256SHA256 = 13
ALG_ED25519 = 15
ALGORITHM_NAMES = {ALG_ECDSAP256SHA256: "ECDSAP256SHA256", ALG_ED25519: "ED25519"}
KEY_FLAGS = 256  # what tdns gives its SIG(0) keys (BIND's dnssec-keygen -n HOST gives 512)
KEY_PROTOCOL = 3  # RFC 2535 3.1.3: DNSSEC
DEFAULT_TTL = 3600
DEFAULT_VALIDITY = 300  # expiration = now + this
BACKDATE = 300  # inception = now - this, as nsupdate and tdns do
DEFAULT_SKEW = 60  # extra seconds the verifier accepts on both ends of the window
MAX_VALIDITY = 3600  # longest expiration - inception the verifier accepts

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_SIG_FIXED = struct.Struct("!HBBIIIH")  # covered, algorithm, labels, orig TTL, exp, inc, tag
_SIG_TYPE = int(dns.rdatatype.SIG)
_TSIG_TYPE = int(dns.rdatatype.TSIG)
_ANY = int(dns.rdataclass.ANY)
_RAW_SIGNATURE = 64  # both algorithms: Ed25519 R||S, ECDSA P-256 r||s
_P256_COORDINATE = 32
_MAX_MESSAGE = 0xFFFF

Sig0PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
Sig0PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


# --- KEY records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sig0Key:
    """A KEY RR: the owner is the name that signs, the RDATA holds the public key."""

    owner: dns.name.Name
    ttl: int
    rdata: KEY

    @property
    def algorithm(self) -> int:
        return int(self.rdata.algorithm)

    @property
    def key_tag(self) -> int:
        return key_tag(self.rdata)

    @property
    def public_key(self) -> Sig0PublicKey:
        return public_key_of(self.rdata)

    def to_text(self) -> str:
        """``node1.example. 3600 IN KEY 256 3 15 <base64>``: the form the request carries."""
        return f"{self.owner.to_text()} {self.ttl} IN KEY {key_rdata_text(self.rdata)}"


def algorithm_of(key: object) -> int:
    """The DNSSEC algorithm number for a private or public key, or why it has none here."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ALG_ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return ALG_ECDSAP256SHA256
    raise UnsupportedAlgorithmError(
        f"SIG(0) keys must be Ed25519 (algorithm 15) or ECDSA P-256 (algorithm 13), "
        f"found {_describe(key)}"
    )


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an ECDSA {key.curve.name} key"
    return f"a {type(key).__name__}"


def public_key_bytes(public_key: Sig0PublicKey) -> bytes:
    """The KEY/DNSKEY public key field: Ed25519 raw 32 bytes (RFC 8080), P-256 x||y (RFC 6605)."""
    if algorithm_of(public_key) == ALG_ED25519:
        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return point[1:]  # drop the 0x04 "uncompressed" prefix


def key_rdata(public_key: Sig0PublicKey | Sig0PrivateKey, *, flags: int = KEY_FLAGS) -> KEY:
    """KEY RDATA (same layout as DNSKEY) for a key; a private key gives its public half."""
    if isinstance(public_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    if not 0 <= flags <= 0xFFFF:
        raise ValueError(f"KEY flags must fit 16 bits, found {flags}")
    algorithm = algorithm_of(public_key)
    raw = public_key_bytes(public_key)
    return KEY(dns.rdataclass.IN, dns.rdatatype.KEY, flags, KEY_PROTOCOL, algorithm, raw)


def key_from_private(
    private_key: Sig0PrivateKey,
    owner: dns.name.Name | str,
    *,
    ttl: int = DEFAULT_TTL,
    flags: int = KEY_FLAGS,
) -> Sig0Key:
    """The KEY RR a node publishes for ``private_key`` under ``owner``."""
    name = _absolute(owner, "KEY owner")
    return Sig0Key(name, ttl, key_rdata(private_key, flags=flags))


def key_text(
    private_key: Sig0PrivateKey,
    owner: dns.name.Name | str,
    *,
    ttl: int = DEFAULT_TTL,
    flags: int = KEY_FLAGS,
) -> str:
    """``node1.example. 3600 IN KEY 256 3 15 <base64>`` for ``private_key``."""
    return key_from_private(private_key, owner, ttl=ttl, flags=flags).to_text()


def key_rdata_text(rdata: KEY) -> str:
    """KEY RDATA in presentation form with the base64 in one piece (no spaces to split on)."""
    return (
        f"{rdata.flags} {rdata.protocol} {rdata.algorithm} "
        f"{base64.b64encode(rdata.key).decode('ascii')}"
    )


def key_tag(rdata: KEY) -> int:
    """RFC 4034 appendix B key tag over the RDATA (the same for KEY and DNSKEY)."""
    wire = struct.pack("!HBB", rdata.flags, rdata.protocol, rdata.algorithm) + rdata.key
    total = sum(byte << 8 if i % 2 == 0 else byte for i, byte in enumerate(wire))
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def public_key_of(rdata: KEY) -> Sig0PublicKey:
    """The public key a KEY RDATA carries; ``WireError`` when its bytes are not a valid key."""
    algorithm = int(rdata.algorithm)
    if algorithm not in ALGORITHM_NAMES:
        raise UnsupportedAlgorithmError(
            f"KEY algorithm {algorithm} is not supported for SIG(0); "
            f"supported: 13 (ECDSAP256SHA256), 15 (ED25519)"
        )
    expected = 32 if algorithm == ALG_ED25519 else 2 * _P256_COORDINATE
    if len(rdata.key) != expected:
        raise WireError(
            f"KEY algorithm {algorithm} public key must be {expected} bytes, found {len(rdata.key)}"
        )
    try:
        if algorithm == ALG_ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(rdata.key)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + rdata.key)
    except ValueError as exc:
        raise WireError(f"KEY algorithm {algorithm} public key is not a valid point") from exc


def parse_key_text(text: str) -> Sig0Key:
    """One KEY RR from presentation text (a BIND ``.key`` file works too: comments, no TTL).

    The owner must be written absolute, so a text never means another name than it shows.
    """
    _check_owner_written_absolute(text)
    try:
        rrsets = dns.zonefile.read_rrsets(
            text,
            rdclass=None,
            default_rdclass=dns.rdataclass.IN,
            default_ttl=0,
            origin=dns.name.root,
            relativize=False,
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise WireError(f"KEY record text does not parse: {exc}") from exc
    records = [(rrset, rdata) for rrset in rrsets for rdata in rrset]
    if len(records) != 1:
        raise WireError(f"expected exactly one KEY record in the text, found {len(records)}")
    rrset, rdata = records[0]
    if rrset.rdtype != dns.rdatatype.KEY or not isinstance(rdata, KEY):
        raise WireError(f"expected a KEY record, found {dns.rdatatype.to_text(rrset.rdtype)}")
    if rdata.protocol != KEY_PROTOCOL:
        raise WireError(f"KEY protocol must be {KEY_PROTOCOL} (DNSSEC), found {rdata.protocol}")
    public_key_of(rdata)  # refuse unusable key material now, not at the first verification
    return Sig0Key(rrset.name, int(rrset.ttl), rdata)


def _check_owner_written_absolute(text: str) -> None:
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        owner = line.split()[0]
        if owner.startswith("$"):
            raise WireError(f"KEY text must be a plain record, found the directive {owner}")
        if line[0].isspace() or not owner.endswith("."):
            shown = "(none)" if line[0].isspace() else repr(owner)
            raise WireError(f"KEY owner must be an absolute name (ending in '.'), found {shown}")
        return


def _absolute(name: dns.name.Name | str, what: str) -> dns.name.Name:
    if isinstance(name, str):
        try:
            name = dns.name.from_text(name, origin=None)
        except dns.exception.DNSException as exc:
            raise WireError(f"{what} {name!r} is not a valid domain name: {exc}") from exc
    if not name.is_absolute():
        raise WireError(f"{what} must be an absolute name (ending in '.'), found {name}")
    return name


# --- walking the wire ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    start: int
    rtype: int
    rdata_start: int
    end: int


@dataclass(frozen=True)
class _Layout:
    counts: tuple[int, int, int, int]  # QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
    additional: list[_Record]


def _walk(wire: bytes) -> _Layout:
    """Where each additional record starts; ``WireError`` unless the wire is one whole message."""
    if len(wire) < _HEADER.size:
        raise WireError(f"DNS message is {len(wire)} bytes, shorter than its 12-byte header")
    if len(wire) > _MAX_MESSAGE:
        raise WireError(f"DNS message is {len(wire)} bytes, longer than {_MAX_MESSAGE}")
    _, _, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
    parser = dns.wire.Parser(wire, _HEADER.size)
    additional: list[_Record] = []
    section = "question"
    try:
        for _ in range(qdcount):
            dns.name.from_wire_parser(parser)
            parser.get_struct("!HH")
        for section, count in (
            ("answer", ancount),
            ("authority", nscount),
            ("additional", arcount),
        ):
            for _ in range(count):
                record = _skip_record(parser)
                if section == "additional":
                    additional.append(record)
    except dns.exception.FormError as exc:
        raise WireError(
            f"DNS message is truncated or malformed in its {section} section "
            f"(at byte {parser.current} of {len(wire)}): {exc}"
        ) from exc
    if parser.remaining():
        raise WireError(
            f"DNS message has {parser.remaining()} bytes after its last record "
            f"(header counts {qdcount}/{ancount}/{nscount}/{arcount})"
        )
    return _Layout((qdcount, ancount, nscount, arcount), additional)


def _skip_record(parser: dns.wire.Parser) -> _Record:
    start = parser.current
    dns.name.from_wire_parser(parser)
    rtype, _, _, rdlength = parser.get_struct(_RR_FIXED.format)
    rdata_start = parser.current
    parser.get_bytes(rdlength)
    return _Record(start, rtype, rdata_start, parser.current)


def _name_wire(name: dns.name.Name) -> bytes:
    """A name uncompressed, in the case it has (RFC 2931 signs the signer name as sent)."""
    wire = name.to_wire()
    assert wire is not None  # to_wire() without a file returns the bytes
    return wire


def _with_arcount(wire: bytes, arcount: int) -> bytes:
    return wire[:10] + struct.pack("!H", arcount) + wire[12:]


# --- the SIG record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sig0Record:
    """The SIG(0) of a message, read but not yet verified (to look up the signer's KEY first)."""

    signer: dns.name.Name
    key_tag: int
    algorithm: int
    inception: int
    expiration: int
    signature: bytes
    signed_rdata: bytes  # the RDATA fields that are signed: everything but the signature
    unsigned_wire: bytes  # the message before the SIG was added, ARCOUNT one lower

    @property
    def signed_data(self) -> bytes:
        return self.signed_rdata + self.unsigned_wire


@dataclass(frozen=True)
class Sig0Info:
    """What a verified SIG(0) said, and the message without it."""

    signer: dns.name.Name
    key_tag: int
    algorithm: int
    inception: int
    expiration: int
    unsigned_wire: bytes

    def to_message(self) -> dns.message.Message:
        """The message as it was before signing (dnspython cannot parse it with the SIG in)."""
        try:
            return dns.message.from_wire(self.unsigned_wire)
        except dns.exception.DNSException as exc:
            raise WireError(f"signed DNS message does not parse: {exc}") from exc


def strip(wire: bytes) -> bytes:
    """``wire`` without its SIG(0) and with ARCOUNT one lower: a message dnspython can parse.

    Only the placement is checked here; ``verify`` checks the signature.
    """
    return parse_sig0(wire).unsigned_wire


def parse_sig0(wire: bytes) -> Sig0Record:
    """The SIG(0) record that ends ``wire``; ``SignatureError`` when none or misplaced."""
    layout = _walk(wire)
    sigs = [i for i, rr in enumerate(layout.additional) if rr.rtype == _SIG_TYPE]
    total = len(layout.additional)
    if not sigs:
        raise SignatureError("no SIG(0) record: the UPDATE must be signed by the node's new key")
    if len(sigs) > 1:
        raise SignatureError(f"expected one SIG(0) record, found {len(sigs)}")
    if sigs[0] != total - 1:
        raise SignatureError(
            f"SIG(0) must be the last record of the additional section, "
            f"found it at position {sigs[0] + 1} of {total}"
        )
    record = layout.additional[-1]
    _check_sig_header(wire, record)
    fields, signer, sig_start = _sig_rdata(wire, record)
    covered, algorithm, _, _, expiration, inception, tag = fields
    if covered != 0:
        raise SignatureError(f"SIG(0) must cover type 0, found type {covered}")
    signature = wire[sig_start : record.end]
    signed_rdata = wire[record.rdata_start : record.rdata_start + _SIG_FIXED.size]
    signed_rdata += _name_wire(signer)
    unsigned = _with_arcount(wire[: record.start], layout.counts[3] - 1)
    return Sig0Record(
        signer, tag, algorithm, inception, expiration, signature, signed_rdata, unsigned
    )


def _check_sig_header(wire: bytes, record: _Record) -> None:
    parser = dns.wire.Parser(wire, record.start)
    owner = dns.name.from_wire_parser(parser)
    _, rdclass, ttl, _ = parser.get_struct(_RR_FIXED.format)
    if owner != dns.name.root or rdclass != _ANY or ttl != 0:
        raise SignatureError(
            f"SIG(0) record must be '. 0 ANY SIG', found owner {owner}, "
            f"class {dns.rdataclass.to_text(rdclass)}, TTL {ttl}"
        )


def _sig_rdata(
    wire: bytes, record: _Record
) -> tuple[tuple[int, int, int, int, int, int, int], dns.name.Name, int]:
    parser = dns.wire.Parser(wire, record.rdata_start)
    length = record.end - record.rdata_start
    try:
        fields = parser.get_struct(_SIG_FIXED.format)
        signer = dns.name.from_wire_parser(parser)
    except dns.exception.FormError as exc:
        raise WireError(f"SIG(0) RDATA ({length} bytes) is malformed: {exc}") from exc
    if parser.current > record.end:
        raise WireError(
            f"SIG(0) RDATA is {length} bytes, too short for its fixed fields and signer name"
        )
    return fields, signer, parser.current


# --- signing -------------------------------------------------------------------------------------


def sign(
    wire: bytes,
    private_key: Sig0PrivateKey,
    signer: dns.name.Name | str,
    key_tag: int | None = None,
    *,
    now: float | None = None,
    validity: int = DEFAULT_VALIDITY,
    backdate: int = BACKDATE,
) -> bytes:
    """``wire`` with a SIG(0) by ``private_key`` appended as the last additional record.

    ``key_tag`` defaults to the tag of the KEY with flags ``KEY_FLAGS`` (256); pass it when the
    published KEY has other flags. The signer name is written lowercase and uncompressed.
    """
    algorithm = algorithm_of(private_key)
    name = _absolute(signer, "SIG(0) signer").canonicalize()
    if key_tag is None:
        key_tag = _tag_of_private(private_key)
    if not 0 <= key_tag <= 0xFFFF:
        raise ValueError(f"key tag must fit 16 bits, found {key_tag}")
    if validity <= 0 or backdate < 0:
        raise ValueError(f"validity must be > 0 and backdate >= 0, found {validity}, {backdate}")
    _check_signable(wire)
    moment = int(time.time() if now is None else now)
    fixed = _SIG_FIXED.pack(0, algorithm, 0, 0, moment + validity, moment - backdate, key_tag)
    signed_rdata = fixed + _name_wire(name)
    signature = _sign_bytes(private_key, signed_rdata + wire)
    rdata = signed_rdata + signature
    sig_rr = b"\x00" + _RR_FIXED.pack(_SIG_TYPE, _ANY, 0, len(rdata)) + rdata
    arcount = struct.unpack_from("!H", wire, 10)[0]
    signed = _with_arcount(wire, arcount + 1) + sig_rr
    if len(signed) > _MAX_MESSAGE:
        raise WireError(f"signed DNS message would be {len(signed)} bytes, over {_MAX_MESSAGE}")
    return signed


def _tag_of_private(private_key: Sig0PrivateKey) -> int:
    return key_tag(key_rdata(private_key))


def _check_signable(wire: bytes) -> None:
    layout = _walk(wire)
    if layout.counts[3] >= 0xFFFF:
        raise WireError("DNS message has 65535 additional records, no room for a SIG(0)")
    for record in layout.additional:
        if record.rtype in (_SIG_TYPE, _TSIG_TYPE):
            kind = "SIG" if record.rtype == _SIG_TYPE else "TSIG"
            raise WireError(f"DNS message already carries a {kind} record; sign it only once")


def _sign_bytes(private_key: Sig0PrivateKey, data: bytes) -> bytes:
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    der = private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_COORDINATE, "big") + s.to_bytes(_P256_COORDINATE, "big")


# --- verification --------------------------------------------------------------------------------


def verify(
    wire: bytes,
    key: Sig0Key | KEY | Sig0PublicKey,
    *,
    signer: dns.name.Name | str | None = None,
    now: float | None = None,
    skew: int = DEFAULT_SKEW,
    max_validity: int = MAX_VALIDITY,
) -> Sig0Info:
    """Check the SIG(0) that ends ``wire`` against ``key``; every refusal raises, naming why.

    The signer name must equal ``signer`` when given, else the owner of a ``Sig0Key``. A bare
    public key stands for the KEY with flags 256, whose tag the SIG must carry.
    """
    rdata, owner = _key_and_owner(key)
    expected_signer = _absolute(signer, "expected signer") if signer is not None else owner
    record = parse_sig0(wire)
    tag = key_tag(rdata)
    described = f"KEY {rdata.algorithm}/{tag}" + (f" of {owner}" if owner is not None else "")
    _check_key_match(record, int(rdata.algorithm), tag, described)
    if expected_signer is not None and record.signer != expected_signer:
        raise SignatureError(
            f"SIG(0) signer is {record.signer}, expected {expected_signer} (the KEY owner)"
        )
    _check_window(record, int(time.time() if now is None else now), skew, max_validity)
    _check_signature(record, public_key_of(rdata), described)
    return Sig0Info(
        record.signer,
        record.key_tag,
        record.algorithm,
        record.inception,
        record.expiration,
        record.unsigned_wire,
    )


def _key_and_owner(key: Sig0Key | KEY | Sig0PublicKey) -> tuple[KEY, dns.name.Name | None]:
    if isinstance(key, Sig0Key):
        return key.rdata, key.owner
    if isinstance(key, KEY):
        return key, None
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return key_rdata(key), None
    raise TypeError(f"expected a Sig0Key, KEY rdata or public key, found {type(key).__name__}")


def _check_key_match(record: Sig0Record, algorithm: int, tag: int, described: str) -> None:
    if record.algorithm != algorithm:
        raise SignatureError(
            f"SIG(0) algorithm is {record.algorithm}, but the {described} is algorithm {algorithm}"
        )
    if record.key_tag != tag:
        raise SignatureError(f"SIG(0) key tag is {record.key_tag}, but the {described} has {tag}")


def _check_window(record: Sig0Record, now: int, skew: int, max_validity: int) -> None:
    if record.expiration < record.inception:
        raise SignatureError(
            f"SIG(0) expires ({_stamp(record.expiration)}) before its inception "
            f"({_stamp(record.inception)})"
        )
    if record.expiration - record.inception > max_validity:
        raise SignatureError(
            f"SIG(0) validity is {record.expiration - record.inception} s, "
            f"longer than the {max_validity} s accepted"
        )
    if now > record.expiration + skew:
        raise SignatureError(
            f"SIG(0) expired at {_stamp(record.expiration)} (now {_stamp(now)}, {skew} s skew)"
        )
    if now < record.inception - skew:
        raise SignatureError(
            f"SIG(0) not valid before {_stamp(record.inception)} (now {_stamp(now)}, {skew} s skew)"
        )


def _stamp(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _check_signature(record: Sig0Record, public_key: Sig0PublicKey, described: str) -> None:
    failure = SignatureError(f"SIG(0) signature does not verify with {described}")
    if len(record.signature) != _RAW_SIGNATURE:
        raise SignatureError(
            f"SIG(0) signature for algorithm {record.algorithm} must be {_RAW_SIGNATURE} "
            f"bytes, found {len(record.signature)}"
        )
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(record.signature, record.signed_data)
        else:
            r = int.from_bytes(record.signature[:_P256_COORDINATE], "big")
            s = int.from_bytes(record.signature[_P256_COORDINATE:], "big")
            der = encode_dss_signature(r, s)
            public_key.verify(der, record.signed_data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise failure from None


__all__ = [
    "ALGORITHM_NAMES",
    "ALG_ECDSAP256SHA256",
    "ALG_ED25519",
    "BACKDATE",
    "DEFAULT_SKEW",
    "DEFAULT_VALIDITY",
    "KEY_FLAGS",
    "MAX_VALIDITY",
    "Sig0Info",
    "Sig0Key",
    "Sig0PrivateKey",
    "Sig0PublicKey",
    "Sig0Record",
    "algorithm_of",
    "key_from_private",
    "key_rdata",
    "key_rdata_text",
    "key_tag",
    "key_text",
    "parse_key_text",
    "parse_sig0",
    "public_key_bytes",
    "public_key_of",
    "sign",
    "strip",
    "verify",
]
