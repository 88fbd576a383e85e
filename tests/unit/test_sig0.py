"""SIG(0) (RFC 2931): KEY records, signing, and every reason verification refuses a message."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from typing import Any

import dns.dnssec
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.update
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.errors import SignatureError, UnsupportedAlgorithmError, WireError
from krs_plugin.protocol import sig0

NOW = 1_790_000_000
NODE = dns.name.from_text("node1.example.")
ED_SEED = bytes(range(32))


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(ED_SEED)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x1234_5678_9ABC_DEF0_1234_5678, ec.SECP256R1())


KEYS = {"ed25519": ed_key, "ecdsa-p256": ec_key}


def update_wire(*, edns: bool = False) -> bytes:
    update = dns.update.UpdateMessage("example.", id=4242)
    update.add("node1.example.", 300, "A", "192.0.2.1")
    if edns:
        update.use_edns(0, 0, 1232)
    return bytes(update.to_wire())


def signed(private: sig0.Sig0PrivateKey, wire: bytes | None = None, **kw: Any) -> bytes:
    return sig0.sign(update_wire() if wire is None else wire, private, NODE, now=NOW, **kw)


def flip(wire: bytes, index: int) -> bytes:
    changed = bytearray(wire)
    changed[index] ^= 0x01
    return bytes(changed)


def sig_rr_offset(wire: bytes) -> int:
    return len(sig0.strip(wire))


# --- KEY records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", KEYS.values(), ids=KEYS.keys())
def test_key_text_has_the_tdns_form_and_parses_back(
    make: Callable[[], sig0.Sig0PrivateKey],
) -> None:
    private = make()
    text = sig0.key_text(private, "node1.example.")
    algorithm = 15 if isinstance(private, ed25519.Ed25519PrivateKey) else 13
    assert re.fullmatch(rf"node1\.example\. 3600 IN KEY 256 3 {algorithm} [A-Za-z0-9+/=]+", text)
    parsed = sig0.parse_key_text(text)
    assert parsed.owner == NODE
    assert parsed.ttl == 3600
    assert parsed.algorithm == algorithm
    assert parsed.to_text() == text
    assert sig0.public_key_bytes(parsed.public_key) == sig0.public_key_bytes(private.public_key())


@pytest.mark.parametrize("make", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("flags", [256, 512, 257])
def test_key_tag_matches_dnspython_dnskey_key_id(
    make: Callable[[], sig0.Sig0PrivateKey], flags: int
) -> None:
    rdata = sig0.key_rdata(make(), flags=flags)
    dnskey = DNSKEY(dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, 3, rdata.algorithm, rdata.key)
    assert sig0.key_tag(rdata) == dns.dnssec.key_id(dnskey)


def test_public_key_layout_is_raw_ed25519_and_xy_p256() -> None:
    assert sig0.key_rdata(ed_key()).key == ed_key().public_key().public_bytes_raw()
    point = ec_key().public_key().public_numbers()
    assert sig0.key_rdata(ec_key()).key == point.x.to_bytes(32, "big") + point.y.to_bytes(32, "big")


def test_parse_key_text_reads_a_bind_key_file() -> None:
    raw = base64.b64encode(ed_key().public_key().public_bytes_raw()).decode()
    text = (
        f"; This is a host key, keyid 1, for node1.example.\nnode1.example. IN KEY 512 3 15 {raw}\n"
    )
    parsed = sig0.parse_key_text(text)
    assert (parsed.owner, parsed.ttl, parsed.rdata.flags) == (NODE, 0, 512)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node1 3600 IN KEY 256 3 15 {k}", "absolute name"),
        (" 3600 IN KEY 256 3 15 {k}", "absolute name"),
        ("$ORIGIN example.\nnode1 IN KEY 256 3 15 {k}", "directive"),
        ("node1.example. 3600 IN DNSKEY 256 3 15 {k}", "expected a KEY record, found DNSKEY"),
        ("node1.example. 3600 CH KEY 256 3 15 {k}", "not zone's class"),  # only IN
        ("node1.example. 3600 IN KEY 256 2 15 {k}", "protocol must be 3"),
        ("node1.example. 3600 IN KEY 256 3 8 {k}", "not supported"),
        ("node1.example. 3600 IN KEY 256 3 15 AAAA", "must be 32 bytes, found 3"),
        ("node1.example. 3600 IN KEY 256 3 15 !!!", "does not parse"),
        ("", "found 0"),
    ],
)
def test_parse_key_text_refuses(text: str, message: str) -> None:
    raw = base64.b64encode(ed_key().public_key().public_bytes_raw()).decode()
    with pytest.raises((WireError, UnsupportedAlgorithmError), match=re.escape(message)):
        sig0.parse_key_text(text.format(k=raw))


def test_two_keys_in_one_text_are_refused() -> None:
    one = sig0.key_text(ed_key(), NODE)
    two = sig0.key_text(ec_key(), NODE)
    with pytest.raises(WireError, match="exactly one KEY record in the text, found 2"):
        sig0.parse_key_text(f"{one}\n{two}")


def test_p256_key_off_the_curve_is_refused() -> None:
    text = "node1.example. 3600 IN KEY 256 3 13 " + base64.b64encode(b"\x01" * 64).decode()
    with pytest.raises(WireError, match="not a valid point"):
        sig0.parse_key_text(text)


def test_unsupported_private_keys_are_refused() -> None:
    with pytest.raises(UnsupportedAlgorithmError, match="ECDSA secp384r1"):
        sig0.key_text(ec.generate_private_key(ec.SECP384R1()), NODE)
    with pytest.raises(UnsupportedAlgorithmError, match="RSAPrivateKey"):
        sig0.sign(update_wire(), rsa.generate_private_key(65537, 1024), NODE)  # type: ignore[arg-type]


# --- signing: layout -----------------------------------------------------------------------------


def test_sig_rr_is_the_rfc_2931_layout_byte_for_byte() -> None:
    """Hand-built from RFC 2931 3.1; Ed25519 is deterministic, so the whole RR is reproducible."""
    wire = update_wire()
    tag = sig0.key_tag(sig0.key_rdata(ed_key()))
    signer = b"\x05node1\x07example\x00"
    rdata_fields = struct.pack("!HBBIIIH", 0, 15, 0, 0, NOW + 300, NOW - 300, tag) + signer
    signature = ed_key().sign(rdata_fields + wire)
    rdata = rdata_fields + signature
    sig_rr = b"\x00" + struct.pack("!HHIH", 24, 255, 0, len(rdata)) + rdata
    header = wire[:10] + struct.pack("!H", struct.unpack("!H", wire[10:12])[0] + 1)
    expected = header + wire[12:] + sig_rr

    assert sig0.sign(wire, ed_key(), dns.name.from_text("Node1.EXAMPLE."), now=NOW) == expected
    assert len(signature) == 64


def test_ecdsa_signature_is_raw_r_s_over_sha256() -> None:
    wire = update_wire()
    out = signed(ec_key(), wire)
    record = sig0.parse_sig0(out)
    assert len(record.signature) == 64
    r = int.from_bytes(record.signature[:32], "big")
    s = int.from_bytes(record.signature[32:], "big")
    der = encode_dss_signature(r, s)
    ec_key().public_key().verify(der, record.signed_rdata + wire, ec.ECDSA(hashes.SHA256()))


def test_validity_and_explicit_key_tag_are_written() -> None:
    record = sig0.parse_sig0(signed(ed_key(), validity=120, key_tag=4711))
    assert (record.inception, record.expiration, record.key_tag) == (NOW - 300, NOW + 120, 4711)


def test_sig_goes_after_opt() -> None:
    out = signed(ed_key(), update_wire(edns=True))
    tail = out[sig_rr_offset(out) :]
    assert tail[:5] == b"\x00\x00\x18\x00\xff"  # root owner, type SIG, class ANY
    unsigned = dns.message.from_wire(sig0.strip(out))
    assert unsigned.edns == 0
    assert sig0.verify(out, sig0.key_from_private(ed_key(), NODE), now=NOW).signer == NODE


def test_sign_refuses_a_message_already_signed_or_malformed() -> None:
    with pytest.raises(WireError, match="already carries a SIG"):
        sig0.sign(signed(ed_key()), ed_key(), NODE, now=NOW)
    with pytest.raises(WireError, match="shorter than its 12-byte header"):
        sig0.sign(b"\x00" * 5, ed_key(), NODE)
    with pytest.raises(WireError, match="bytes after its last record"):
        sig0.sign(update_wire() + b"\x00", ed_key(), NODE)
    with pytest.raises(WireError, match="absolute"):
        sig0.sign(update_wire(), ed_key(), dns.name.from_text("node1", origin=None))


# --- verification --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", KEYS.values(), ids=KEYS.keys())
def test_round_trip(make: Callable[[], sig0.Sig0PrivateKey]) -> None:
    private = make()
    wire = update_wire()
    out = signed(private, wire)
    key = sig0.key_from_private(private, NODE)

    info = sig0.verify(out, key, now=NOW)

    assert info.signer == NODE
    assert info.key_tag == key.key_tag
    assert info.algorithm == key.algorithm
    assert (info.inception, info.expiration) == (NOW - 300, NOW + 300)
    assert info.unsigned_wire == wire
    assert info.to_message().to_wire() == dns.message.from_wire(wire).to_wire()
    # The same check with the bare KEY rdata and with the public key alone.
    assert sig0.verify(out, key.rdata, now=NOW, signer=NODE).key_tag == key.key_tag
    assert sig0.verify(out, private.public_key(), now=NOW).signer == NODE


def test_signer_written_in_mixed_case_verifies_as_sent() -> None:
    """miekg/dns writes the signer as given; the hash covers the name as it is on the wire."""
    wire = update_wire()
    tag = sig0.key_tag(sig0.key_rdata(ed_key()))
    fields = struct.pack("!HBBIIIH", 0, 15, 0, 0, NOW + 300, NOW - 300, tag)
    fields += b"\x05Node1\x07Example\x00"
    rdata = fields + ed_key().sign(fields + wire)
    out = wire[:10] + b"\x00\x01" + wire[12:]
    out += b"\x00" + struct.pack("!HHIH", 24, 255, 0, len(rdata)) + rdata
    info = sig0.verify(out, sig0.key_from_private(ed_key(), NODE), now=NOW)
    assert info.signer == NODE  # DNS names compare case-insensitively


@pytest.mark.parametrize("make", KEYS.values(), ids=KEYS.keys())
def test_tampered_message_byte_is_refused(make: Callable[[], sig0.Sig0PrivateKey]) -> None:
    private = make()
    out = signed(private)
    key = sig0.key_from_private(private, NODE)
    last_address_byte = sig_rr_offset(out) - 1
    for index in (0, 3, last_address_byte):  # ID, flags, the A record's address
        with pytest.raises(SignatureError, match=r"does not verify with KEY 1[35]/\d+ of node1"):
            sig0.verify(flip(out, index), key, now=NOW)


@pytest.mark.parametrize("make", KEYS.values(), ids=KEYS.keys())
def test_tampered_signature_or_signed_field_is_refused(
    make: Callable[[], sig0.Sig0PrivateKey],
) -> None:
    private = make()
    out = signed(private)
    key = sig0.key_from_private(private, NODE)
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(flip(out, len(out) - 1), key, now=NOW)
    labels_offset = sig_rr_offset(out) + 11 + 3  # owner, type/class/TTL/RDLENGTH, covered, alg
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(flip(out, labels_offset), key, now=NOW)


def test_wrong_key_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    out = signed(ed_key())
    with pytest.raises(SignatureError, match="key tag is"):
        sig0.verify(out, sig0.key_from_private(other, NODE), now=NOW)
    # Same tag claimed (a collision, or a forger) still fails on the signature.
    other_tag = sig0.key_tag(sig0.key_rdata(other))
    forged = signed(ed_key(), key_tag=other_tag)
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(forged, sig0.key_from_private(other, NODE), now=NOW)


def test_wrong_algorithm_is_refused() -> None:
    with pytest.raises(SignatureError, match="SIG\\(0\\) algorithm is 15, but the KEY 13/"):
        sig0.verify(signed(ed_key()), sig0.key_from_private(ec_key(), NODE), now=NOW)


def test_wrong_key_tag_is_refused() -> None:
    key = sig0.key_from_private(ed_key(), NODE)
    out = signed(ed_key(), key_tag=(key.key_tag + 1) % 65536)
    with pytest.raises(SignatureError, match=f"key tag is {(key.key_tag + 1) % 65536}, but"):
        sig0.verify(out, key, now=NOW)


def test_key_with_other_flags_has_other_tag() -> None:
    host_key = sig0.Sig0Key(NODE, 0, sig0.key_rdata(ed_key(), flags=512))
    with pytest.raises(SignatureError, match="key tag"):
        sig0.verify(signed(ed_key()), host_key, now=NOW)
    assert sig0.verify(signed(ed_key(), key_tag=host_key.key_tag), host_key, now=NOW)


def test_signer_other_than_key_owner_is_refused() -> None:
    out = sig0.sign(update_wire(), ed_key(), "node2.example.", now=NOW)
    with pytest.raises(SignatureError, match=r"signer is node2.example., expected node1.example."):
        sig0.verify(out, sig0.key_from_private(ed_key(), NODE), now=NOW)
    with pytest.raises(SignatureError, match=r"expected node3.example."):
        sig0.verify(out, ed_key().public_key(), signer="node3.example.", now=NOW)


def test_time_window_with_skew() -> None:
    out = signed(ed_key())
    key = sig0.key_from_private(ed_key(), NODE)
    skew = sig0.DEFAULT_SKEW
    assert sig0.verify(out, key, now=NOW + 300 + skew)
    assert sig0.verify(out, key, now=NOW - 300 - skew)
    with pytest.raises(SignatureError, match="SIG\\(0\\) expired at 2026-09-21T14:18:20Z"):
        sig0.verify(out, key, now=NOW + 300 + skew + 1)
    with pytest.raises(SignatureError, match="SIG\\(0\\) not valid before 2026-09-21T14:08:20Z"):
        sig0.verify(out, key, now=NOW - 300 - skew - 1)
    with pytest.raises(SignatureError, match="expired"):
        sig0.verify(out, key, now=NOW + 301, skew=0)


def test_overlong_validity_is_refused() -> None:
    out = signed(ed_key(), validity=7200)
    key = sig0.key_from_private(ed_key(), NODE)
    with pytest.raises(SignatureError, match="validity is 7500 s, longer than the 3600 s"):
        sig0.verify(out, key, now=NOW)
    assert sig0.verify(out, key, now=NOW, max_validity=7500)


def _append_rr(wire: bytes, rr: bytes) -> bytes:
    arcount = struct.unpack("!H", wire[10:12])[0]
    return wire[:10] + struct.pack("!H", arcount + 1) + wire[12:] + rr


A_RR = b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4) + bytes([192, 0, 2, 9])


def test_sig_not_last_is_refused() -> None:
    out = _append_rr(signed(ed_key()), A_RR)
    with pytest.raises(SignatureError, match=r"must be the last record .* position 1 of 2"):
        sig0.verify(out, sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_sig_before_opt_is_refused() -> None:
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    out = _append_rr(signed(ed_key()), opt)
    with pytest.raises(SignatureError, match="must be the last record"):
        sig0.verify(out, sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_two_sigs_are_refused() -> None:
    out = signed(ed_key())
    sig_rr = out[sig_rr_offset(out) :]
    with pytest.raises(SignatureError, match="expected one SIG\\(0\\) record, found 2"):
        sig0.verify(_append_rr(out, sig_rr), sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_unsigned_message_is_refused() -> None:
    with pytest.raises(SignatureError, match="no SIG\\(0\\) record: the UPDATE must be signed"):
        sig0.verify(update_wire(), sig0.key_from_private(ed_key(), NODE), now=NOW)
    with pytest.raises(SignatureError, match="no SIG\\(0\\) record"):
        sig0.strip(update_wire(edns=True))


def test_sig_covering_a_type_is_refused() -> None:
    out = bytearray(signed(ed_key()))
    covered = sig_rr_offset(bytes(out)) + 11
    out[covered + 1] = 1  # type covered A
    with pytest.raises(SignatureError, match="must cover type 0, found type 1"):
        sig0.verify(bytes(out), sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_sig_with_non_root_owner_or_class_is_refused() -> None:
    out = signed(ed_key())
    start = sig_rr_offset(out)
    moved = out[:start] + b"\x01a\x00" + out[start + 1 :]
    with pytest.raises(SignatureError, match=r"must be '. 0 ANY SIG', found owner a."):
        sig0.verify(moved, sig0.key_from_private(ed_key(), NODE), now=NOW)
    in_class = bytearray(out)
    in_class[start + 3 : start + 5] = b"\x00\x01"
    with pytest.raises(SignatureError, match="class IN"):
        sig0.verify(bytes(in_class), sig0.key_from_private(ed_key(), NODE), now=NOW)


@pytest.mark.parametrize("cut", [0, 11, 12, 30, -70, -64, -1])
def test_truncated_wire_is_refused(cut: int) -> None:
    out = signed(ed_key())
    with pytest.raises(WireError, match=r"shorter than its 12-byte header|truncated or malformed"):
        sig0.verify(out[:cut], sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(WireError, match="1 bytes after its last record"):
        sig0.verify(signed(ed_key()) + b"\x00", sig0.key_from_private(ed_key(), NODE), now=NOW)


def test_sig_rdata_too_short_for_signer_is_refused() -> None:
    rdata = struct.pack("!HBBIIIH", 0, 15, 0, 0, NOW + 300, NOW - 300, 1) + b"\x05node1"
    out = _append_rr(update_wire(), b"\x00" + struct.pack("!HHIH", 24, 255, 0, len(rdata)) + rdata)
    with pytest.raises(WireError, match="SIG\\(0\\) RDATA"):
        sig0.parse_sig0(out)


def test_short_signature_is_refused() -> None:
    out = signed(ed_key())
    start = sig_rr_offset(out)
    rdlength = struct.unpack("!H", out[start + 9 : start + 11])[0]
    short = out[: start + 9] + struct.pack("!H", rdlength - 1) + out[start + 11 : -1]
    with pytest.raises(SignatureError, match="must be 64 bytes, found 63"):
        sig0.verify(short, sig0.key_from_private(ed_key(), NODE), now=NOW)
