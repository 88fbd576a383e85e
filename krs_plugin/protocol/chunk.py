"""The CHUNK resource record (private RR type 65288), registered with dnspython.

One RR type carries both the manifest (sequence 0) and the data chunks (1..N) of a distribution, and
the enrollment request (sequence 0, total 0). Registering it with dnspython means messages, zone
files and ``dns.rdata.from_text``/``from_wire`` all handle it like any standard type.

RDATA, big-endian:
Format u8 | HMACLen u16 | HMAC | Sequence u16 | Total u16 | DataLength u16 | Data.

Presentation form: ``<sequence> <total> <format> <hmac-hex or ""> <data>``. Data is base64 for
data chunks. For sequence 0 we write one quoted, escaped string so the text form round-trips through
zone-file tokenizers; on input we also accept tdns's raw (unquoted) JSON and base64.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

import dns.exception
import dns.immutable
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.wire

from krs_plugin.errors import WireError

CHUNK_TYPE = 65288
"""Type code of CHUNK since tdns 2026-03-11 (private-use range)."""

LEGACY_CHUNK_TYPE = 65015
"""Type code used by tdns builds before 2026-03-11; same RDATA."""

FORMAT_JSON = 1
FORMAT_JWT = 2
_FORMAT_NAMES = {FORMAT_JSON: "JSON", FORMAT_JWT: "JWT"}

MAX_DATA_LENGTH = 0xFFFF


class ChunkWireError(WireError, dns.exception.FormError):
    """Malformed CHUNK RDATA; also a dnspython FormError so message parsing reports it normally."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _uint(value: int, maximum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"CHUNK {what} must be an integer 0..{maximum}, got {value!r}")
    return value


def format_to_text(value: int) -> str:
    """``JSON``, ``JWT`` or ``FORMAT<n>`` as tdns prints them."""
    return _FORMAT_NAMES.get(value, f"FORMAT{value}")


def format_from_text(text: str) -> int:
    """Parse a format mnemonic or number; raises ``dns.exception.SyntaxError``."""
    upper = text.upper()
    for number, name in _FORMAT_NAMES.items():
        if upper == name:
            return number
    digits = upper.removeprefix("FORMAT")
    if digits.isdigit() and int(digits) <= 0xFF:
        return int(digits)
    raise dns.exception.SyntaxError(
        f"CHUNK format must be JSON, JWT or FORMAT<0-255>, got {text!r}"
    )


@dns.immutable.immutable
class CHUNK(dns.rdata.Rdata):
    """One manifest or data chunk of a distribution."""

    __slots__ = ["data", "format", "hmac", "sequence", "total"]

    def __init__(
        self,
        rdclass: dns.rdataclass.RdataClass,
        rdtype: dns.rdatatype.RdataType,
        format: int,
        hmac: bytes,
        sequence: int,
        total: int,
        data: bytes,
    ) -> None:
        super().__init__(rdclass, rdtype)
        self.format: int = _uint(format, 0xFF, "format")
        self.hmac: bytes = self._as_bytes(hmac, max_length=MAX_DATA_LENGTH)
        self.sequence: int = _uint(sequence, 0xFFFF, "sequence")
        self.total: int = _uint(total, 0xFFFF, "total")
        self.data: bytes = self._as_bytes(data, max_length=MAX_DATA_LENGTH)

    @property
    def is_manifest(self) -> bool:
        """Sequence 0 is the only reliable manifest marker (tdns sets Total = chunk_count)."""
        return self.sequence == 0

    # --- text -------------------------------------------------------------------------------

    def _text(self) -> str:
        hmac_text = self.hmac.hex() if self.hmac else '""'
        if self.sequence == 0:
            data_text = '"' + dns.rdata._escapify(self.data) + '"'
        elif self.data:
            data_text = base64.b64encode(self.data).decode()
        else:
            data_text = '""'
        return f"{self.sequence} {self.total} {format_to_text(self.format)} {hmac_text} {data_text}"

    def to_text(
        self,
        origin: dns.name.Name | None = None,
        relativize: bool = True,
        style: Any = None,
        **kw: Any,
    ) -> str:
        return self._text()

    def to_styled_text(self, style: Any) -> str:
        return self._text()

    @classmethod
    def from_text(
        cls,
        rdclass: dns.rdataclass.RdataClass,
        rdtype: dns.rdatatype.RdataType,
        tok: dns.tokenizer.Tokenizer,
        origin: dns.name.Name | None = None,
        relativize: bool = True,
        relativize_to: dns.name.Name | None = None,
    ) -> CHUNK:
        sequence = tok.get_uint16()
        total = tok.get_uint16()
        chunk_format = format_from_text(tok.get_string())
        hmac_token = tok.get()
        if hmac_token.is_quoted_string():
            if hmac_token.value:
                raise dns.exception.SyntaxError("CHUNK HMAC must be hex or an empty string")
            hmac = b""
        else:
            try:
                hmac = bytes.fromhex(hmac_token.value)
            except ValueError as exc:
                raise dns.exception.SyntaxError(f"CHUNK HMAC is not hex: {exc}") from exc
        data = _data_from_tokens(tok, sequence)
        return cls(rdclass, rdtype, chunk_format, hmac, sequence, total, data)

    # --- wire -------------------------------------------------------------------------------

    def _to_wire(
        self,
        file: Any,
        compress: Any = None,
        origin: dns.name.Name | None = None,
        canonicalize: bool = False,
    ) -> None:
        file.write(struct.pack("!BH", self.format, len(self.hmac)))
        file.write(self.hmac)
        file.write(struct.pack("!HHH", self.sequence, self.total, len(self.data)))
        file.write(self.data)

    @classmethod
    def from_wire_parser(
        cls,
        rdclass: dns.rdataclass.RdataClass,
        rdtype: dns.rdatatype.RdataType,
        parser: dns.wire.Parser,
        origin: dns.name.Name | None = None,
    ) -> CHUNK:
        remaining = parser.remaining()
        if remaining < 9:
            raise ChunkWireError(
                f"CHUNK RDATA is {remaining} bytes, shorter than the 9-byte minimum"
            )
        chunk_format, hmac_len = parser.get_struct("!BH")
        if hmac_len > parser.remaining() - 6:
            raise ChunkWireError(
                f"CHUNK HMACLen {hmac_len} exceeds the {parser.remaining() - 6} bytes left in RDATA"
            )
        hmac = parser.get_bytes(hmac_len)
        sequence, total, data_len = parser.get_struct("!HHH")
        if data_len != parser.remaining():
            raise ChunkWireError(
                f"CHUNK DataLength {data_len} does not match the {parser.remaining()} bytes left "
                "in RDATA"
            )
        data = parser.get_bytes(data_len)
        return cls(rdclass, rdtype, chunk_format, hmac, sequence, total, data)


def _data_from_tokens(tok: dns.tokenizer.Tokenizer, sequence: int) -> bytes:
    """Read the data field: one quoted string, or base64 split over several tokens."""
    first = tok.get()
    if first.is_eol_or_eof():
        raise dns.exception.SyntaxError("CHUNK data is missing")
    if first.is_quoted_string():
        value: bytes = first.unescape_to_bytes().value
        return value
    tok.unget(first)
    text = tok.concatenate_remaining_identifiers()
    if sequence == 0 and text.startswith("{"):
        raise dns.exception.SyntaxError(
            "CHUNK manifest JSON must be one quoted string in zone files (raw JSON is only "
            "accepted by parse_chunk_text)"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise dns.exception.SyntaxError(f"CHUNK data is not base64: {exc}") from exc


def register_chunk_type(code: int = CHUNK_TYPE) -> dns.rdatatype.RdataType:
    """Make dnspython handle CHUNK at ``code`` (65288, or 65015 for old tdns); idempotent."""
    rdtype = dns.rdatatype.RdataType.make(code)
    for rdclass in (dns.rdataclass.IN, dns.rdataclass.ANY):
        if dns.rdata.get_rdata_class(rdclass, rdtype) is CHUNK:
            continue
        name = "CHUNK" if code == CHUNK_TYPE else f"CHUNK{code}"
        dns.rdata.register_type(CHUNK, rdtype, name, rdclass=rdclass)
        dns.rdatatype.register_type(dns.rdatatype.RdataType.make(code), name)
    return rdtype


def make_chunk(
    sequence: int,
    total: int,
    data: bytes,
    *,
    hmac: bytes = b"",
    chunk_format: int = FORMAT_JSON,
    rdtype: int = CHUNK_TYPE,
) -> CHUNK:
    """Build a CHUNK rdata in class IN."""
    return CHUNK(
        dns.rdataclass.IN,
        dns.rdatatype.RdataType.make(rdtype),
        chunk_format,
        hmac,
        sequence,
        total,
        data,
    )


def parse_chunk_wire(wire: bytes, rdtype: int = CHUNK_TYPE) -> CHUNK:
    """Parse CHUNK RDATA from raw bytes; only ``WireError`` escapes, whatever the input."""
    try:
        rdata = dns.rdata.from_wire(
            dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), wire, 0, len(wire)
        )
    except WireError:
        raise
    except (dns.exception.DNSException, ValueError, TypeError) as exc:
        raise WireError(f"malformed CHUNK RDATA ({len(wire)} bytes): {exc}") from exc
    if not isinstance(rdata, CHUNK):
        raise WireError(f"type {rdtype} is not registered as CHUNK")
    return rdata


def parse_chunk_text(text: str, rdtype: int = CHUNK_TYPE) -> CHUNK:
    """Parse CHUNK presentation (or RFC 3597 generic) text; only ``WireError`` escapes.

    Also accepts tdns's own presentation, where a manifest's JSON follows unquoted.
    """
    try:
        raw_json = _split_raw_json(text)
        if raw_json is not None:
            head, json_text = raw_json
            text = f'{head} "{dns.rdata._escapify(json_text.encode())}"'
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), text)
    except WireError:
        raise
    except (dns.exception.DNSException, ValueError, TypeError, UnicodeError) as exc:
        raise WireError(f"malformed CHUNK text: {exc}") from exc
    if not isinstance(rdata, CHUNK):
        raise WireError(f"type {rdtype} is not registered as CHUNK")
    return rdata


def _split_raw_json(text: str) -> tuple[str, str] | None:
    """Split ``0 N JSON <hmac> {...}`` into its first four fields and the raw JSON, if it is so."""
    fields = text.strip().split(None, 4)
    if len(fields) == 5 and fields[4].startswith("{") and fields[0] == "0":
        return " ".join(fields[:4]), fields[4]
    return None


register_chunk_type(CHUNK_TYPE)
