"""EDNS0 option 65004 (confirmations, enrollment responses) as tdns lays it out."""

from __future__ import annotations

import json
import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.errors import KrsError, WireError
from krs_plugin.protocol.edns import (
    CHUNK_OPTION,
    CONTENT_KEY_STATUS,
    ChunkOption,
    find_chunk_option,
)

REPORT = b'{"successful_keys":[{"zone_name":"example.com.","key_id":"24746"}]}'


def test_key_status_report_has_tdns_bytes() -> None:
    wire = ChunkOption(CONTENT_KEY_STATUS, REPORT).to_wire()
    # Format 1, HMACLen 0, DataLength = 1 + len(report), content byte 0x01, report (research 5.4)
    assert wire == struct.pack("!BHH", 1, 0, len(REPORT) + 1) + b"\x01" + REPORT


def test_confirmation_notify_carries_the_option_through_the_wire() -> None:
    message = dns.message.make_query("6981284f.kdc.example.com.", 65288)
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags &= ~dns.flags.RD
    message.use_edns(0, 0, 4096, options=[ChunkOption(CONTENT_KEY_STATUS, REPORT)])
    parsed = dns.message.from_wire(message.to_wire())
    option = find_chunk_option(parsed.options)
    assert option is not None
    assert option.content == CONTENT_KEY_STATUS
    assert json.loads(option.body)["successful_keys"][0]["key_id"] == "24746"


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (b"\x01\x00", "shorter"),
        (b"\x01\x00\x50" + b"\x00" * 4, "HMACLen"),
        (b"\x01\x00\x00\x00\x09\x01", "DataLength"),
        (b"\x01\x00\x00\x00\x00", "DataLength"),
    ],
)
def test_rejects_malformed_option_with_a_named_field(wire: bytes, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        dns.edns.option_from_wire(dns.edns.OptionType.make(CHUNK_OPTION), wire, 0, len(wire))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_option_parser_raises_only_our_errors(wire: bytes) -> None:
    try:
        option = dns.edns.option_from_wire(
            dns.edns.OptionType.make(CHUNK_OPTION), wire, 0, len(wire)
        )
    except KrsError:
        return
    assert isinstance(option, ChunkOption)
    assert option.to_wire() == wire
