"""Splitting a transport string into CHUNK records and reassembling it, within receiver limits."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.crypto import HpkeKey
from krs_plugin.errors import IntegrityError, LimitError, WireError
from krs_plugin.protocol import (
    DEFAULT_CHUNK_SIZE,
    Limits,
    Manifest,
    ManifestMetadata,
    Reassembler,
    build_chunk_records,
    make_chunk,
    parse_chunk_wire,
    read_manifest_record,
    reassemble,
    split_transport,
)

PROPERTY = settings(max_examples=150, deadline=None)
NODE_KEY = HpkeKey.generate()
META = ManifestMetadata(distribution_id="148075a9", receiver_id="ns1.example.", timestamp=1)
ROOMY = Limits(max_chunks=0xFFFF)
WHERE = "manifest for ns1.example.148075a9.kdc.example."


# Hypothesis keeps generated binaries short; also draw a length uniformly and fill it with seeded
# random bytes, so that large transports and long chunk lists are exercised too.
transports = st.one_of(
    st.binary(min_size=1, max_size=20000),
    st.builds(
        lambda n, seed: random.Random(seed).randbytes(n),
        st.integers(1, 20000),
        st.integers(0, 2**32),
    ),
)
chunk_sizes = st.one_of(st.integers(1, 5000), st.integers(1, 64))


def over_the_wire(records):
    """Serialize each rdata to its wire form and parse it back, as a resolver would see it."""
    return [parse_chunk_wire(record.to_wire()) for record in records]


def receive(records, limits=ROOMY, *, shuffle_with=None):
    manifest_record, *chunks = over_the_wire(records)
    manifest = read_manifest_record(manifest_record, NODE_KEY.public_only().hmac_key)
    if shuffle_with is not None:
        shuffle_with.shuffle(chunks)
    return manifest, reassemble(manifest, chunks, limits, where=WHERE)


def chunked_manifest(count: int, size: int = 10) -> Manifest:
    return Manifest(chunk_count=count, chunk_size=size, metadata=META)


def chunk(seq: int, total: int, data: bytes = b"0123456789") -> object:
    return make_chunk(seq, total, data)


# --- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(
    transport=transports,
    chunk_size=chunk_sizes,
    inline_max=st.sampled_from([0, 0, 500, 20000]),
)
def test_any_transport_string_survives_chunking_and_reassembly(transport, chunk_size, inline_max):
    records = build_chunk_records(
        transport, META, NODE_KEY.hmac_key, chunk_size=chunk_size, inline_max=inline_max
    )
    manifest, result = receive(records)
    assert result == transport
    if len(transport) <= inline_max:
        assert len(records) == 1
        assert manifest.is_inline
    else:
        expected_count = -(-len(transport) // chunk_size)
        assert manifest.chunk_count == expected_count == len(records) - 1
        assert manifest.chunk_size == chunk_size
        assert all(len(r.data) <= chunk_size for r in records[1:])


@settings(max_examples=100, deadline=None)
@given(
    transport=transports,
    chunk_size=chunk_sizes,
    seed=st.randoms(use_true_random=False),
)
def test_chunks_may_arrive_in_any_order(transport, chunk_size, seed):
    records = build_chunk_records(
        transport, META, NODE_KEY.hmac_key, chunk_size=chunk_size, inline_max=0
    )
    _, result = receive(records, shuffle_with=seed)
    assert result == transport


# --- what the KDC publishes ---------------------------------------------------------------------


def test_small_transport_is_inlined_in_the_manifest():
    records = build_chunk_records(b"x" * 500, META, NODE_KEY.hmac_key)
    assert len(records) == 1
    assert (records[0].sequence, records[0].total) == (0, 0)


def test_larger_transport_is_one_default_sized_chunk():
    transport = b"t" * 40000
    records = build_chunk_records(transport, META, NODE_KEY.hmac_key)
    assert DEFAULT_CHUNK_SIZE == 60000
    assert [(r.sequence, r.total) for r in records] == [(0, 1), (1, 1)]
    assert records[1].data == transport
    assert records[1].hmac == b""


def test_chunks_are_numbered_from_one_and_the_last_may_be_short():
    records = build_chunk_records(
        b"abcdefghij", META, NODE_KEY.hmac_key, chunk_size=4, inline_max=0
    )
    assert [(r.sequence, r.total, r.data) for r in records[1:]] == [
        (1, 3, b"abcd"),
        (2, 3, b"efgh"),
        (3, 3, b"ij"),
    ]


def test_split_transport_refuses_what_cannot_be_chunked():
    with pytest.raises(ValueError, match="empty"):
        split_transport(b"", 10)
    with pytest.raises(ValueError, match=re.escape("chunk size must be 1..65535, got 0")):
        split_transport(b"x", 0)
    with pytest.raises(ValueError, match="more than 65535"):
        split_transport(b"x" * 65536, 1)


def test_limits_must_be_sane():
    with pytest.raises(ValueError, match="positive"):
        Limits(max_chunks=0)
    with pytest.raises(ValueError, match="max_chunk_size"):
        Limits(max_chunk_size=70000)


# --- bad chunk sets -----------------------------------------------------------------------------


def test_rejects_missing_chunk_and_names_it():
    assembler = Reassembler(chunked_manifest(5), ROOMY, where=WHERE)
    for seq in (1, 3, 5):
        assembler.add(chunk(seq, 5))
    assert assembler.missing == [2, 4]
    assert not assembler.complete
    with pytest.raises(IntegrityError, match=re.escape(f"{WHERE}: 2 of 5 chunks missing (2, 4)")):
        assembler.result()


def test_missing_chunk_list_is_shortened_when_long():
    assembler = Reassembler(chunked_manifest(40), ROOMY)
    with pytest.raises(IntegrityError, match=re.escape("40 of 40 chunks missing (1, 2, 3")) as info:
        assembler.result()
    assert str(info.value).endswith("9, 10, ...)")


def test_reassemble_rejects_missing_chunk():
    with pytest.raises(IntegrityError, match=re.escape("1 of 3 chunks missing (3)")):
        reassemble(chunked_manifest(3), [chunk(1, 3), chunk(2, 3)], ROOMY)


def test_rejects_duplicate_chunk():
    with pytest.raises(IntegrityError, match=re.escape(f"{WHERE}: duplicate chunk 2 of 3")):
        reassemble(chunked_manifest(3), [chunk(1, 3), chunk(2, 3), chunk(2, 3)], ROOMY, where=WHERE)


def test_rejects_extra_chunk_beyond_total():
    with pytest.raises(IntegrityError, match="extra chunk 4, manifest announces 3"):
        reassemble(chunked_manifest(3), [chunk(1, 3), chunk(4, 3)], ROOMY)


def test_rejects_chunk_with_wrong_total():
    with pytest.raises(IntegrityError, match="chunk 2 says total 4, manifest announces 3"):
        reassemble(chunked_manifest(3), [chunk(1, 3), chunk(2, 4)], ROOMY)


def test_rejects_manifest_among_the_data_chunks():
    with pytest.raises(IntegrityError, match="got a manifest where data chunk was expected"):
        reassemble(chunked_manifest(1), [chunk(0, 1)], ROOMY)


def test_rejects_chunk_larger_than_chunk_size():
    with pytest.raises(LimitError, match="chunk 2 of 3 is 11 bytes, larger than chunk_size 10"):
        reassemble(chunked_manifest(3), [chunk(1, 3), chunk(2, 3, b"x" * 11)], ROOMY)


def test_chunk_size_zero_means_the_receivers_maximum():
    limits = Limits(max_chunk_size=20)
    assembler = Reassembler(chunked_manifest(2, size=0), limits)
    assembler.add(chunk(1, 2, b"x" * 20))
    with pytest.raises(LimitError, match="21 bytes, larger than chunk_size 20"):
        assembler.add(chunk(2, 2, b"x" * 21))


def test_rejects_chunks_whose_sum_exceeds_max_total_bytes():
    limits = Limits(max_total_bytes=1000)
    assembler = Reassembler(chunked_manifest(2, size=600), limits)  # 601..1200 bytes: allowed
    assembler.add(chunk(1, 2, b"x" * 600))
    with pytest.raises(LimitError, match="chunks exceed the limit of 1000 bytes"):
        assembler.add(chunk(2, 2, b"x" * 600))


def test_rejected_chunk_is_not_counted():
    assembler = Reassembler(chunked_manifest(2), ROOMY)
    with pytest.raises(LimitError):
        assembler.add(chunk(1, 2, b"x" * 11))
    assembler.add(chunk(1, 2, b"x" * 10))
    assembler.add(chunk(2, 2, b"y"))
    assert assembler.complete
    assert assembler.result() == b"x" * 10 + b"y"


# --- limits before allocation -------------------------------------------------------------------


class ChunkSource:
    """An iterable of chunks that records whether anything was ever taken from it."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.taken = 0

    def __iter__(self):
        for item in self.chunks:
            self.taken += 1
            yield item


def test_rejects_manifest_announcing_more_chunks_than_the_limit_at_construction():
    limits = Limits(max_chunks=10)
    with pytest.raises(
        LimitError,
        match=re.escape(f"{WHERE}: manifest announces 11 chunks, more than the limit of 10"),
    ):
        Reassembler(chunked_manifest(11), limits, where=WHERE)
    Reassembler(chunked_manifest(10), limits)  # at the limit: accepted


def test_rejects_manifest_whose_total_exceeds_the_limit_at_construction():
    limits = Limits(max_total_bytes=1000)
    with pytest.raises(LimitError, match="3 chunks of up to 600 bytes need at least 1201 bytes"):
        Reassembler(chunked_manifest(3, size=600), limits)
    Reassembler(chunked_manifest(3, size=499), limits)  # 999..1497 bytes: might fit


def test_rejects_total_over_limit_with_implicit_chunk_size_at_construction():
    limits = Limits(max_total_bytes=100_000, max_chunk_size=60000)
    with pytest.raises(LimitError, match="more than the limit of 100000"):
        Reassembler(chunked_manifest(3, size=0), limits)


def test_rejects_chunk_size_above_the_receivers_maximum_at_construction():
    with pytest.raises(LimitError, match="chunk_size 5000 exceeds the limit of 1000"):
        Reassembler(chunked_manifest(2, size=5000), Limits(max_chunk_size=1000))


@pytest.mark.parametrize(
    ("manifest", "limits"),
    [
        (chunked_manifest(11), Limits(max_chunks=10)),
        (chunked_manifest(0xFFFF, size=0xFFFF), Limits()),
        (chunked_manifest(3, size=600), Limits(max_total_bytes=1000)),
    ],
)
def test_limit_errors_come_before_any_chunk_is_taken(manifest, limits):
    source = ChunkSource([chunk(i, manifest.chunk_count) for i in (1, 2)])
    with pytest.raises(LimitError):
        reassemble(manifest, source, limits)
    assert source.taken == 0


def test_rejects_inline_payload_over_the_limit():
    manifest = Manifest(chunk_count=0, metadata=META, payload=b"p" * 2000)
    with pytest.raises(LimitError, match="inline payload of 2000 bytes exceeds the limit of 1000"):
        reassemble(manifest, [], Limits(max_total_bytes=1000))
    assert reassemble(manifest, [], Limits(max_total_bytes=2000)) == b"p" * 2000


def test_rejects_chunks_given_with_an_inline_manifest():
    manifest = Manifest(chunk_count=0, metadata=META, payload=b"p")
    with pytest.raises(IntegrityError, match="manifest is inline but 1 chunks were given"):
        reassemble(manifest, [chunk(1, 1)], ROOMY)


def test_reassembler_refuses_an_inline_manifest():
    manifest = Manifest(chunk_count=0, metadata=META, payload=b"p")
    with pytest.raises(WireError, match="inline, there are no chunks"):
        Reassembler(manifest, ROOMY)


def test_end_to_end_rejects_a_chunk_tampered_to_another_total():
    records = build_chunk_records(
        bytes(random.Random(1).randbytes(100)), META, NODE_KEY.hmac_key, chunk_size=30, inline_max=0
    )
    manifest = read_manifest_record(records[0], NODE_KEY.hmac_key)
    bad = make_chunk(2, 5, records[2].data)
    with pytest.raises(IntegrityError, match="chunk 2 says total 5, manifest announces 4"):
        reassemble(manifest, [records[1], bad, records[3], records[4]], ROOMY)


def test_default_limits_take_one_nodes_keys_of_10000_zones() -> None:
    # 10,000 zones with a KSK and a ZSK of algorithm 13 each: 28.4 MB of transport in 475
    # chunks of 60000 bytes (benchmarks/krs_bulk.py); refused by the former 8 MiB default.
    Reassembler(chunked_manifest(475, size=60000), Limits())
    with pytest.raises(LimitError):
        Reassembler(chunked_manifest(475, size=60000), Limits(max_total_bytes=8 * 1024 * 1024))
