"""CHUNK RR (type 65288): wire and presentation forms, dnspython integration, malformed RDATA.

Expected wire bytes are built here with ``struct`` from docs/protocol.md section 3, independently of
the code under test.
"""

from __future__ import annotations

import base64
import contextlib
import struct

import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.errors import KrsError, WireError
from krs_plugin.protocol import (
    CHUNK,
    CHUNK_TYPE,
    FORMAT_JSON,
    LEGACY_CHUNK_TYPE,
    make_chunk,
    parse_chunk_text,
    parse_chunk_wire,
    register_chunk_type,
)

PROPERTY = settings(max_examples=200, deadline=None)

MANIFEST_JSON = (
    b'{"chunk_count":2,"chunk_size":3,"metadata":{"content":"key_operations",'
    b'"distribution_id":"6981284f"}}'
)
MANIFEST_HMAC = bytes(range(32))
ESCAPED_MANIFEST = MANIFEST_JSON.decode().replace('"', '\\"')
ORIGIN = "kdc.example.com."


def expected_wire(fmt: int, hmac: bytes, seq: int, total: int, data: bytes) -> bytes:
    """Format u8 | HMACLen u16 | HMAC | Sequence u16 | Total u16 | DataLength u16 | Data."""
    return (
        struct.pack("!BH", fmt, len(hmac))
        + hmac
        + struct.pack("!HHH", seq, total, len(data))
        + data
    )


# --- wire form --------------------------------------------------------------------------------


def test_type_code_is_65288_and_named_chunk():
    assert CHUNK_TYPE == 65288
    assert dns.rdatatype.from_text("CHUNK") == 65288
    assert dns.rdatatype.to_text(dns.rdatatype.RdataType.make(65288)) == "CHUNK"


def test_manifest_wire_form_matches_the_field_layout():
    rdata = make_chunk(0, 2, MANIFEST_JSON, hmac=MANIFEST_HMAC)
    wire = rdata.to_wire()
    assert wire == (
        b"\x01"  # Format JSON
        + b"\x00\x20"  # HMACLen 32
        + MANIFEST_HMAC
        + b"\x00\x00"  # Sequence 0
        + b"\x00\x02"  # Total 2
        + struct.pack("!H", len(MANIFEST_JSON))
        + MANIFEST_JSON
    )
    assert wire == expected_wire(1, MANIFEST_HMAC, 0, 2, MANIFEST_JSON)


def test_data_chunk_wire_form_has_zero_hmac_length():
    rdata = make_chunk(1, 2, b"eyJh")
    assert rdata.to_wire() == b"\x01\x00\x00" + b"\x00\x01\x00\x02\x00\x04" + b"eyJh"


def test_hmac_length_is_a_16_bit_field():
    hmac = bytes(range(256)) + b"tail"  # 260 bytes: HMACLen 0x0104
    wire = make_chunk(1, 1, b"d", hmac=hmac).to_wire()
    assert wire[:3] == b"\x01\x01\x04"
    assert parse_chunk_wire(wire).hmac == hmac


def test_wire_form_parses_back_field_by_field():
    wire = expected_wire(2, b"\xaa" * 5, 7, 9, b"\x00\xff data")
    rdata = parse_chunk_wire(wire)
    assert isinstance(rdata, CHUNK)
    assert (rdata.format, rdata.hmac, rdata.sequence, rdata.total, rdata.data) == (
        2,
        b"\xaa" * 5,
        7,
        9,
        b"\x00\xff data",
    )
    assert rdata.rdtype == CHUNK_TYPE


def test_dnspython_from_wire_builds_a_chunk():
    wire = expected_wire(1, b"", 3, 4, b"abc")
    rdata = dns.rdata.from_wire(dns.rdataclass.IN, CHUNK_TYPE, wire, 0, len(wire))
    assert isinstance(rdata, CHUNK)
    assert rdata.sequence == 3
    assert rdata.data == b"abc"


# --- presentation form ------------------------------------------------------------------------


def test_manifest_presentation_is_seq_total_format_hmac_and_quoted_json():
    rdata = make_chunk(0, 2, MANIFEST_JSON, hmac=MANIFEST_HMAC)
    assert rdata.to_text() == f'0 2 JSON {MANIFEST_HMAC.hex()} "{ESCAPED_MANIFEST}"'


def test_data_chunk_presentation_is_base64_with_empty_hmac():
    data = bytes(range(40))
    rdata = make_chunk(1, 3, data)
    assert rdata.to_text() == f'1 3 JSON "" {base64.b64encode(data).decode()}'


def test_presentation_prints_other_formats_by_number():
    assert make_chunk(1, 1, b"x", chunk_format=2).to_text().split()[2] == "JWT"
    assert make_chunk(1, 1, b"x", chunk_format=7).to_text().split()[2] == "FORMAT7"


def test_empty_data_chunk_prints_empty_string():
    assert make_chunk(3, 3, b"").to_text() == '3 3 JSON "" ""'
    assert parse_chunk_text('3 3 JSON "" ""').data == b""


def test_dnspython_from_text_reads_presentation_form():
    text = f'0 2 JSON {MANIFEST_HMAC.hex()} "{ESCAPED_MANIFEST}"'
    rdata = dns.rdata.from_text(dns.rdataclass.IN, CHUNK_TYPE, text)
    assert isinstance(rdata, CHUNK)
    assert rdata.data == MANIFEST_JSON
    assert rdata.hmac == MANIFEST_HMAC


def test_numeric_format_and_base64_split_over_tokens_are_accepted():
    rdata = parse_chunk_text('2 2 1 "" AAEC AwQF')
    assert rdata.format == FORMAT_JSON
    assert rdata.data == b"\x00\x01\x02\x03\x04\x05"


def test_rfc3597_generic_form_is_accepted():
    wire = expected_wire(1, b"", 1, 1, b"hello")
    rdata = parse_chunk_text(f"\\# {len(wire)} {wire.hex()}")
    assert isinstance(rdata, CHUNK)
    assert rdata.data == b"hello"


def test_tdns_raw_json_manifest_presentation_is_accepted():
    raw = '{"chunk_count":0,"metadata":{"distribution_id":"6981284f"},"payload":"ZXk="}'
    rdata = parse_chunk_text(f"0 0 JSON {MANIFEST_HMAC.hex()} {raw}")
    assert rdata.sequence == 0
    assert rdata.hmac == MANIFEST_HMAC
    assert rdata.data == raw.encode()


def test_tdns_raw_json_with_spaces_is_taken_verbatim():
    raw = '{"a": "b c",  "d": 1}'
    assert parse_chunk_text(f'0 0 JSON "" {raw}').data == raw.encode()


def test_raw_json_is_refused_by_the_zone_file_parser():
    # Only parse_chunk_text accepts tdns's unquoted JSON; zone files need the quoted form.
    with pytest.raises(dns.exception.SyntaxError):
        dns.rdata.from_text(dns.rdataclass.IN, CHUNK_TYPE, '0 0 JSON "" {"a":1}')
    with pytest.raises(dns.exception.SyntaxError, match="must be one quoted string"):
        dns.rdata.from_text(dns.rdataclass.IN, CHUNK_TYPE, '0 0 JSON "" {}')


# --- messages and zones -----------------------------------------------------------------------


def test_message_with_chunk_records_round_trips_through_wire():
    owner = "cpt.axfr.net.6981284f.kdc.example.com."
    query = dns.message.make_query(owner, "CHUNK")
    response = dns.message.make_response(query)
    response.answer.append(
        dns.rrset.from_rdata(owner, 300, make_chunk(0, 1, MANIFEST_JSON, hmac=MANIFEST_HMAC))
    )
    response.answer.append(
        dns.rrset.from_rdata("1." + owner, 300, make_chunk(1, 1, bytes(range(256)) * 4))
    )
    parsed = dns.message.from_wire(response.to_wire())
    assert parsed == response
    assert parsed.question[0].rdtype == CHUNK_TYPE
    assert parsed.answer[0][0].data == MANIFEST_JSON
    assert parsed.answer[1][0].data == bytes(range(256)) * 4


def test_malformed_chunk_in_a_message_is_a_form_error_and_a_wire_error():
    query = dns.message.make_query("a.", "CHUNK")
    response = dns.message.make_response(query)
    bad = dns.rdata.GenericRdata(dns.rdataclass.IN, CHUNK_TYPE, b"\x01\x00")
    response.answer.append(dns.rrset.from_rdata("a.", 300, bad))
    with pytest.raises(dns.exception.FormError, match="9-byte minimum") as info:
        dns.message.from_wire(response.to_wire())
    assert isinstance(info.value, WireError)


ZONE_WIRE_CHUNK_2 = expected_wire(1, b"", 2, 2, b"\x01\x02\x03\x04\x05")
ZONE_TEXT = f"""
$ORIGIN {ORIGIN}
$TTL 300
@ SOA ns1 hostmaster 1 3600 600 86400 300
@ NS ns1
ns1 A 192.0.2.1
cpt.axfr.net.6981284f CHUNK 0 2 JSON {MANIFEST_HMAC.hex()} "{ESCAPED_MANIFEST}"
1.cpt.axfr.net.6981284f CHUNK 1 2 JSON "" AAEC AwQF
2.cpt.axfr.net.6981284f TYPE65288 \\# {len(ZONE_WIRE_CHUNK_2)} {ZONE_WIRE_CHUNK_2.hex()}
"""


def test_zone_with_chunk_records_loads():
    zone = dns.zone.from_text(ZONE_TEXT, origin=ORIGIN)
    manifest = zone.get_rdataset("cpt.axfr.net.6981284f", "CHUNK")[0]
    chunk_1 = zone.get_rdataset("1.cpt.axfr.net.6981284f", "CHUNK")[0]
    chunk_2 = zone.get_rdataset("2.cpt.axfr.net.6981284f", "CHUNK")[0]
    assert (manifest.data, manifest.hmac, manifest.total) == (MANIFEST_JSON, MANIFEST_HMAC, 2)
    assert chunk_1.data == b"\x00\x01\x02\x03\x04\x05"
    assert isinstance(chunk_2, CHUNK)
    assert chunk_2.data == b"\x01\x02\x03\x04\x05"


def test_zone_with_chunk_records_reexports_equal():
    zone = dns.zone.from_text(ZONE_TEXT, origin=ORIGIN)
    exported = zone.to_text()
    assert dns.zone.from_text(exported, origin=ORIGIN) == zone


def test_zone_export_names_the_type_chunk_however_it_was_written():
    # A record read with the CHUNK mnemonic must be written back as CHUNK, not as TYPE65288
    # followed by type-specific (non-RFC 3597) RDATA, which no other zone parser accepts.
    zone = dns.zone.from_text(ZONE_TEXT, origin=ORIGIN)
    chunk_lines = [line for line in zone.to_text().splitlines() if "cpt.axfr.net" in line]
    assert len(chunk_lines) == 3
    assert all(line.split()[3] == "CHUNK" for line in chunk_lines), chunk_lines


# --- legacy type code ---------------------------------------------------------------------------


def test_legacy_type_65015_registers_and_parses_the_same_rdata():
    assert LEGACY_CHUNK_TYPE == 65015
    rdtype = register_chunk_type(LEGACY_CHUNK_TYPE)
    assert rdtype == 65015
    assert register_chunk_type(LEGACY_CHUNK_TYPE) == 65015  # idempotent
    wire = expected_wire(1, MANIFEST_HMAC, 0, 2, MANIFEST_JSON)
    rdata = parse_chunk_wire(wire, rdtype=LEGACY_CHUNK_TYPE)
    assert isinstance(rdata, CHUNK)
    assert rdata.rdtype == 65015
    assert rdata.data == MANIFEST_JSON
    assert make_chunk(1, 1, b"x", rdtype=LEGACY_CHUNK_TYPE).to_wire() == expected_wire(
        1, b"", 1, 1, b"x"
    )
    text = parse_chunk_text('1 1 JSON "" eA==', rdtype=LEGACY_CHUNK_TYPE)
    assert text.rdtype == 65015
    assert text.data == b"x"


def test_legacy_type_in_a_message_round_trips():
    register_chunk_type(LEGACY_CHUNK_TYPE)
    response = dns.message.make_response(dns.message.make_query("a.", LEGACY_CHUNK_TYPE))
    rdata = make_chunk(1, 1, b"old", rdtype=LEGACY_CHUNK_TYPE)
    response.answer.append(dns.rrset.from_rdata("a.", 60, rdata))
    parsed = dns.message.from_wire(response.to_wire())
    assert isinstance(parsed.answer[0][0], CHUNK)
    assert parsed.answer[0].rdtype == 65015


# --- malformed RDATA ----------------------------------------------------------------------------


def test_rejects_truncated_rdata_shorter_than_fixed_fields():
    with pytest.raises(WireError, match=r"CHUNK RDATA is 8 bytes, shorter than the 9-byte minimum"):
        parse_chunk_wire(expected_wire(1, b"", 1, 1, b"")[:8])


def test_rejects_empty_rdata():
    with pytest.raises(WireError, match="0 bytes"):
        parse_chunk_wire(b"")


def test_rejects_hmac_length_beyond_the_rdata():
    wire = struct.pack("!BH", 1, 40) + b"\x00" * 32 + struct.pack("!HHH", 0, 0, 0)
    with pytest.raises(WireError, match=r"HMACLen 40 exceeds the 32 bytes left"):
        parse_chunk_wire(wire)


def test_rejects_data_length_larger_than_the_rest_of_the_rdata():
    wire = struct.pack("!BH", 1, 0) + struct.pack("!HHH", 1, 1, 5) + b"abc"
    with pytest.raises(WireError, match=r"DataLength 5 does not match the 3 bytes left"):
        parse_chunk_wire(wire)


def test_rejects_trailing_bytes_after_data():
    wire = struct.pack("!BH", 1, 0) + struct.pack("!HHH", 1, 1, 2) + b"abcd"
    with pytest.raises(WireError, match=r"DataLength 2 does not match the 4 bytes left"):
        parse_chunk_wire(wire)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('1 1 JSON "" !!!notbase64', "not base64"),
        ("1 1 JSON zz AAAA", "HMAC is not hex"),
        ('1 1 JSON "ab" AAAA', "HMAC must be hex or an empty string"),
        ('1 1 XML "" AAAA', "format must be JSON, JWT or FORMAT"),
        ('1 1 FORMAT256 "" AAAA', "format must be JSON, JWT or FORMAT"),
        ('1 1 JSON ""', "data is missing"),
        ('65536 1 JSON "" AAAA', "65536 is not an unsigned 16-bit integer"),
        ("", "malformed CHUNK text"),
    ],
)
def test_rejects_malformed_presentation_text(text, problem):
    with pytest.raises(WireError, match=problem):
        parse_chunk_text(text)


def test_constructor_rejects_out_of_range_fields():
    with pytest.raises(ValueError, match="format"):
        make_chunk(1, 1, b"", chunk_format=256)
    with pytest.raises(ValueError, match="sequence"):
        make_chunk(70000, 1, b"")
    with pytest.raises(ValueError, match="total"):
        make_chunk(1, True, b"")  # a bool is not a count


# --- properties ---------------------------------------------------------------------------------

chunk_fields = st.tuples(
    st.integers(0, 255),
    st.binary(max_size=64),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=2000),
)


@PROPERTY
@given(chunk_fields)
def test_wire_form_round_trips_for_any_field_values(fields):
    fmt, hmac, seq, total, data = fields
    rdata = make_chunk(seq, total, data, hmac=hmac, chunk_format=fmt)
    wire = rdata.to_wire()
    assert wire == expected_wire(fmt, hmac, seq, total, data)
    parsed = parse_chunk_wire(wire)
    assert (parsed.format, parsed.hmac, parsed.sequence, parsed.total, parsed.data) == fields
    assert parsed == rdata


@PROPERTY
@given(chunk_fields)
def test_text_form_round_trips_for_any_field_values(fields):
    fmt, hmac, seq, total, data = fields
    rdata = make_chunk(seq, total, data, hmac=hmac, chunk_format=fmt)
    parsed = parse_chunk_text(rdata.to_text())
    assert (parsed.format, parsed.hmac, parsed.sequence, parsed.total, parsed.data) == fields
    via_dnspython = dns.rdata.from_text(dns.rdataclass.IN, CHUNK_TYPE, rdata.to_text())
    assert via_dnspython == rdata


@PROPERTY
@given(st.binary(max_size=300))
def test_parse_chunk_wire_of_arbitrary_bytes_raises_only_krs_errors(wire):
    try:
        rdata = parse_chunk_wire(wire)
    except KrsError:
        return
    assert rdata.to_wire() == wire


@PROPERTY
@given(st.text(max_size=200))
def test_parse_chunk_text_of_arbitrary_text_raises_only_krs_errors(text):
    with contextlib.suppress(KrsError):
        parse_chunk_text(text)


_TOKENS = st.sampled_from(
    [
        "0",
        "1",
        "65535",
        "65536",
        "JSON",
        "JWT",
        "FORMAT9",
        '""',
        "0a0b",
        "zz",
        "{",
        '{"a":1}',
        "AAAA",
        "====",
        "\\#",
        "3",
        "010000",
        "(",
        ")",
        ";",
        '"x"',
        "-1",
        "\n",
    ]
)


@PROPERTY
@given(st.lists(_TOKENS, max_size=8))
def test_parse_chunk_text_of_token_soup_raises_only_krs_errors(tokens):
    with contextlib.suppress(KrsError):
        parse_chunk_text(" ".join(tokens))


def test_parse_chunk_text_with_unencodable_raw_json_raises_only_wire_error():
    # A lone surrogate (text decoded with errors="surrogateescape", say) in tdns's raw JSON form
    # may be refused or carried as opaque bytes, but must not escape as UnicodeEncodeError.
    with contextlib.suppress(WireError):
        parse_chunk_text('0 0 JSON "" {"a":"\udc80"}')
