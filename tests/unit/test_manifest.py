"""The manifest (CHUNK sequence 0): tdns's JSON, its HMAC, freshness, and Go durations.

HMACs are recomputed here with ``hmac``/``hashlib`` from docs/protocol.md section 3, never through
``manifest_hmac``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest

from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.crypto.keys import b64url_decode
from krs_plugin.errors import IntegrityError, LimitError, PolicyError, WireError
from krs_plugin.protocol import (
    FORMAT_JSON,
    Manifest,
    ManifestMetadata,
    build_manifest_record,
    check_freshness,
    decode_manifest,
    encode_manifest,
    make_chunk,
    manifest_hmac,
    read_manifest_record,
)
from krs_plugin.protocol.durations import format_go_duration, parse_go_duration

TDNS_EXAMPLE = (
    b'{"chunk_count":1,"chunk_size":60000,"metadata":{"content":"key_operations","crypto":"hpke",'
    b'"distribution_id":"6981284f","distribution_ttl":"5m0s","key_count":1,"operation_count":1,'
    b'"receiver_id":"cpt.axfr.net.","retire_time":"168h0m0s","timestamp":1770072143,'
    b'"zone_count":1}}'
)
TDNS_TIMESTAMP = 1770072143


def independent_hmac(key: bytes, data: bytes, chunk_format: int = 1) -> bytes:
    return hmac.new(key, bytes([chunk_format]) + data, hashlib.sha256).digest()


def metadata(**overrides) -> ManifestMetadata:
    fields = {
        "distribution_id": "6981284f",
        "receiver_id": "cpt.axfr.net.",
        "timestamp": TDNS_TIMESTAMP,
    }
    fields.update(overrides)
    return ManifestMetadata(**fields)


def manifest_json(meta: dict, **top) -> bytes:
    return json.dumps({"chunk_count": 1, **top, "metadata": meta}).encode()


# --- encoding -----------------------------------------------------------------------------------


def test_encode_writes_tdns_field_order_for_a_chunked_manifest():
    manifest = Manifest(
        chunk_count=1,
        chunk_size=60000,
        metadata=metadata(
            retire_time=604800,
            counts={"zone_count": 1, "key_count": 1, "operation_count": 1},
        ),
    )
    assert encode_manifest(manifest) == TDNS_EXAMPLE


def test_encode_omits_chunk_size_when_zero():
    data = encode_manifest(Manifest(chunk_count=3, chunk_size=0, metadata=metadata()))
    assert data.startswith(b'{"chunk_count":3,"metadata":{')
    assert b"chunk_size" not in data
    assert b"payload" not in data


def test_encode_sorts_metadata_keys_including_unknown_ones():
    meta = metadata(extra={"zzz_later": 1, "aaa_first": "x"}, counts={"key_count": 2})
    data = encode_manifest(Manifest(chunk_count=1, chunk_size=10, metadata=meta))
    keys = list(json.loads(data)["metadata"])
    assert keys == sorted(keys)
    assert keys[0] == "aaa_first"
    assert keys[-1] == "zzz_later"


def test_encode_inline_payload_is_base64_of_the_transport_string():
    transport = base64.b64encode(b"a JWS compact serialization")  # T is itself base64
    data = encode_manifest(Manifest(chunk_count=0, metadata=metadata(), payload=transport))
    expected = (
        b'{"chunk_count":0,"metadata":{"content":"key_operations","crypto":"hpke",'
        b'"distribution_id":"6981284f","distribution_ttl":"5m0s","receiver_id":"cpt.axfr.net.",'
        b'"timestamp":1770072143},"payload":"' + base64.b64encode(transport) + b'"}'
    )
    assert data == expected


def test_encode_then_decode_round_trips():
    meta = metadata(crypto="jose", content="mgmt_operations", distribution_ttl=90, retire_time=0)
    manifest = Manifest(chunk_count=0, metadata=meta, payload=b"T" * 300)
    decoded = decode_manifest(encode_manifest(manifest))
    assert decoded == manifest
    assert decoded.is_inline


# --- decoding -----------------------------------------------------------------------------------


def test_decodes_the_tdns_example():
    manifest = decode_manifest(TDNS_EXAMPLE)
    assert manifest.chunk_count == 1
    assert manifest.chunk_size == 60000
    assert manifest.payload is None
    assert not manifest.is_inline
    meta = manifest.metadata
    assert meta.content == "key_operations"
    assert meta.crypto == "hpke"
    assert meta.distribution_id == "6981284f"
    assert meta.distribution_ttl == 300
    assert meta.retire_time == 168 * 3600
    assert meta.receiver_id == "cpt.axfr.net."
    assert meta.timestamp == TDNS_TIMESTAMP
    assert dict(meta.counts) == {"key_count": 1, "operation_count": 1, "zone_count": 1}
    assert dict(meta.extra) == {}


def test_tdns_example_reencodes_byte_for_byte():
    assert encode_manifest(decode_manifest(TDNS_EXAMPLE)) == TDNS_EXAMPLE


def test_decodes_older_node_id_as_receiver_id():
    older = TDNS_EXAMPLE.replace(b'"receiver_id"', b'"node_id"')
    assert b'"node_id":"cpt.axfr.net."' in older
    meta = decode_manifest(older).metadata
    assert meta.receiver_id == "cpt.axfr.net."
    assert "node_id" not in meta.extra


def test_missing_crypto_means_hpke_and_missing_ttl_means_five_minutes():
    meta = decode_manifest(manifest_json({"distribution_id": "abcd"}, chunk_size=5)).metadata
    assert meta.crypto == "hpke"
    assert meta.distribution_ttl == 300
    assert meta.content == "key_operations"
    assert meta.timestamp is None


def test_unknown_keys_are_ignored_but_kept():
    data = manifest_json({"distribution_id": "abcd", "future_field": [1, 2]}, extra_top=True)
    assert dict(decode_manifest(data).metadata.extra) == {"future_field": [1, 2]}


def test_decodes_inline_payload():
    transport = b"eyJhbGciOiJFUzI1NiJ9.e30.sig"
    data = json.dumps(
        {
            "chunk_count": 0,
            "metadata": {"distribution_id": "abcd"},
            "payload": base64.b64encode(transport).decode(),
        }
    ).encode()
    assert decode_manifest(data).payload == transport


def test_rejects_inline_payload_over_the_limit_before_decoding_it():
    data = json.dumps(
        {
            "chunk_count": 0,
            "metadata": {"distribution_id": "abcd"},
            "payload": base64.b64encode(b"x" * 3000).decode(),
        }
    ).encode()
    with pytest.raises(LimitError, match="inline payload of about 3000 bytes exceeds the limit of"):
        decode_manifest(data, max_payload_bytes=1000)
    assert decode_manifest(data, max_payload_bytes=3000).payload == b"x" * 3000


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100000, "not valid JSON"),
        (b"[1,2]", "must be a JSON object, got list"),
        (b'{"metadata":{"distribution_id":"abcd"}}', "'chunk_count' is missing"),
        (b'{"chunk_count":true,"metadata":{"distribution_id":"abcd"}}', "'chunk_count' must be"),
        (b'{"chunk_count":"1","metadata":{"distribution_id":"abcd"}}', "'chunk_count' must be"),
        (b'{"chunk_count":1.0,"metadata":{"distribution_id":"abcd"}}', "'chunk_count' must be"),
        (b'{"chunk_count":65536,"metadata":{"distribution_id":"abcd"}}', "'chunk_count' must be"),
        (b'{"chunk_count":-1,"metadata":{"distribution_id":"abcd"}}', "'chunk_count' must be"),
        (
            b'{"chunk_count":1,"chunk_size":false,"metadata":{"distribution_id":"abcd"}}',
            "'chunk_size' must be",
        ),
        (b'{"chunk_count":1}', "'metadata' must be a JSON object"),
        (b'{"chunk_count":1,"metadata":[]}', "'metadata' must be a JSON object"),
        (b'{"chunk_count":1,"metadata":{}}', "'distribution_id' is missing"),
        (b'{"chunk_count":1,"metadata":{"distribution_id":7}}', "'distribution_id' is missing"),
        (b'{"chunk_count":1,"metadata":{"distribution_id":"XYZ"}}', "lowercase hex"),
        (b'{"chunk_count":0,"metadata":{"distribution_id":"abcd"}}', "no inline payload"),
        (
            b'{"chunk_count":2,"metadata":{"distribution_id":"abcd"},"payload":"eA=="}',
            "both an inline payload and chunk_count 2",
        ),
        (
            b'{"chunk_count":0,"metadata":{"distribution_id":"abcd"},"payload":5}',
            "'payload' must be a base64 string",
        ),
        (
            b'{"chunk_count":0,"metadata":{"distribution_id":"abcd"},"payload":"e-_A"}',
            "not standard base64",
        ),
    ],
)
def test_rejects_malformed_manifest(data, problem):
    with pytest.raises(WireError, match=re.escape(problem)):
        decode_manifest(data)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("timestamp", True, "'timestamp' must be Unix seconds"),
        ("timestamp", "1770072143", "'timestamp' must be Unix seconds"),
        ("timestamp", 1.5, "'timestamp' must be Unix seconds"),
        ("key_count", True, "'key_count' must be a count"),
        ("zone_count", -1, "'zone_count' must be a count"),
        ("operation_count", "1", "'operation_count' must be a count"),
        ("crypto", "rsa", "'crypto' 'rsa' is not one of"),
        ("crypto", None, "'crypto' None is not one of"),
        ("content", "everything", "'content' 'everything' is not one of"),
        ("receiver_id", 5, "'receiver_id' must be a string"),
        ("node_id", ["a."], "'receiver_id' must be a string"),
        ("distribution_ttl", 300, "'distribution_ttl' must be a Go duration string"),
        ("distribution_ttl", "5", "'distribution_ttl': duration '5' is not a Go duration"),
        ("distribution_ttl", "-5m", "'distribution_ttl': duration '-5m' is negative"),
        ("retire_time", "one week", "'retire_time': duration 'one week' is not a Go"),
        ("retire_time", "", "'retire_time': duration is empty"),
    ],
)
def test_rejects_metadata_field_of_wrong_type_or_value(field, value, problem):
    data = manifest_json({"distribution_id": "abcd", field: value})
    with pytest.raises(WireError, match=re.escape(problem)):
        decode_manifest(data)


# --- HMAC ---------------------------------------------------------------------------------------


def test_hmac_is_hmac_sha256_over_format_byte_and_json():
    key = bytes(range(32))
    assert manifest_hmac(key, FORMAT_JSON, TDNS_EXAMPLE) == independent_hmac(key, TDNS_EXAMPLE)
    assert manifest_hmac(key, 2, b"x") == independent_hmac(key, b"x", chunk_format=2)


def test_hmac_key_must_be_32_bytes():
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        manifest_hmac(b"k" * 31, FORMAT_JSON, b"{}")


def test_hpke_hmac_key_is_the_raw_x25519_public_key():
    key = HpkeKey.generate()
    assert key.hmac_key == bytes.fromhex(key.public_hex)
    assert len(key.hmac_key) == 32
    assert key.public_only().hmac_key == key.hmac_key


def test_jose_hmac_key_is_the_x_coordinate_of_the_jwk():
    key = JoseKey.generate()
    assert key.hmac_key == b64url_decode(key.public_jwk["x"])
    assert len(key.hmac_key) == 32


def test_jose_hmac_key_is_left_padded_when_x_is_short():
    for _ in range(20000):
        key = JoseKey.generate()
        if key.public.public_numbers().x < 2**248:
            break
    else:  # pragma: no cover - probability about 1e-34
        pytest.fail("no P-256 key with a leading zero byte in x")
    assert len(key.hmac_key) == 32
    assert key.hmac_key[0] == 0
    assert key.hmac_key == key.public.public_numbers().x.to_bytes(32, "big")


@pytest.mark.parametrize("key_type", [HpkeKey, JoseKey])
def test_manifest_record_carries_independently_computable_hmac(key_type):
    node = key_type.generate()
    manifest = Manifest(chunk_count=2, chunk_size=100, metadata=metadata())
    record = build_manifest_record(manifest, node.hmac_key)
    assert (record.sequence, record.total, record.format) == (0, 2, FORMAT_JSON)
    assert record.data == encode_manifest(manifest)
    assert record.hmac == independent_hmac(node.hmac_key, record.data)
    assert read_manifest_record(record, node.public_only().hmac_key) == manifest


def test_reads_a_manifest_hmacd_as_tdns_does():
    node = HpkeKey.generate()
    record = make_chunk(0, 1, TDNS_EXAMPLE, hmac=independent_hmac(node.hmac_key, TDNS_EXAMPLE))
    assert read_manifest_record(record, node.hmac_key).chunk_size == 60000


@pytest.mark.parametrize("bit", [0, 7, 100, 8 * len(TDNS_EXAMPLE) - 1])
def test_rejects_manifest_with_one_flipped_bit_in_json(bit):
    node = HpkeKey.generate()
    tampered = bytearray(TDNS_EXAMPLE)
    tampered[bit // 8] ^= 1 << (bit % 8)
    record = make_chunk(0, 1, bytes(tampered), hmac=independent_hmac(node.hmac_key, TDNS_EXAMPLE))
    with pytest.raises(IntegrityError, match="HMAC mismatch"):
        read_manifest_record(record, node.hmac_key)


def test_rejects_manifest_with_one_flipped_bit_in_hmac():
    node = JoseKey.generate()
    mac = bytearray(independent_hmac(node.hmac_key, TDNS_EXAMPLE))
    mac[31] ^= 0x80
    with pytest.raises(IntegrityError, match="HMAC"):
        read_manifest_record(make_chunk(0, 1, TDNS_EXAMPLE, hmac=bytes(mac)), node.hmac_key)


@pytest.mark.parametrize("key_type", [HpkeKey, JoseKey])
def test_rejects_manifest_hmac_made_for_another_node(key_type):
    this_node, other_node = key_type.generate(), key_type.generate()
    record = build_manifest_record(
        Manifest(chunk_count=1, metadata=metadata()), other_node.hmac_key
    )
    with pytest.raises(IntegrityError, match=r"HMAC mismatch .*another node's key"):
        read_manifest_record(record, this_node.hmac_key, where="manifest for cpt.axfr.net.")


def test_hmac_error_names_where():
    record = build_manifest_record(Manifest(chunk_count=1, metadata=metadata()), b"a" * 32)
    with pytest.raises(IntegrityError, match=r"^cpt\.axfr\.net\.6981284f\.kdc\.example\.com\.: "):
        read_manifest_record(record, b"b" * 32, where="cpt.axfr.net.6981284f.kdc.example.com.")


def test_rejects_manifest_without_hmac():
    record = make_chunk(0, 1, TDNS_EXAMPLE)
    with pytest.raises(IntegrityError, match="manifest HMAC is 0 bytes, expected 32"):
        read_manifest_record(record, b"k" * 32)


def test_rejects_manifest_record_that_is_a_data_chunk():
    record = make_chunk(1, 1, TDNS_EXAMPLE, hmac=independent_hmac(b"k" * 32, TDNS_EXAMPLE))
    with pytest.raises(WireError, match="expected sequence 0 \\(manifest\\), got 1"):
        read_manifest_record(record, b"k" * 32)


def test_rejects_jwt_format_manifest_as_unsupported():
    mac = independent_hmac(b"k" * 32, TDNS_EXAMPLE, chunk_format=2)
    record = make_chunk(0, 1, TDNS_EXAMPLE, hmac=mac, chunk_format=2)
    with pytest.raises(WireError, match="manifest format 2 is not supported"):
        read_manifest_record(record, b"k" * 32)


def test_rejects_record_total_that_differs_from_chunk_count():
    record = make_chunk(0, 5, TDNS_EXAMPLE, hmac=independent_hmac(b"k" * 32, TDNS_EXAMPLE))
    with pytest.raises(IntegrityError, match="chunk_count 1 differs from the record's total 5"):
        read_manifest_record(record, b"k" * 32)


# --- freshness ----------------------------------------------------------------------------------


def fresh_manifest(**meta) -> Manifest:
    return Manifest(chunk_count=1, metadata=metadata(**meta))


def test_accepts_fresh_manifest():
    check_freshness(fresh_manifest(), now=TDNS_TIMESTAMP + 10, expected_distribution_id="6981284f")


def test_accepts_manifest_at_the_edges_of_ttl_and_skew():
    manifest = fresh_manifest(distribution_ttl=300)
    check_freshness(manifest, now=TDNS_TIMESTAMP + 330, clock_skew=30)
    check_freshness(manifest, now=TDNS_TIMESTAMP - 30, clock_skew=30)


def test_rejects_manifest_without_timestamp():
    with pytest.raises(IntegrityError, match="no timestamp"):
        check_freshness(fresh_manifest(timestamp=None), now=TDNS_TIMESTAMP)


def test_rejects_manifest_from_the_future_beyond_clock_skew():
    with pytest.raises(PolicyError, match=r"is 31s in the future \(allowed clock skew 30s\)"):
        check_freshness(fresh_manifest(), now=TDNS_TIMESTAMP - 31, clock_skew=30)


def test_rejects_stale_manifest_beyond_ttl_plus_skew():
    manifest = fresh_manifest(distribution_ttl=300)
    with pytest.raises(PolicyError, match="stale manifest, prepared 331s ago, distribution_ttl"):
        check_freshness(manifest, now=TDNS_TIMESTAMP + 331, clock_skew=30)


def test_ttl_comes_from_the_manifest():
    manifest = decode_manifest(
        manifest_json(
            {"distribution_id": "abcd", "timestamp": 1000, "distribution_ttl": "1h0m0s"},
        )
    )
    check_freshness(manifest, now=1000 + 3600, clock_skew=0)
    with pytest.raises(PolicyError, match="stale"):
        check_freshness(manifest, now=1000 + 3601, clock_skew=0)


def test_rejects_manifest_for_another_distribution_id():
    with pytest.raises(IntegrityError, match="distribution 6981284f, expected 69812850"):
        check_freshness(fresh_manifest(), now=TDNS_TIMESTAMP, expected_distribution_id="69812850")


# --- Go durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m0s", 300),
        ("168h0m0s", 604800),
        ("1h2m3.5s", 3723.5),
        ("300ms", 0.3),
        ("0s", 0),
        ("0", 0),
        ("45s", 45),
        ("1.5h", 5400),
        ("+10s", 10),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("2000000ns", 0.002),
    ],
)
def test_parses_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("5", "is not a Go duration"),
        ("m5", "is not a Go duration"),
        ("5m0", "is not a Go duration"),
        ("5 m", "is not a Go duration"),
        ("1d", "is not a Go duration"),
        ("-1s", "is negative"),
        ("", "is empty"),
        ("3000000h", "larger than a Go duration"),
    ],
)
def test_rejects_bad_go_durations(text, problem):
    with pytest.raises(WireError, match=problem):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (300, "5m0s"),
        (3723, "1h2m3s"),
        (604800, "168h0m0s"),
        (3600, "1h0m0s"),
    ],
)
def test_formats_whole_seconds_as_go_does(seconds, text):
    assert format_go_duration(seconds) == text
    assert parse_go_duration(text) == seconds


def test_format_rejects_negative_durations():
    with pytest.raises(ValueError, match="never negative"):
        format_go_duration(-1)
