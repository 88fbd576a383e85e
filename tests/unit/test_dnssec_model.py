"""DNSSEC key model: BIND v1.3 and PKCS#8 round trips, key tags, mismatches, bad files."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

import dns.dnssec
import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.dnssec import (
    KeyTiming,
    bind_private_text,
    check_key_matches,
    generate_key,
    load_pkcs8_pem,
    parse_bind_private,
    read_bind_key_pair,
    write_bind_key_pair,
)
from krs_plugin.errors import KeyFileError, KeyMismatchError, KrsError, UnsupportedAlgorithmError

ZONE = dns.name.from_text("example.com.")
ALGORITHMS = [8, 13, 14, 15, 16]
TIMING = KeyTiming(created=1_700_000_000, publish=1_700_000_000, activate=1_700_003_600)


@pytest.fixture(scope="module")
def keys() -> dict[tuple[int, int], object]:
    return {(a, f): generate_key(ZONE, a, f, rsa_bits=2048) for a in ALGORITHMS for f in (256, 257)}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("flags", [256, 257])
def test_bind_private_text_round_trips_to_the_same_dnskey(algorithm, flags, keys) -> None:
    key = keys[(algorithm, flags)]
    parsed_alg, private, timing = parse_bind_private(bind_private_text(key, TIMING))
    assert parsed_alg == algorithm
    again = type(key)(ZONE, algorithm, flags, private)
    assert again.dnskey == key.dnskey
    assert again.key_tag == key.key_tag == dns.dnssec.key_id(key.dnskey)
    assert timing == TIMING


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pkcs8_round_trip_keeps_the_key(algorithm, keys) -> None:
    key = keys[(algorithm, 256)]
    loaded = load_pkcs8_pem(key.to_pkcs8_pem(), ZONE, algorithm, 256)
    assert loaded.dnskey == key.dnskey


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_written_key_files_read_back_with_modes(tmp_path: Path, algorithm, keys) -> None:
    key = keys[(algorithm, 257)]
    key_path, private_path = write_bind_key_pair(tmp_path, key, TIMING)
    assert key_path.name == f"Kexample.com.+{algorithm:03d}+{key.key_tag:05d}.key"
    assert os.stat(private_path).st_mode & 0o777 == 0o600
    assert os.stat(key_path).st_mode & 0o777 == 0o644
    loaded, timing = read_bind_key_pair(key_path)
    assert loaded.dnskey == key.dnskey and loaded.flags == 257
    assert timing == TIMING
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_refuses_private_file_that_belongs_to_another_key(tmp_path: Path, keys) -> None:
    key, other = keys[(13, 256)], keys[(13, 257)]
    key_path, private_path = write_bind_key_pair(tmp_path, key, TIMING)
    private_path.write_text(bind_private_text(other, TIMING))
    with pytest.raises(
        KeyMismatchError, match=rf"private key derives .* given has tag {key.key_tag}"
    ):
        read_bind_key_pair(key_path)


def test_check_key_matches_names_both_tags_and_announced_tag(keys) -> None:
    key, other = keys[(15, 256)], keys[(15, 257)]
    check_key_matches(key, key.dnskey, key.key_tag)
    with pytest.raises(KeyMismatchError, match=str(other.key_tag)):
        check_key_matches(key, other.dnskey)
    with pytest.raises(KeyMismatchError, match="announced"):
        check_key_matches(key, key.dnskey, (key.key_tag + 1) % 65536)


def test_refuses_key_type_that_does_not_fit_the_algorithm(keys) -> None:
    with pytest.raises(KeyFileError, match="cannot be used with algorithm 13"):
        load_pkcs8_pem(keys[(15, 256)].to_pkcs8_pem(), ZONE, 13, 256)


@pytest.mark.parametrize("algorithm", [1, 5, 7, 10, 12, 17, 253])
def test_unsupported_algorithms_are_named(algorithm) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match=rf"algorithm {algorithm}\b"):
        generate_key(ZONE, algorithm, 256)


def _ed25519_text(**replace: str) -> str:
    fields = {
        "Private-key-format": "v1.3",
        "Algorithm": "15 (ED25519)",
        "PrivateKey": base64.b64encode(bytes(range(32))).decode(),
    }
    fields.update(replace)
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v != "<drop>")


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        ({"Private-key-format": "<drop>"}, "Private-key-format"),
        ({"Private-key-format": "v2.0"}, "v2.0"),
        ({"Algorithm": "<drop>"}, "Algorithm"),
        ({"PrivateKey": "<drop>"}, "'PrivateKey' is missing"),
        ({"PrivateKey": "not*base64"}, "not base64"),
        ({"PrivateKey": base64.b64encode(bytes(31)).decode()}, "31 bytes"),
        ({"Created": "2026-01-01"}, "Created"),
        ({"Activate": "20261399000000"}, "Activate"),
    ],
)
def test_malformed_private_files_name_the_problem(replace, fragment) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        parse_bind_private(_ed25519_text(**replace), where="Ktest.private")


def test_ecdsa_scalar_written_without_leading_zeros_loads() -> None:
    # dnssec-keygen drops leading zero bytes of the ECDSA scalar (seen: 2 keys in 400).
    scalar = bytes([0]) + bytes(range(1, 32))
    text = (
        "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\n"
        f"PrivateKey: {base64.b64encode(scalar[1:]).decode()}\n"
    )
    algorithm, private, _ = parse_bind_private(text)
    assert algorithm == 13
    assert private.private_numbers().private_value == int.from_bytes(scalar, "big")


def test_unknown_bind_fields_are_tolerated() -> None:
    algorithm, _, _ = parse_bind_private(_ed25519_text() + "SyncPublish: 20260101000000\n")
    assert algorithm == 15


def test_repr_and_str_never_show_private_material(keys) -> None:
    key = keys[(15, 256)]
    raw = bind_private_text(key).split("PrivateKey: ")[1].strip()
    assert raw not in repr(key) and raw not in str(key)
    assert "private_key" not in repr(key)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_private_parser_raises_only_our_errors(text: str) -> None:
    with contextlib.suppress(KrsError):
        parse_bind_private(text)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["Private-key-format: v1.3\n", ""]),
    st.sampled_from(["Algorithm: 13\n", "Algorithm: 8\n", "Algorithm: 16\n", ""]),
    st.dictionaries(
        st.sampled_from(["PrivateKey", "Modulus", "PublicExponent", "Prime1", "Created"]),
        st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
    ),
)
def test_private_parser_on_near_valid_files_raises_only_our_errors(head, alg, fields) -> None:
    text = head + alg + "".join(f"{k}: {v}\n" for k, v in fields.items())
    with contextlib.suppress(KrsError):
        parse_bind_private(text)
