"""The key_operations payload: tdns's JSON shape, and every validation rule with its message."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import (
    KeyMismatchError,
    KrsError,
    PayloadError,
    PolicyError,
    UnsupportedAlgorithmError,
)
from krs_plugin.payload import (
    DeleteKey,
    Ping,
    RollKey,
    delete_key_entry,
    encode_payload,
    parse_payload,
    ping_entry,
    roll_key_entry,
)

NOW = 1_800_000_000
ZONE = "example.com."
ZSK = generate_key(ZONE, 15, 256)
KSK = generate_key(ZONE, 15, 257)
OTHER = generate_key(ZONE, 15, 256)


def roll_json(**changes: Any) -> dict[str, Any]:
    entry = json.loads(encode_payload([roll_key_entry(ZSK, "ZSK")]))[0]
    for key, value in changes.items():
        if value is ...:
            entry.pop(key)
        else:
            entry[key] = value
    return entry


def parse(*entries: Any, **kw: Any):
    return parse_payload(json.dumps(list(entries)).encode(), now=NOW, **kw)


@pytest.mark.parametrize("algorithm", [8, 13, 14, 15, 16])
def test_round_trip_for_every_algorithm(algorithm: int) -> None:
    ksk, zsk = generate_key(ZONE, algorithm, 257), generate_key(ZONE, algorithm, 256)
    timing = KeyTiming(publish=NOW - 10, activate=NOW, inactive=NOW + 100, delete=NOW + 200)
    entries = [
        roll_key_entry(ksk, "KSK", timing=timing, distribution_id="6981284f", issued_at=NOW),
        roll_key_entry(zsk, "ZSK", old_key_tag=4664, retire_old_key=True),
        delete_key_entry(ZONE, 4664, "rolled"),
        ping_entry("n-1", "2026-11-22T10:00:00Z"),
    ]
    payload = parse_payload(encode_payload(entries), now=NOW, expected_distribution_id="6981284f")
    first, second, third, fourth = payload.entries
    assert isinstance(first, RollKey) and first.key.dnskey == ksk.dnskey
    assert first.timing == timing and first.key_type == "KSK"
    assert isinstance(second, RollKey) and second.old_key_tag == 4664 and second.retire_old_key
    assert isinstance(third, DeleteKey) and third.key_tag == 4664 and third.reason == "rolled"
    assert isinstance(fourth, Ping) and fourth.nonce == "n-1"
    assert payload.zones == {dns.name.from_text(ZONE)}


def test_encodes_tdns_field_shapes() -> None:
    entry = json.loads(encode_payload([roll_key_entry(ZSK, "ZSK")]))[0]
    assert list(entry) == [
        "operation",
        "zone_name",
        "key_id",
        "key_type",
        "algorithm",
        "flags",
        "public_key",
        "private_key",
        "metadata",
    ]
    assert entry["key_id"] == str(ZSK.key_tag)
    assert (
        entry["public_key"]
        == "example.com.\t3600\tIN\tDNSKEY\t256 3 15 " + base64.b64encode(ZSK.dnskey.key).decode()
    )
    assert base64.b64decode(entry["private_key"]).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert entry["metadata"] == {"old_key_id": None, "retire_old_key": False}


def test_accepts_a_hand_written_tdns_entry() -> None:
    pem = ZSK.to_pkcs8_pem()
    tag, b64key = ZSK.key_tag, base64.b64encode(ZSK.dnskey.key).decode()
    b64pem = base64.b64encode(pem).decode()
    text = (
        f'[{{"operation":"roll_key","zone_name":"example.com.","key_id":"{tag}",'
        f'"key_type":"ZSK","algorithm":15,"flags":256,'
        f'"public_key":"example.com.\\t3600\\tIN\\tDNSKEY\\t256 3 15 {b64key}",'
        f'"private_key":"{b64pem}","metadata":{{"old_key_id":null,"retire_old_key":false}}}}]'
    )
    (entry,) = parse_payload(text.encode(), now=NOW).entries
    assert isinstance(entry, RollKey) and entry.key_tag == ZSK.key_tag


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"operation":"ping"}', "JSON array"),
        (b"[]", "no operations"),
        (b"[42]", "entry 0: must be a JSON object"),
        (b'[{"operation":"rekey"}]', "unknown operation 'rekey'"),
        (b'[{"metadata":{}}]', "'operation' is missing"),
        (b'[{"operation":"ping","metadata":{}}]', "'nonce'"),
    ],
)
def test_rejects_malformed_payloads(data: bytes, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        parse_payload(data, now=NOW)


@pytest.mark.parametrize(
    ("changes", "error", "fragment"),
    [
        ({"surprise": 1}, PayloadError, "unknown field"),
        ({"zone_name": ...}, PayloadError, "'zone_name' is missing"),
        ({"algorithm": "15"}, PayloadError, "'algorithm' must be a number"),
        ({"algorithm": True}, PayloadError, "'algorithm' must be a number"),
        ({"zone_name": "example.com"}, PayloadError, "ending in '.'"),
        ({"zone_name": "a..b."}, PayloadError, "not a valid domain name"),
        ({"zone_name": "x" * 64 + "."}, PayloadError, "not a valid domain name"),
        ({"key_id": "0x1a2b"}, PayloadError, "decimal key tag"),
        ({"key_id": "70000"}, PayloadError, "decimal key tag"),
        ({"key_id": 4664}, PayloadError, "'key_id' must be a string"),
        ({"key_type": "SEP"}, PayloadError, "not ZSK, KSK or CSK"),
        ({"flags": 257}, PayloadError, "do not fit key_type ZSK"),
        ({"algorithm": 7}, UnsupportedAlgorithmError, "algorithm 7"),
        ({"algorithm": 13}, PayloadError, "public_key has flags 256 algorithm 15"),
        ({"public_key": "garbage"}, PayloadError, "no DNSKEY record"),
        ({"public_key": "other.org. 3600 IN DNSKEY 256 3 15 AAAA"}, PayloadError, "owner"),
        ({"private_key": "***"}, PayloadError, "not standard base64"),
        ({"private_key": base64.b64encode(b"hello").decode()}, PayloadError, "PKCS#8"),
        (
            {"private_key": base64.b64encode(OTHER.to_pkcs8_pem()).decode()},
            KeyMismatchError,
            f"derives DNSKEY tag {OTHER.key_tag}",
        ),
        ({"key_id": str((ZSK.key_tag + 1) % 65536)}, KeyMismatchError, "is not the DNSKEY"),
        ({"metadata": {"colour": "blue"}}, PayloadError, "unknown metadata field"),
        ({"metadata": {"retire_old_key": "yes"}}, PayloadError, "must be a boolean"),
        ({"metadata": {"old_key_id": "abc"}}, PayloadError, "decimal key tag"),
        ({"metadata": {"timing": {"activate": 5, "publish": 9}}}, PayloadError, "after"),
        ({"metadata": {"timing": {"later": 5}}}, PayloadError, "unknown timing"),
        ({"metadata": {"distribution_id": "XYZ"}}, PayloadError, "4-16 hex"),
        ({"metadata": []}, PayloadError, "'metadata' must be an object"),
    ],
)
def test_rejects_bad_roll_key_fields(changes, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        parse(roll_json(**changes))


def test_error_messages_name_the_entry_index_and_never_the_private_key() -> None:
    bad = roll_json(private_key=base64.b64encode(OTHER.to_pkcs8_pem()).decode())
    with pytest.raises(KeyMismatchError) as raised:
        parse({"operation": "ping", "metadata": {"nonce": "x"}}, bad)
    assert "entry 1" in str(raised.value)
    assert base64.b64encode(OTHER.to_pkcs8_pem()).decode()[40:80] not in str(raised.value)
    assert "PRIVATE KEY" not in repr(parse(roll_json()).entries[0])


def test_accepts_the_same_key_twice_in_one_payload() -> None:
    assert len(parse(roll_json(), roll_json()).entries) == 2


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"issued_at": NOW + 31}, "not yet valid"),
        ({"expires_at": NOW - 1}, "expired"),
        ({"distribution_id": "abcd1234"}, "distribution abcd1234.*distribution 6981284f"),
    ],
)
def test_refuses_entries_outside_their_window(meta: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse(roll_json(metadata=meta), expected_distribution_id="6981284f")


def test_accepts_clock_skew_within_the_allowance() -> None:
    parse(roll_json(metadata={"issued_at": NOW + 30, "expires_at": NOW}))


def test_delete_key_accepts_tdns_metadata_and_none() -> None:
    entries = parse(
        {
            "operation": "delete_key",
            "zone_name": ZONE,
            "key_id": "4664",
            "metadata": {"reason": "done", "pending_confirmation": True, "crypto": "jose"},
        },
        {"operation": "delete_key", "zone_name": ZONE, "key_id": "4665"},
    ).entries
    assert [e.key_tag for e in entries] == [4664, 4665]  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(KrsError):
        parse_payload(data, now=NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "operation",
        "zone_name",
        "key_id",
        "key_type",
        "algorithm",
        "flags",
        "public_key",
        "private_key",
        "metadata",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            field_names,
            json_values
            | st.sampled_from(["roll_key", "delete_key", "ping", "example.com.", "ZSK", 15, 256]),
        ),
        max_size=3,
    )
)
def test_arbitrary_entries_raise_only_our_errors(entries: list[dict[str, Any]]) -> None:
    with contextlib.suppress(KrsError):
        parse(*entries)
