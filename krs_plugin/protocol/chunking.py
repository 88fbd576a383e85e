"""Split a transport string into CHUNK records and put it back together, within limits.

The KDC side turns the transport string (section 4 of the protocol) into a manifest plus data
chunks; the KRS side checks every limit against the manifest *before* it fetches or allocates
anything, then accepts each data chunk exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from krs_plugin.errors import IntegrityError, LimitError, WireError
from krs_plugin.protocol.chunk import CHUNK, CHUNK_TYPE, FORMAT_JSON, make_chunk
from krs_plugin.protocol.manifest import Manifest, ManifestMetadata, build_manifest_record

DEFAULT_CHUNK_SIZE = 60000
"""tdns's ``chunk_max_size``: a typical key distribution is one chunk over TCP."""

MAX_CHUNK_DATA = 65000
"""Largest data slice that still fits one CHUNK RR in a 65535-byte DNS/TCP message."""

INLINE_MAX = 500
"""tdns inlines transport strings up to 500 bytes (a legacy UDP rule); larger ones are chunked."""


DEFAULT_MAX_TOTAL_BYTES = 32 * 1024 * 1024
"""Room for one node's keys of 10,000 zones in one distribution, the issue's use case.

The transport string (double base64 of the sealed JSON) costs per key about 1.42 KB with
algorithm 13 and 1.05 KB with algorithm 15 for hpke nodes, a third more for jose nodes (one more
base64url layer); benchmarks/krs_bulk.py. 10,000 zones are 14.2 MB with one CSK each and 28.4 MB
with a KSK and a ZSK each (hpke, algorithm 13): 8 MiB, the former default, refused every such
node; 32 MiB takes both with 11 % to spare. Not covered: jose nodes with a KSK and a ZSK of
algorithm 13 per zone (38 MB for 10,000 zones) and RSA keys (5.3 KB each); they raise the limit.

The price is the bound on what a hostile control server can make a KRS allocate before the KDC's
signature is checked (the manifest HMAC is keyed with the node's public key, so anyone can make
one): the reassembled transport and its decodings, about 7 times the transport for a moment, so
up to some 230 MB at 32 MiB (docs/benchmarks.md, "Bulk")."""


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts from the network; checked before anything is allocated."""

    max_chunks: int = 4096
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_chunk_size: int = MAX_CHUNK_DATA

    def __post_init__(self) -> None:
        if self.max_chunks < 1 or self.max_total_bytes < 1:
            raise ValueError("limits must be positive")
        if not 1 <= self.max_chunk_size <= 0xFFFF:
            raise ValueError("max_chunk_size must be 1..65535")


def split_transport(transport: bytes, chunk_size: int) -> list[bytes]:
    """Cut the transport string into ``chunk_size`` slices (the last may be shorter)."""
    if not 1 <= chunk_size <= 0xFFFF:
        raise ValueError(f"chunk size must be 1..65535, got {chunk_size}")
    if not transport:
        raise ValueError("transport string is empty")
    count = -(-len(transport) // chunk_size)
    if count > 0xFFFF:
        raise ValueError(f"{len(transport)} bytes need {count} chunks, more than 65535")
    return [transport[i : i + chunk_size] for i in range(0, len(transport), chunk_size)]


def build_chunk_records(
    transport: bytes,
    metadata: ManifestMetadata,
    hmac_key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    inline_max: int = INLINE_MAX,
    rdtype: int = CHUNK_TYPE,
) -> list[CHUNK]:
    """Manifest (index 0) followed by the data chunks 1..N, as the KDC publishes them."""
    if len(transport) <= inline_max:
        manifest = Manifest(chunk_count=0, metadata=metadata, payload=transport)
        return [build_manifest_record(manifest, hmac_key, rdtype=rdtype)]
    pieces = split_transport(transport, chunk_size)
    manifest = Manifest(chunk_count=len(pieces), metadata=metadata, chunk_size=chunk_size)
    records = [build_manifest_record(manifest, hmac_key, rdtype=rdtype)]
    total = len(pieces)
    records += [
        make_chunk(i, total, piece, chunk_format=FORMAT_JSON, rdtype=rdtype)
        for i, piece in enumerate(pieces, start=1)
    ]
    return records


TRIM_EVERY = 32
"""Chunks (about 2 MB) joined between two ``memory.give_back`` calls in ``Reassembler.take``."""


class Reassembler:
    """Collects data chunks 1..N of one manifest, each exactly once, within ``limits``.

    Construction checks the manifest against the limits, so a hostile manifest is refused before a
    single chunk is fetched. ``where`` names the distribution in every error.
    """

    def __init__(self, manifest: Manifest, limits: Limits, *, where: str = "distribution") -> None:
        self.where = where
        self.manifest = manifest
        self.limits = limits
        count = manifest.chunk_count
        if count == 0:
            raise WireError(f"{where}: manifest is inline, there are no chunks to reassemble")
        if count > limits.max_chunks:
            raise LimitError(
                f"{where}: manifest announces {count} chunks, more than the limit of "
                f"{limits.max_chunks}"
            )
        size = manifest.chunk_size or limits.max_chunk_size
        if size > limits.max_chunk_size:
            raise LimitError(
                f"{where}: manifest chunk_size {size} exceeds the limit of {limits.max_chunk_size}"
            )
        self.chunk_size = size
        # The last chunk may be short, so the smallest possible total is (count-1)*size + 1.
        minimum_total = (count - 1) * size + 1
        if minimum_total > limits.max_total_bytes:
            raise LimitError(
                f"{where}: {count} chunks of up to {size} bytes need at least {minimum_total} "
                f"bytes, more than the limit of {limits.max_total_bytes}"
            )
        self._chunks: dict[int, bytes] = {}
        self._bytes = 0

    @property
    def missing(self) -> list[int]:
        """Sequence numbers still to fetch, in order (what a resumed fetch asks for)."""
        return [i for i in range(1, self.manifest.chunk_count + 1) if i not in self._chunks]

    @property
    def complete(self) -> bool:
        return len(self._chunks) == self.manifest.chunk_count

    def add(self, rdata: CHUNK) -> None:
        """Accept one data chunk; duplicates, strays and oversized chunks are errors."""
        count = self.manifest.chunk_count
        seq = rdata.sequence
        if seq == 0:
            raise IntegrityError(f"{self.where}: got a manifest where data chunk was expected")
        if seq > count:
            raise IntegrityError(f"{self.where}: extra chunk {seq}, manifest announces {count}")
        if rdata.total != count:
            raise IntegrityError(
                f"{self.where}: chunk {seq} says total {rdata.total}, manifest announces {count}"
            )
        if seq in self._chunks:
            raise IntegrityError(f"{self.where}: duplicate chunk {seq} of {count}")
        if len(rdata.data) > self.chunk_size:
            raise LimitError(
                f"{self.where}: chunk {seq} of {count} is {len(rdata.data)} bytes, larger than "
                f"chunk_size {self.chunk_size}"
            )
        if self._bytes + len(rdata.data) > self.limits.max_total_bytes:
            raise LimitError(
                f"{self.where}: chunks exceed the limit of {self.limits.max_total_bytes} bytes"
            )
        self._chunks[seq] = rdata.data
        self._bytes += len(rdata.data)

    def result(self) -> bytes:
        """The transport string; names the missing chunks when some are."""
        missing = self.missing
        if missing:
            shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise IntegrityError(
                f"{self.where}: {len(missing)} of {self.manifest.chunk_count} chunks missing "
                f"({shown})"
            )
        return b"".join(self._chunks[i] for i in range(1, self.manifest.chunk_count + 1))

    def take(self) -> bytearray:
        """``result``, each chunk let go once copied, the freed memory given back to the system
        every ``TRIM_EVERY`` chunks: with no one else holding the chunks, the transport is not
        held twice (chunks and joined string) at any moment."""
        from krs_plugin.memory import give_back

        if self.missing:
            self.result()  # raises, naming them
        out = bytearray(self._bytes)  # a fresh mapping: its pages count once written
        at = 0
        for i in range(1, self.manifest.chunk_count + 1):
            data = self._chunks.pop(i)
            out[at : at + len(data)] = data
            at += len(data)
            del data
            if i % TRIM_EVERY == 0:
                give_back()
        give_back()
        return out


def reassemble(
    manifest: Manifest,
    chunks: Iterable[CHUNK],
    limits: Limits,
    *,
    where: str = "distribution",
) -> bytes | bytearray:
    """The transport string of a manifest: its inline payload, or its chunks joined in order. A
    list of chunks is emptied as they are joined (``Reassembler.take``)."""
    if manifest.is_inline:
        assert manifest.payload is not None  # decode_manifest guarantees it
        if len(manifest.payload) > limits.max_total_bytes:
            raise LimitError(
                f"{where}: inline payload of {len(manifest.payload)} bytes exceeds the limit of "
                f"{limits.max_total_bytes}"
            )
        extra = list(chunks)
        if extra:
            raise IntegrityError(f"{where}: manifest is inline but {len(extra)} chunks were given")
        return manifest.payload
    assembler = Reassembler(manifest, limits, where=where)
    for rdata in chunks:
        assembler.add(rdata)
    if not isinstance(chunks, list):
        return assembler.result()
    chunks.clear()  # the assembler holds the only references: joined, each chunk goes
    return assembler.take()
