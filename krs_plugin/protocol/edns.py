"""EDNS0 option 65004, the CHUNK option: confirmations and enrollment responses ride in it.

Layout (CHUNK RDATA without Sequence and Total): Format u8 | HMACLen u16 | HMAC | DataLength u16 |
Data. For the KDC and KRS, ``Data[0]`` is a content byte: 1 key status report, 2 enrollment
confirmation, 3 component status report; ours: 0x80 resync request (``krs_plugin/resync.py``).
The rest is the body.
"""

from __future__ import annotations

import struct
from typing import Any

import dns.edns
import dns.exception
import dns.wire

from krs_plugin.errors import WireError
from krs_plugin.protocol.chunk import FORMAT_JSON

CHUNK_OPTION = 65004
CONTENT_KEY_STATUS = 1
CONTENT_ENROLLMENT = 2
CONTENT_COMPONENT_STATUS = 3
CONTENT_RESYNC = 0x80  # ours: a KRS asks for its keys again (krs_plugin/resync.py)
MAX_OPTION_HMAC = 64
_MIN_LENGTH = 5


class ChunkOptionError(WireError, dns.exception.FormError):
    """Malformed CHUNK option; also a FormError so message parsing fails the normal way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ChunkOption(dns.edns.Option):
    """Option 65004 with its content byte split out from the body."""

    def __init__(
        self, content: int, body: bytes, *, chunk_format: int = FORMAT_JSON, hmac: bytes = b""
    ) -> None:
        super().__init__(dns.edns.OptionType.make(CHUNK_OPTION))
        if not 0 <= content <= 0xFF or not 0 <= chunk_format <= 0xFF:
            raise ValueError("content and format are single bytes")
        if len(hmac) > MAX_OPTION_HMAC or len(body) + 1 > 0xFFFF:
            raise ValueError("CHUNK option HMAC or body too long")
        self.content = content
        self.body = bytes(body)
        self.chunk_format = chunk_format
        self.hmac = bytes(hmac)

    def to_wire(self, file: Any | None = None) -> bytes | None:
        data = bytes([self.content]) + self.body
        wire = (
            struct.pack("!BH", self.chunk_format, len(self.hmac))
            + self.hmac
            + struct.pack("!H", len(data))
            + data
        )
        if file is not None:
            file.write(wire)
            return None
        return wire

    def to_text(self) -> str:
        return f"CHUNK content={self.content} format={self.chunk_format} body={len(self.body)}B"

    @classmethod
    def from_wire_parser(cls, otype: Any, parser: dns.wire.Parser) -> ChunkOption:
        total = parser.remaining()
        if total < _MIN_LENGTH:
            raise ChunkOptionError(f"CHUNK option is {total} bytes, shorter than {_MIN_LENGTH}")
        chunk_format, hmac_len = parser.get_struct("!BH")
        if hmac_len > MAX_OPTION_HMAC or hmac_len > parser.remaining() - 2:
            raise ChunkOptionError(f"CHUNK option HMACLen {hmac_len} is too large")
        hmac = parser.get_bytes(hmac_len)
        (data_len,) = parser.get_struct("!H")
        if data_len != parser.remaining() or data_len == 0:
            raise ChunkOptionError(
                f"CHUNK option DataLength {data_len} does not match the {parser.remaining()} "
                "bytes left (and must hold at least the content byte)"
            )
        data = parser.get_bytes(data_len)
        return cls(data[0], data[1:], chunk_format=chunk_format, hmac=hmac)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChunkOption) and self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash(self.to_wire())


def find_chunk_option(options: Any) -> ChunkOption | None:
    """The CHUNK option among a message's EDNS options, if any."""
    for option in options or ():
        if isinstance(option, ChunkOption):
            return option
    return None


dns.edns.register_type(ChunkOption, dns.edns.OptionType.make(CHUNK_OPTION))
