"""DNSSEC key model: generation, PKCS#8, DNSKEY and key tags, type checks, repr hygiene."""

from __future__ import annotations

import base64

import dns.dnssec
import dns.name
import dns.rdata
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa, x25519
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    bind_key_stem,
    check_key_matches,
    generate_key,
    load_pkcs8_pem,
)
from krs_plugin.errors import KeyFileError, KeyMismatchError, UnsupportedAlgorithmError

ZONE = dns.name.from_text("example.com.")
ALGORITHMS = [8, 13, 14, 15, 16]


@pytest.fixture(scope="module")
def keys() -> dict[tuple[int, int], DnssecKey]:
    return {(a, f): generate_key(ZONE, a, f) for a in ALGORITHMS for f in (256, 257)}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("flags", [256, 257])
def test_generated_key_has_the_dnskey_and_key_tag_dnspython_computes(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int, flags: int
) -> None:
    key = keys[(algorithm, flags)]
    expected = dns.dnssec.make_dnskey(key.public_key, algorithm, flags=flags)
    assert key.dnskey == expected
    assert key.dnskey.flags == flags and int(key.dnskey.algorithm) == algorithm
    assert key.key_tag == dns.dnssec.key_id(expected)
    assert key.basename == f"Kexample.com.+{algorithm:03d}+{key.key_tag:05d}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("flags", [256, 257])
def test_pkcs8_round_trip_keeps_dnskey_and_key_tag(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int, flags: int
) -> None:
    key = keys[(algorithm, flags)]
    pem = key.to_pkcs8_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pem.endswith(b"-----END PRIVATE KEY-----\n")
    loaded = load_pkcs8_pem(pem, "example.com.", algorithm, flags, ttl=300)
    assert loaded.dnskey == key.dnskey
    assert loaded.key_tag == key.key_tag
    assert loaded.ttl == 300


def test_generated_rsa_key_has_the_requested_size() -> None:
    key = generate_key(ZONE, 8, 256, rsa_bits=1024)
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 1024


@pytest.mark.parametrize("bits", [512, 8192])
def test_refuses_rsa_sizes_dnssec_servers_do_not_take(bits: int) -> None:
    with pytest.raises(KeyFileError, match=rf"{bits} bits.*1024\.\.4096"):
        generate_key(ZONE, 8, 256, rsa_bits=bits)


def test_loads_pkcs8_without_trailing_newline_and_with_crlf(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    key = keys[(15, 256)]
    pem = key.to_pkcs8_pem()
    assert load_pkcs8_pem(pem.rstrip(b"\n"), ZONE, 15, 256).key_tag == key.key_tag
    assert load_pkcs8_pem(pem.replace(b"\n", b"\r\n"), ZONE, 15, 256).key_tag == key.key_tag


@pytest.mark.parametrize(
    ("algorithm", "other"),
    [(13, 15), (15, 13), (14, 13), (13, 14), (8, 16), (16, 15), (15, 8)],
)
def test_refuses_a_pkcs8_key_of_the_wrong_type_for_the_algorithm(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int, other: int
) -> None:
    pem = keys[(other, 256)].to_pkcs8_pem()
    with pytest.raises(KeyFileError, match=rf"cannot be used with algorithm {algorithm} "):
        load_pkcs8_pem(pem, ZONE, algorithm, 256)


@pytest.mark.parametrize(
    "private",
    [x25519.X25519PrivateKey.generate(), dsa.generate_private_key(key_size=1024)],
    ids=["x25519", "dsa"],
)
def test_refuses_pkcs8_keys_that_sign_no_dnssec_algorithm(private: object) -> None:
    pem = private.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="not a DNSSEC signing key"):
        load_pkcs8_pem(pem, ZONE, 15, 256)


def test_refuses_traditional_pem_formats(keys: dict[tuple[int, int], DnssecKey]) -> None:
    for algorithm, label in ((8, "RSA PRIVATE KEY"), (13, "EC PRIVATE KEY")):
        pem = keys[(algorithm, 256)].private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        with pytest.raises(KeyFileError, match=f"PEM block is '{label}'.*PKCS#8"):
            load_pkcs8_pem(pem, ZONE, algorithm, 256)


def test_refuses_pkcs1_der_relabelled_as_pkcs8(keys: dict[tuple[int, int], DnssecKey]) -> None:
    der = keys[(8, 256)].private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    body = base64.encodebytes(der)
    pem = b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"
    with pytest.raises(KeyFileError, match="not a PKCS#8 PrivateKeyInfo"):
        load_pkcs8_pem(pem, ZONE, 8, 256)


def test_refuses_encrypted_pkcs8(keys: dict[tuple[int, int], DnssecKey]) -> None:
    pem = keys[(15, 256)].private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFileError, match="ENCRYPTED PRIVATE KEY"):
        load_pkcs8_pem(pem, ZONE, 15, 256)


@pytest.mark.parametrize(
    ("pem", "fragment"),
    [
        (b"", "no '-----BEGIN' line"),
        (b"hello", "no '-----BEGIN' line"),
        (b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "malformed PKCS#8"),
        (b"-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n", "not valid base64"),
        (b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n", "PrivateKeyInfo"),
        (
            b"-----BEGIN PRIVATE KEY-----\nMAUCAQAwAA==\n-----END PRIVATE KEY-----\n",
            "no usable private key",
        ),
    ],
)
def test_refuses_malformed_pem_naming_the_problem(pem: bytes, fragment: str) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        load_pkcs8_pem(pem, ZONE, 15, 256, where="payload entry 3")


def test_refuses_two_pem_blocks(keys: dict[tuple[int, int], DnssecKey]) -> None:
    pem = keys[(15, 256)].to_pkcs8_pem()
    with pytest.raises(KeyFileError, match="one 'PRIVATE KEY' block"):
        load_pkcs8_pem(pem + pem, ZONE, 15, 256)


@pytest.mark.parametrize("algorithm", [1, 3, 5, 6, 7, 10, 12, 17, 253, 255])
def test_unsupported_algorithms_are_refused_naming_the_number(algorithm: int) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match=rf"algorithm {algorithm} is not supported"):
        generate_key(ZONE, algorithm, 256)
    with pytest.raises(UnsupportedAlgorithmError, match=rf"algorithm {algorithm} is not supported"):
        load_pkcs8_pem(b"", ZONE, algorithm, 256)


@pytest.mark.parametrize("flags", [0, 1, 255, 258, 385])
def test_refuses_flags_other_than_zsk_and_ksk(flags: int) -> None:
    with pytest.raises(KeyFileError, match=rf"flags {flags} are neither 256"):
        generate_key(ZONE, 15, flags)


def test_refuses_relative_zone_and_bad_ttl(keys: dict[tuple[int, int], DnssecKey]) -> None:
    private = keys[(15, 256)].private_key
    with pytest.raises(KeyFileError, match="not an absolute domain name"):
        DnssecKey(dns.name.from_text("example", origin=None), 15, 256, private)
    with pytest.raises(KeyFileError, match="TTL -1"):
        DnssecKey(ZONE, 15, 256, private, ttl=-1)


def test_check_key_matches_accepts_the_matching_dnskey_and_tag(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    key = keys[(13, 256)]
    same = dns.rdata.from_text("IN", "DNSKEY", key.dnskey.to_text())
    assert isinstance(same, DNSKEY) and same is not key.dnskey
    check_key_matches(key, same, key.key_tag)  # no exception: the pair is consistent


def test_check_key_matches_refuses_another_keys_dnskey_naming_zone_and_both_tags(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    key, other = keys[(15, 256)], generate_key(ZONE, 15, 256)
    with pytest.raises(KeyMismatchError) as info:
        check_key_matches(key, other.dnskey)
    message = str(info.value)
    assert "example.com." in message
    assert f"tag {key.key_tag}" in message and f"tag {other.key_tag}" in message


def test_check_key_matches_refuses_same_key_with_other_flags(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    zsk = keys[(15, 256)]
    as_ksk = DnssecKey(ZONE, 15, 257, zsk.private_key)
    with pytest.raises(KeyMismatchError, match="flags 257"):
        check_key_matches(zsk, as_ksk.dnskey)


def test_check_key_matches_refuses_a_wrong_expected_tag(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    key = keys[(14, 257)]
    wrong = (key.key_tag + 1) % 65536
    with pytest.raises(KeyMismatchError, match=rf"key tag {wrong} was expected.*{key.key_tag}"):
        check_key_matches(key, key.dnskey, wrong)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repr_and_str_never_show_private_material(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int
) -> None:
    key = keys[(algorithm, 257)]
    shown = repr(key) + str(key) + repr(KeyTiming()) + f"{key}"
    assert "private_key" not in repr(key)
    pem_body = b"".join(key.to_pkcs8_pem().splitlines()[1:-1]).decode()
    for line in key.to_bind_private().splitlines()[2:]:
        value = line.split(": ", 1)[1]
        if value != "AQAB":  # the RSA public exponent is not secret
            assert value not in shown
    assert pem_body[20:60] not in shown
    assert str(key) == f"KSK example.com. algorithm {algorithm} tag {key.key_tag}"


def test_keys_compare_by_public_identity(keys: dict[tuple[int, int], DnssecKey]) -> None:
    key = keys[(15, 256)]
    again = load_pkcs8_pem(key.to_pkcs8_pem(), "EXAMPLE.com.", 15, 256)
    assert again == key
    assert again != keys[(15, 257)]


@pytest.mark.parametrize(
    ("zone", "stem"),
    [
        ("example.com.", "Kexample.com.+013+01234"),
        ("Example.COM.", "Kexample.com.+013+01234"),
        (".", "K.+013+01234"),
        ("a_b\\/c.example.", "Ka_b%2Fc.example.+013+01234"),
        ("x\\$y.example.", "Kx%24y.example.+013+01234"),
        ("a\\.b.example.", "Ka%2Eb.example.+013+01234"),
    ],
)
def test_file_stem_is_written_as_bind_writes_it(zone: str, stem: str) -> None:
    # As dns_name_tofilenametext: lower case, trailing dot kept, other bytes as %XX.
    assert bind_key_stem(dns.name.from_text(zone), 13, 1234) == stem


@pytest.mark.parametrize("algorithm", [8, 13, 15, 16])
def test_key_keeps_only_pkcs8_der_and_loads_the_same_private_key(algorithm: int) -> None:
    # 20,000 loaded OpenSSL key objects cost about 40 MB; the DER costs a few hundred bytes each.
    key = generate_key(ZONE, algorithm, 256)
    assert isinstance(key.key_material, bytes)
    again = DnssecKey(ZONE, algorithm, 256, key.key_material)
    assert again.dnskey == key.dnskey
    assert key.private_key.public_key() == again.private_key.public_key()
