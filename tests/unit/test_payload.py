"""The decrypted payload: tdns's JSON shape, and one test per validation rule."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import dns.name
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.errors import (
    KeyMismatchError,
    KrsError,
    PayloadError,
    PolicyError,
    UnsupportedAlgorithmError,
)
from krs_plugin.payload import (
    DeleteKey,
    Entry,
    Envelope,
    KeyType,
    Payload,
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
OTHER_ZSK = generate_key(ZONE, 15, 256)
P256_ZSK = generate_key(ZONE, 13, 256)


def roll(key: DnssecKey = ZSK, kind: KeyType = "ZSK", **changes: Any) -> dict[str, Any]:
    """A valid roll_key entry as JSON, with ``changes`` applied (``...`` removes a field)."""
    entry: dict[str, Any] = json.loads(encode_payload([roll_key_entry(key, kind)]))[0]
    for name, value in changes.items():
        if value is ...:
            entry.pop(name)
        else:
            entry[name] = value
    return entry


def meta(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    entry = dict(entry)
    entry["metadata"] = {**entry.get("metadata", {}), **changes}
    return entry


def delete(**metadata: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"operation": "delete_key", "zone_name": ZONE, "key_id": "4664"}
    if metadata:
        entry["metadata"] = metadata
    return entry


def ping(**metadata: Any) -> dict[str, Any]:
    return {"operation": "ping", "metadata": {"nonce": "n-1", **metadata}}


def parse(*entries: Any, **kw: Any) -> Payload:
    return parse_payload(json.dumps(list(entries)).encode(), now=kw.pop("now", NOW), **kw)


def refused(error: type[Exception], fragment: str, *entries: Any, **kw: Any) -> str:
    with pytest.raises(error, match=fragment) as info:
        parse(*entries, **kw)
    return str(info.value)


# --- round trips and tdns's shape ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [8, 13, 14, 15, 16])
def test_encode_then_parse_round_trips_every_algorithm(algorithm: int) -> None:
    ksk, zsk = generate_key(ZONE, algorithm, 257), generate_key(ZONE, algorithm, 256)
    timing = KeyTiming(publish=NOW - 10, activate=NOW, inactive=NOW + 100, delete=NOW + 200)
    entries: list[Entry] = [
        roll_key_entry(ksk, "KSK", timing=timing, distribution_id="6981284f", issued_at=NOW),
        roll_key_entry(zsk, "ZSK", old_key_tag=4664, retire_old_key=True, expires_at=NOW + 60),
        delete_key_entry(ZONE, 4664, "rolled"),
        ping_entry("n-1", "2026-11-22T10:00:00Z"),
    ]
    payload = parse_payload(encode_payload(entries), now=NOW, expected_distribution_id="6981284f")
    assert payload.entries == tuple(entries)
    first, second = payload.entries[0], payload.entries[1]
    assert isinstance(first, RollKey) and isinstance(second, RollKey)
    assert first.key.dnskey == ksk.dnskey and first.key_tag == ksk.key_tag
    assert first.timing == timing and first.envelope == Envelope("6981284f", NOW, None)
    assert second.key.dnskey == zsk.dnskey and second.old_key_tag == 4664
    assert second.retire_old_key and second.timing is None
    assert payload.zones == {dns.name.from_text(ZONE)}


def test_csk_round_trips_with_flags_257() -> None:
    (entry,) = parse_payload(encode_payload([roll_key_entry(KSK, "CSK")]), now=NOW).entries
    assert isinstance(entry, RollKey) and entry.key_type == "CSK" and entry.key.flags == 257


def test_encode_writes_exactly_what_tdns_writes() -> None:
    entries: list[Entry] = [
        roll_key_entry(ZSK, "ZSK", old_key_tag=4664),
        delete_key_entry(ZONE, 4664, "x"),
    ]
    b64 = base64.b64encode(ZSK.dnskey.key).decode()
    private = base64.b64encode(ZSK.to_pkcs8_pem()).decode()
    expected = (
        '[{"operation":"roll_key","zone_name":"example.com.",'
        f'"key_id":"{ZSK.key_tag}","key_type":"ZSK","algorithm":15,"flags":256,'
        f'"public_key":"example.com.\\t3600\\tIN\\tDNSKEY\\t256 3 15 {b64}",'
        f'"private_key":"{private}",'
        '"metadata":{"old_key_id":"4664","retire_old_key":false}},'
        '{"operation":"delete_key","zone_name":"example.com.","key_id":"4664",'
        '"metadata":{"reason":"x"}}]'
    )
    assert encode_payload(entries).decode() == expected


def test_encode_sorts_metadata_keys_and_escapes_html_like_go() -> None:
    entry = roll_key_entry(
        ZSK, "ZSK", timing=KeyTiming(publish=1, activate=2), distribution_id="abcd", issued_at=3
    )
    (obj,) = json.loads(encode_payload([entry]))
    assert list(obj["metadata"]) == sorted(obj["metadata"])
    assert list(obj["metadata"]["timing"]) == ["activate", "publish"]
    assert obj["metadata"]["old_key_id"] is None
    encoded = encode_payload([delete_key_entry(ZONE, 1, "a<b>&c")])
    assert b"a\\u003cb\\u003e\\u0026c" in encoded
    assert parse_payload(encoded, now=NOW).entries[0] == delete_key_entry(ZONE, 1, "a<b>&c")


def test_private_key_is_standard_base64_of_the_pkcs8_pem() -> None:
    obj = roll()
    pem = base64.b64decode(obj["private_key"], validate=True)
    assert pem == ZSK.to_pkcs8_pem() and pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_parses_a_hand_written_tdns_style_payload() -> None:
    # As tdns-nm's KDC builds it (research note 5.1): Go struct order, metadata from its DB,
    # the zero values of unused members, a ping with a 64-hex nonce and an RFC 3339 time.
    pem_b64 = base64.b64encode(ZSK.to_pkcs8_pem()).decode()
    b64 = base64.b64encode(ZSK.dnskey.key).decode()
    nonce = "ab" * 32
    text = (
        f'[{{"operation":"roll_key","zone_name":"Example.COM.","key_id":"{ZSK.key_tag}",'
        '"key_type":"ZSK","algorithm":15,"flags":256,'
        f'"public_key":"example.com.\\t3600\\tIN\\tDNSKEY\\t256 3 15 {b64}",'
        f'"private_key":"{pem_b64}","metadata":{{"old_key_id":null,"retire_old_key":false}}}},'
        '{"operation":"delete_key","zone_name":"example.com.","key_id":"4664","key_type":"",'
        '"algorithm":0,"flags":0,"public_key":"","private_key":"",'
        '"metadata":{"crypto":"hpke","pending_confirmation":true,"reason":"superseded"}},'
        '{"operation":"ping","zone_name":"","key_id":"","metadata":{"crypto":"jose",'
        f'"nonce":"{nonce}","timestamp":"2026-11-22T10:00:00+01:00"}}}}]'
    )
    roll_entry, delete_entry, ping_entry_ = parse_payload(text.encode(), now=NOW).entries
    assert isinstance(roll_entry, RollKey)
    assert roll_entry.zone.to_text() == "example.com."  # lower-cased for comparisons
    assert roll_entry.key.dnskey == ZSK.dnskey and roll_entry.key.ttl == 3600
    assert roll_entry.old_key_tag is None and not roll_entry.retire_old_key
    assert delete_entry == DeleteKey(dns.name.from_text(ZONE), 4664, "superseded")
    assert ping_entry_ == Ping(nonce, "2026-11-22T10:00:00+01:00")


# --- the array and the entries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"[{]", "not valid JSON"),
        (b"\xff[]", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not acceptable JSON"),
        (b"[NaN]", "NaN is not valid JSON"),
    ],
)
def test_rejects_payload_that_is_not_json(data: bytes, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        parse_payload(data, now=NOW)


@pytest.mark.parametrize("data", [b"{}", b'"roll_key"', b"42", b"null"])
def test_rejects_payload_that_is_not_an_array(data: bytes) -> None:
    with pytest.raises(PayloadError, match="must be a JSON array"):
        parse_payload(data, now=NOW)


def test_accepts_tdns_transport_ping_message() -> None:
    # The cleartext of the tdns golden vector (shared/testvectors/tdns-transport).
    data = b'{"MessageType":"ping","MyIdentity":"a.example.","nonce":"n-1"}'
    assert parse_payload(data, now=NOW).entries == (Ping("n-1"),)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"MessageType": "hello", "MyIdentity": "a.", "nonce": "n"}, "'hello' is not one"),
        ({"MessageType": "ping", "MyIdentity": "a.", "nonce": ""}, "'nonce' is empty"),
        ({"MessageType": "ping", "nonce": "n"}, "'MyIdentity' is missing"),
        ({"MessageType": "ping", "MyIdentity": "a", "nonce": "n"}, "not absolute"),
        ({"MessageType": "ping", "MyIdentity": "a.", "nonce": "n", "Zones": []}, "'Zones'"),
    ],
)
def test_rejects_tdns_messages_other_than_a_well_formed_ping(message: Any, fragment: str) -> None:
    with pytest.raises(PayloadError, match=f"message: .*{fragment}"):
        parse_payload(json.dumps(message).encode(), now=NOW)


def test_rejects_empty_array() -> None:
    refused(PayloadError, "holds no operations")


@pytest.mark.parametrize("entry", [[], "ping", 1, None])
def test_rejects_entry_that_is_not_an_object(entry: Any) -> None:
    refused(PayloadError, r"entry 1: must be a JSON object", ping(), entry)


def test_rejects_unknown_top_level_field() -> None:
    refused(PayloadError, r"entry 0 \(roll_key\): unknown field 'comment'", roll(comment=""))


def test_rejects_unused_field_that_is_not_empty() -> None:
    refused(
        PayloadError,
        r"entry 0 \(delete_key\): field 'public_key' is not used by delete_key",
        {**delete(), "public_key": "x"},
    )
    refused(PayloadError, "field 'flags' is not used by ping", {**ping(), "flags": 256})


def test_accepts_unused_fields_holding_tdns_zero_values() -> None:
    zeros = {"key_type": "", "algorithm": 0, "flags": 0, "public_key": "", "private_key": None}
    assert isinstance(parse({**delete(), **zeros}).entries[0], DeleteKey)


def test_rejects_json_object_with_a_repeated_key() -> None:
    data = b'[{"operation":"ping","operation":"ping","metadata":{"nonce":"n"}}]'
    with pytest.raises(PayloadError, match="'operation' appears twice"):
        parse_payload(data, now=NOW)


@pytest.mark.parametrize(
    "name", ["zone_name", "key_id", "key_type", "algorithm", "flags", "public_key", "private_key"]
)
def test_rejects_roll_key_missing_a_required_field(name: str) -> None:
    removed: dict[str, Any] = {name: ...}
    refused(PayloadError, rf"entry 0 \(roll_key\): field '{name}' is missing", roll(**removed))


def test_rejects_entry_without_operation() -> None:
    refused(PayloadError, r"entry 0: field 'operation' is missing", {"metadata": {}})


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("algorithm", True, "'algorithm' must be an integer, got a boolean"),
        ("algorithm", "15", "'algorithm' must be an integer, got a string"),
        ("algorithm", 15.0, "'algorithm' must be an integer, got a fractional number"),
        ("flags", False, "'flags' must be an integer, got a boolean"),
        ("key_id", 4664, "'key_id' must be a string, got an integer"),
        ("zone_name", ["example.com."], "'zone_name' must be a string, got an array"),
        ("public_key", None, "'public_key' must be a string, got null"),
        ("metadata", [], "'metadata' must be an object, got an array"),
    ],
)
def test_rejects_fields_of_the_wrong_json_type(name: str, value: Any, fragment: str) -> None:
    refused(PayloadError, rf"entry 0 \(roll_key\): field {fragment}", roll(**{name: value}))


@pytest.mark.parametrize("operation", ["rekey", "ROLL_KEY", "", "update_components"])
def test_rejects_unknown_operation(operation: str) -> None:
    refused(
        PayloadError,
        rf"entry 0: field 'operation' '{operation}' is not roll_key",
        {"operation": operation},
    )


# --- zone_name and key_id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "fragment"),
    [
        ("example.com", "not absolute"),
        ("", "is empty"),
        ("example..com.", "empty label"),
        (".example.com.", "empty label"),
        ("a" * 64 + ".com.", "label of 64 characters"),
        (("a" * 63 + ".") * 4, "257 bytes in wire form"),
        ("exa mple.com.", "letters, digits"),
        ("b\u00fccher.de.", "letters, digits"),
        ("a/b.example.", "letters, digits"),
        ("a\\.b.example.", "letters, digits"),
    ],
)
def test_rejects_zone_name_that_is_not_a_valid_absolute_domain_name(
    zone: str, fragment: str
) -> None:
    refused(
        PayloadError,
        rf"entry 0 \(delete_key\): field 'zone_name'.*{fragment}",
        {**delete(), "zone_name": zone},
    )


def test_accepts_longest_zone_name_and_lower_cases_it() -> None:
    longest = ("A" * 63 + ".") * 3 + "b" * 61 + "."
    (entry,) = parse({**delete(), "zone_name": longest}).entries
    assert isinstance(entry, DeleteKey) and entry.zone.to_text() == longest.lower()


@pytest.mark.parametrize("key_id", ["1a2b", "0x1234", "01234", "-1", "+5", " 5", "65536", "", "٣"])
def test_rejects_key_id_that_is_not_a_decimal_key_tag(key_id: str) -> None:
    refused(
        PayloadError,
        r"field 'key_id' .* is not a decimal key tag 0\.\.65535",
        {**delete(), "key_id": key_id},
    )


@pytest.mark.parametrize("key_id", ["0", "65535"])
def test_accepts_key_id_at_the_ends_of_the_range(key_id: str) -> None:
    assert parse({**delete(), "key_id": key_id}).entries[0].key_tag == int(key_id)  # type: ignore[union-attr]


# --- key_type, flags, algorithm -----------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["zsk", "KEY", ""])
def test_rejects_unknown_key_type(key_type: str) -> None:
    refused(PayloadError, "field 'key_type' .* is not ZSK, KSK or CSK", roll(key_type=key_type))


@pytest.mark.parametrize("flags", [0, 1, 385, 65535])
def test_rejects_flags_that_are_neither_256_nor_257(flags: int) -> None:
    refused(PayloadError, rf"field 'flags' {flags} is neither 256", roll(flags=flags))


@pytest.mark.parametrize(
    ("key", "key_type", "flags"), [(ZSK, "ZSK", 257), (KSK, "KSK", 256), (KSK, "CSK", 256)]
)
def test_rejects_flags_inconsistent_with_key_type(
    key: DnssecKey, key_type: KeyType, flags: int
) -> None:
    refused(
        PayloadError,
        rf"field 'flags' {flags} does not fit key_type {key_type}",
        roll(key, key_type, flags=flags),
    )


@pytest.mark.parametrize("algorithm", [5, 7, 10, 12, 17, 0])
def test_rejects_unsupported_algorithm_naming_it(algorithm: int) -> None:
    refused(
        UnsupportedAlgorithmError,
        rf"entry 0 \(roll_key\): field 'algorithm': DNSSEC algorithm {algorithm} is not",
        roll(algorithm=algorithm),
    )


def test_rejects_algorithm_that_differs_from_the_dnskeys() -> None:
    refused(
        PayloadError,
        "'public_key': the DNSKEY has flags 256 algorithm 15, "
        "the entry says flags 256 algorithm 13",
        roll(algorithm=13),
    )


# --- public_key and private_key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("garbage", "does not end with a dot"),
        ("", "no DNSKEY record"),
        ("example.com.\t3600\tIN\tDS\t1 15 2 AAAA", "expected TTL, class IN or DNSKEY"),
        ("example.com.\t3600\tIN\tDNSKEY\t256 3", "malformed DNSKEY record"),
    ],
)
def test_rejects_public_key_that_is_not_a_dnskey_rr(text: str, fragment: str) -> None:
    refused(PayloadError, rf"field 'public_key'.*{fragment}", roll(public_key=text))


def test_rejects_public_key_whose_owner_is_not_zone_name() -> None:
    text = roll()["public_key"].replace("example.com.", "example.net.")
    refused(PayloadError, "owner example.net. is not zone_name example.com.", roll(public_key=text))


def test_rejects_public_key_whose_flags_differ_from_the_entrys() -> None:
    ksk_text = roll(KSK, "KSK")["public_key"]
    refused(PayloadError, "DNSKEY has flags 257 .* entry says flags 256", roll(public_key=ksk_text))


def test_rejects_public_key_with_protocol_other_than_3() -> None:
    text = roll()["public_key"].replace("\t256 3 15 ", "\t256 2 15 ")
    refused(PayloadError, "protocol 2 is not 3", roll(public_key=text))


def test_rejects_key_id_that_is_not_the_dnskey_key_tag() -> None:
    wrong = (ZSK.key_tag + 1) % 65536
    message = refused(
        KeyMismatchError, f"'key_id' is {wrong}.*key tag {ZSK.key_tag}", roll(key_id=str(wrong))
    )
    assert "example.com." in message


def test_rejects_private_key_that_is_not_base64() -> None:
    refused(PayloadError, "field 'private_key' is not standard base64", roll(private_key="@@@@"))
    urlsafe = roll()["private_key"].replace("+", "-").replace("/", "_")
    if urlsafe != roll()["private_key"]:
        refused(PayloadError, "not standard base64", roll(private_key=urlsafe))


@pytest.mark.parametrize(
    ("pem", "fragment"),
    [
        (b"not a pem", "not a PEM private key"),
        (P256_ZSK.to_pkcs8_pem().replace(b"PRIVATE KEY", b"EC PRIVATE KEY"), "EC PRIVATE KEY"),
        (b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n", "PKCS#8"),
    ],
)
def test_rejects_private_key_that_is_not_pem_pkcs8(pem: bytes, fragment: str) -> None:
    refused(
        PayloadError,
        rf"field 'private_key'.*{fragment}",
        roll(private_key=base64.b64encode(pem).decode()),
    )


def test_rejects_private_key_of_the_wrong_type_for_the_algorithm() -> None:
    p256 = base64.b64encode(P256_ZSK.to_pkcs8_pem()).decode()
    refused(
        PayloadError,
        r"field 'private_key'.*ECDSA secp256r1 key cannot be used with algorithm 15",
        roll(private_key=p256),
    )


def test_rejects_private_key_that_derives_a_different_dnskey() -> None:
    other = base64.b64encode(OTHER_ZSK.to_pkcs8_pem()).decode()
    message = refused(KeyMismatchError, "private key derives DNSKEY tag", roll(private_key=other))
    assert str(OTHER_ZSK.key_tag) in message and str(ZSK.key_tag) in message


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        (roll(), "nonce"),
        (roll(), "reason"),
        (delete(), "old_key_id"),
        (delete(), "timing"),
        (ping(), "reason"),
        (ping(), "future_thing"),
    ],
)
def test_rejects_unknown_metadata_keys_for_the_operation(entry: dict[str, Any], key: str) -> None:
    refused(PayloadError, f"unknown metadata key '{key}'", meta(entry, **{key: "x"}))


@pytest.mark.parametrize("old", ["abc", "01", 4664, "65536"])
def test_rejects_old_key_id_that_is_not_a_decimal_tag_string(old: Any) -> None:
    refused(PayloadError, "metadata 'old_key_id'", meta(roll(), old_key_id=old))


def test_rejects_old_key_id_equal_to_the_new_key_id() -> None:
    refused(PayloadError, "is the new key's own key_id", meta(roll(), old_key_id=str(ZSK.key_tag)))


def test_accepts_missing_and_empty_old_key_id() -> None:
    for entry in (meta(roll(), old_key_id=""), roll(metadata=...), roll(metadata=None)):
        (parsed,) = parse(entry).entries
        assert isinstance(parsed, RollKey) and parsed.old_key_tag is None
        assert not parsed.retire_old_key


def test_rejects_retire_old_key_that_is_not_a_boolean() -> None:
    refused(
        PayloadError,
        "metadata 'retire_old_key' must be a boolean",
        meta(roll(), retire_old_key="true"),
    )


@pytest.mark.parametrize(
    ("timing", "fragment"),
    [
        ({"publish": 10, "activate": 5}, r"publish \(10\) is after activate \(5\)"),
        ({"activate": 10, "delete": 9}, r"activate \(10\) is after delete \(9\)"),
        ({"publish": "now"}, "'timing.publish' must be an integer"),
        ({"publish": -1}, "'timing.publish' -1 is not Unix seconds"),
        ({"created": 1}, "timing': unknown key 'created'"),
        ([], "'timing' must be an object"),
    ],
)
def test_rejects_timing_that_is_malformed_or_out_of_order(timing: Any, fragment: str) -> None:
    refused(PayloadError, fragment, meta(roll(), timing=timing))


def test_accepts_partial_timing_in_order() -> None:
    (entry,) = parse(meta(roll(), timing={"publish": 5, "delete": 9})).entries
    assert isinstance(entry, RollKey) and entry.timing == KeyTiming(publish=5, delete=9)


@pytest.mark.parametrize("dist_id", ["ABCD", "abc", "a" * 17, "xyz1", ""])
def test_rejects_distribution_id_that_is_not_lowercase_hex(dist_id: str) -> None:
    refused(
        PayloadError,
        "metadata 'distribution_id' .* is not 4-16 lowercase hex",
        meta(roll(), distribution_id=dist_id),
    )


@pytest.mark.parametrize("name", ["issued_at", "expires_at"])
@pytest.mark.parametrize("value", ["1800000000", 1.5e9, True])
def test_rejects_window_times_that_are_not_integers(name: str, value: Any) -> None:
    refused(PayloadError, f"metadata '{name}' must be an integer", delete(**{name: value}))


def test_rejects_expires_at_before_issued_at() -> None:
    refused(
        PayloadError, "'expires_at' .* is before 'issued_at'", ping(issued_at=NOW, expires_at=1)
    )


def test_accepts_delete_key_without_metadata_and_with_tdns_metadata() -> None:
    bare, full = parse(
        delete(), delete(reason="rolled", pending_confirmation=True, crypto="hpke")
    ).entries
    assert bare == DeleteKey(dns.name.from_text(ZONE), 4664)
    assert isinstance(full, DeleteKey) and full.reason == "rolled"


def test_rejects_delete_key_metadata_of_the_wrong_type() -> None:
    refused(
        PayloadError, "'pending_confirmation' must be a boolean", delete(pending_confirmation="yes")
    )
    refused(PayloadError, "'reason' must be a string", delete(reason=1))


@pytest.mark.parametrize("entry", [{"operation": "ping"}, {"operation": "ping", "metadata": {}}])
def test_rejects_ping_without_nonce(entry: dict[str, Any]) -> None:
    refused(PayloadError, r"entry 0 \(ping\): metadata 'nonce' is missing", entry)


@pytest.mark.parametrize(("nonce", "fragment"), [("", "is empty"), (5, "must be a string")])
def test_rejects_ping_nonce_that_is_empty_or_not_a_string(nonce: Any, fragment: str) -> None:
    refused(PayloadError, f"metadata 'nonce' {fragment}", ping(nonce=nonce))


@pytest.mark.parametrize(
    "timestamp", ["2026-11-22", "2026-11-22 10:00:00Z", "2026-13-22T10:00:00Z", "yesterday"]
)
def test_rejects_ping_timestamp_that_is_not_rfc3339(timestamp: str) -> None:
    refused(PayloadError, "metadata 'timestamp' .* is not an RFC 3339", ping(timestamp=timestamp))


# --- window and identity ------------------------------------------------------------------------


def test_rejects_entry_issued_after_now_plus_clock_skew_as_not_yet_valid() -> None:
    refused(
        PolicyError,
        r"entry 0 \(ping\): not yet valid: metadata 'issued_at'",
        ping(issued_at=NOW + 31),
    )
    refused(PolicyError, "not yet valid", ping(issued_at=NOW + 11), clock_skew=10)


def test_accepts_issued_at_within_the_clock_skew() -> None:
    assert parse(ping(issued_at=NOW + 30)).entries[0].envelope.issued_at == NOW + 30


def test_rejects_expired_entry() -> None:
    refused(
        PolicyError,
        r"entry 1 \(delete_key\): expired: metadata 'expires_at'",
        ping(),
        delete(expires_at=NOW - 1),
    )


def test_accepts_entry_until_the_second_it_expires() -> None:
    assert parse(delete(expires_at=NOW)).entries[0].envelope.expires_at == NOW


def test_rejects_distribution_id_other_than_expected_naming_both() -> None:
    refused(
        PolicyError,
        "metadata 'distribution_id' is abcd1234, but the entry arrived in distribution 6981284f",
        roll(metadata={"distribution_id": "abcd1234"}),
        expected_distribution_id="6981284f",
    )


def test_accepts_entries_without_distribution_id_when_one_is_expected() -> None:
    # tdns KDCs do not send our metadata; the manifest's id is then the only one.
    assert parse(ping(), expected_distribution_id="6981284f").entries[0] == Ping("n-1")


def test_content_errors_are_reported_before_window_errors() -> None:
    refused(PayloadError, "entry 1", ping(expires_at=1), {"operation": "x"})


def test_rejects_same_zone_and_key_tag_twice_with_different_material() -> None:
    as_csk = roll(KSK, "CSK")
    refused(PayloadError, "entry 1 .*also entry 0, with different", roll(KSK, "KSK"), as_csk)
    ttl_changed = roll(public_key=roll()["public_key"].replace("\t3600\t", "\t300\t"))
    refused(PayloadError, "also entry 0", roll(), ttl_changed)


def test_accepts_the_same_key_twice_when_identical() -> None:
    payload = parse(roll(), roll())
    assert payload.entries[0] == payload.entries[1]


# --- builders -----------------------------------------------------------------------------------


def test_builders_refuse_what_the_parser_would_refuse() -> None:
    with pytest.raises(PayloadError, match="key_type 'XSK'"):
        roll_key_entry(ZSK, "XSK")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="a KSK needs flags 257"):
        roll_key_entry(ZSK, "KSK")
    with pytest.raises(PayloadError, match=r"activate .* is after inactive"):
        roll_key_entry(ZSK, "ZSK", timing=KeyTiming(activate=5, inactive=4))
    with pytest.raises(PayloadError, match="4-16 lowercase hex"):
        roll_key_entry(ZSK, "ZSK", distribution_id="XYZ")
    with pytest.raises(PayloadError, match="old_key_tag 70000"):
        roll_key_entry(ZSK, "ZSK", old_key_tag=70000)
    with pytest.raises(PayloadError, match="not absolute"):
        delete_key_entry("example.com", 1)
    with pytest.raises(PayloadError, match="nonce is empty"):
        ping_entry("")
    with pytest.raises(PayloadError, match="at least one entry"):
        encode_payload([])


def test_roll_key_entry_drops_created_which_the_payload_does_not_carry() -> None:
    entry = roll_key_entry(ZSK, "ZSK", timing=KeyTiming(created=1, publish=2))
    assert entry.timing == KeyTiming(publish=2)
    assert parse_payload(encode_payload([entry]), now=NOW).entries == (entry,)


# --- secrecy ------------------------------------------------------------------------------------


def _secret_fragments() -> list[str]:
    pem = ZSK.to_pkcs8_pem()
    body = b"".join(pem.splitlines()[1:-1]).decode()
    b64 = base64.b64encode(pem).decode()
    raw = ZSK.to_bind_private().split("PrivateKey: ")[1].strip()
    return [body[16:], b64[60:100], raw]


@pytest.mark.parametrize(
    "entry",
    [
        roll(key_id="1"),
        roll(private_key=base64.b64encode(OTHER_ZSK.to_pkcs8_pem()).decode(), key_id="1"),
        roll(flags=257),
        roll(algorithm=13),
        roll(zone_name=roll()["private_key"]),
        roll(key_id=roll()["private_key"]),
        roll(public_key=roll()["private_key"]),
        roll(private_key=roll()["private_key"][:-4]),
        roll(comment=roll()["private_key"]),
        meta(roll(), nonce=roll()["private_key"]),
        meta(roll(), old_key_id=roll()["private_key"]),
    ],
)
def test_error_messages_never_contain_the_private_key(entry: dict[str, Any]) -> None:
    with pytest.raises(KrsError) as info:
        parse(entry)
    for fragment in _secret_fragments():
        assert fragment not in str(info.value)


def test_repr_of_a_parsed_payload_never_contains_the_private_key() -> None:
    payload = parse(roll())
    shown = repr(payload) + str(payload)
    assert "ZSK" in shown and str(ZSK.key_tag) in shown
    for fragment in _secret_fragments():
        assert fragment not in shown


# --- never anything but our errors --------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
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
                    "nonce",
                    "timing",
                    "old_key_id",
                    "publish",
                    "issued_at",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)
_FIELD_VALUES = {
    "operation": st.sampled_from(["roll_key", "delete_key", "ping", "x"]),
    "zone_name": st.sampled_from([ZONE, "example.com", "", ".", "a..b."]) | st.text(max_size=10),
    "key_id": st.sampled_from([str(ZSK.key_tag), "0", "65536", "x"]),
    "key_type": st.sampled_from(["ZSK", "KSK", "CSK", ""]),
    "algorithm": st.sampled_from([15, 13, 8, 7, 0]),
    "flags": st.sampled_from([256, 257, 0]),
}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_raises_only_krs_errors_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(KrsError):
        parse_payload(data, now=NOW)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON)
def test_parse_raises_only_krs_errors_on_arbitrary_json_values(value: Any) -> None:
    for candidate in (value, [value]):
        with contextlib.suppress(KrsError):
            parse_payload(json.dumps(candidate).encode(), now=NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([roll(), roll(KSK, "KSK"), delete(reason="r"), ping()]),
    st.dictionaries(st.sampled_from([*_FIELD_VALUES, "metadata", "public_key"]), _JSON, max_size=3),
    st.data(),
)
def test_parse_raises_only_krs_errors_on_mutated_valid_entries(
    entry: dict[str, Any], random_values: dict[str, Any], data: st.DataObject
) -> None:
    mutated = {**entry, **random_values}
    for name, strategy in _FIELD_VALUES.items():
        if data.draw(st.booleans()):
            mutated[name] = data.draw(strategy)
    with contextlib.suppress(KrsError):
        parse_payload(json.dumps([mutated]).encode(), now=NOW)


# --- cds (ours) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cds", ["publish", "delete"])
def test_cds_round_trips_on_a_ksk(cds: str) -> None:
    entry = roll_key_entry(KSK, "KSK", cds=cds)  # type: ignore[arg-type]
    assert json.loads(encode_payload([entry]))[0]["metadata"]["cds"] == cds
    (parsed,) = parse_payload(encode_payload([entry]), now=NOW).entries
    assert isinstance(parsed, RollKey) and parsed.cds == cds


def test_cds_absent_means_neither_and_is_not_written() -> None:
    entry = roll_key_entry(KSK, "KSK")
    assert "cds" not in json.loads(encode_payload([entry]))[0]["metadata"]
    (parsed,) = parse(roll(KSK, "KSK")).entries
    assert isinstance(parsed, RollKey) and parsed.cds is None


def test_refuses_cds_on_a_zsk() -> None:
    refused(PayloadError, "metadata 'cds' on a ZSK", meta(roll(), cds="publish"))
    with pytest.raises(PayloadError, match="on a ZSK"):
        roll_key_entry(ZSK, "ZSK", cds="publish")


def test_refuses_an_unknown_cds_value() -> None:
    refused(PayloadError, "neither 'publish' nor 'delete'", meta(roll(KSK, "KSK"), cds="yes"))
    refused(PayloadError, "metadata 'cds'", meta(roll(KSK, "KSK"), cds=True))


def test_refuses_one_zone_asking_for_cds_and_its_deletion() -> None:
    other = generate_key(ZONE, 13, 257)
    refused(
        PayloadError,
        "publishes its KSKs' CDS or the delete CDS, not both",
        meta(roll(KSK, "KSK"), cds="publish"),
        meta(roll(other, "KSK"), cds="delete"),
    )
