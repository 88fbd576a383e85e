"""BIND key files: v1.3 text round trips, timing fields, malformed files, atomic writes, modes."""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from pathlib import Path

import dns.dnssec
import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    generate_key,
    key_file_paths,
    parse_bind_private,
    parse_dnskey_text,
    read_bind_key_pair,
    write_bind_key_pair,
)
from krs_plugin.dnssec.timing import format_bind_time, human_time, parse_bind_time
from krs_plugin.errors import KeyFileError, KeyMismatchError, KrsError, UnsupportedAlgorithmError

ZONE = dns.name.from_text("example.com.")
ALGORITHMS = [8, 13, 14, 15, 16]
TIMING = KeyTiming(
    created=1_700_000_000,
    publish=1_700_000_000,
    activate=1_700_003_600,
    inactive=1_731_536_000,
    delete=1_732_140_800,
)

# Written by dnssec-keygen 9.18 (`-a 13 -L 300 -P/-A/-I/-D ...`), timing fields as BIND orders them.
KEYGEN_PRIVATE = """Private-key-format: v1.3
Algorithm: 13 (ECDSAP256SHA256)
PrivateKey: Ii0SieRnhc5h3F0wna8ncBKN/py0m5ufL0Y/yrW9D8w=
Created: 20261123000751
Publish: 20300101000000
Activate: 20300102000000
Revoke: 20261125000800
Inactive: 20300201000000
Delete: 20300301000000
SyncPublish: 20261124000800
"""
KEYGEN_PUBLIC = """; This is a zone-signing key, keyid 16146, for example.com.
; Created: 20261123000751 (Mon Nov 23 00:07:51 2026)
; Publish: 20300101000000 (Tue Jan  1 00:00:00 2030)
example.com. IN DNSKEY 256 3 13 yq2PdCfif2RND8XhJZI+qMiYLDVN87lM2lFYzTT4hEt5ifNPUlHMbiAp \
xvMYOk5xJuboCeRH/K0GCy0UH/69mg==
"""


@pytest.fixture(scope="module")
def keys() -> dict[tuple[int, int], DnssecKey]:
    return {(a, f): generate_key(ZONE, a, f) for a in ALGORITHMS for f in (256, 257)}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("flags", [256, 257])
def test_bind_private_text_round_trips_to_the_same_dnskey_and_key_tag(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int, flags: int
) -> None:
    key = keys[(algorithm, flags)]
    text = key.to_bind_private(TIMING)
    assert text.startswith(f"Private-key-format: v1.3\nAlgorithm: {algorithm} (")
    parsed_alg, private, timing = parse_bind_private(text)
    again = DnssecKey(ZONE, parsed_alg, flags, private)
    assert parsed_alg == algorithm
    assert again.dnskey == key.dnskey
    assert again.key_tag == key.key_tag == dns.dnssec.key_id(key.dnskey)
    assert timing == TIMING


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bind_public_text_round_trips_to_the_same_dnskey(
    keys: dict[tuple[int, int], DnssecKey], algorithm: int
) -> None:
    key = keys[(algorithm, 257)]
    owner, ttl, dnskey = parse_dnskey_text(key.to_bind_public(TIMING), where="test.key")
    assert (owner, ttl, dnskey) == (ZONE, 3600, key.dnskey)


def test_private_text_has_bind_field_order_and_fixed_length_scalars(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    rsa_names = [line.split(":")[0] for line in keys[(8, 256)].to_bind_private().splitlines()]
    assert rsa_names == [
        "Private-key-format",
        "Algorithm",
        "Modulus",
        "PublicExponent",
        "PrivateExponent",
        "Prime1",
        "Prime2",
        "Exponent1",
        "Exponent2",
        "Coefficient",
    ]
    for algorithm, size in ((13, 32), (14, 48), (15, 32), (16, 57)):
        text = keys[(algorithm, 256)].to_bind_private()
        (value,) = [ln[12:] for ln in text.splitlines() if ln.startswith("PrivateKey: ")]
        assert len(base64.b64decode(value)) == size


def test_timing_is_written_exactly_as_dnssec_keygen_writes_it(
    keys: dict[tuple[int, int], DnssecKey],
) -> None:
    key = keys[(13, 256)]
    timing = KeyTiming(created=1795392471, publish=1893456000, activate=1893542400)
    private_lines = key.to_bind_private(timing).splitlines()[-3:]
    assert private_lines == [
        "Created: 20261123000751",
        "Publish: 20300101000000",
        "Activate: 20300102000000",
    ]
    public = key.to_bind_public(timing).splitlines()
    assert public[0] == f"; This is a zone-signing key, keyid {key.key_tag}, for example.com."
    assert public[1:4] == [
        "; Created: 20261123000751 (Mon Nov 23 00:07:51 2026)",
        "; Publish: 20300101000000 (Tue Jan  1 00:00:00 2030)",
        "; Activate: 20300102000000 (Wed Jan  2 00:00:00 2030)",
    ]
    assert public[4].startswith("example.com. 3600 IN DNSKEY 256 3 13 ")
    assert [len(w) for w in public[4].split()[7:]] == [56, 32]  # dnssec-keygen's 56-char words


def test_bind_time_text_both_ways() -> None:
    assert format_bind_time(0) == "19700101000000"
    assert parse_bind_time("20300101000000", "f") == 1893456000
    assert human_time(1893456000) == "Tue Jan  1 00:00:00 2030"
    assert human_time(1795392471) == "Mon Nov 23 00:07:51 2026"


def test_reads_a_private_file_written_by_dnssec_keygen_with_all_its_fields() -> None:
    algorithm, private, timing = parse_bind_private(KEYGEN_PRIVATE, where="K.private")
    key = DnssecKey(ZONE, algorithm, 256, private)
    assert key.key_tag == 16146
    assert timing == KeyTiming(
        1795392471, 1893456000, 1893542400, 1896134400, 1898553600, sync_publish=1795478880
    )


def test_reads_a_key_file_written_by_dnssec_keygen_without_ttl() -> None:
    owner, ttl, dnskey = parse_dnskey_text(KEYGEN_PUBLIC, where="K.key")
    assert owner == ZONE and ttl == 3600 and dns.dnssec.key_id(dnskey) == 16146


def test_ecdsa_scalar_written_without_leading_zeros_loads() -> None:
    # dnssec-keygen drops leading zero bytes of the ECDSA scalar (1 key in 256 for P-256).
    scalar = bytes([0]) + bytes(range(1, 32))
    text = (
        "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\n"
        f"PrivateKey: {base64.b64encode(scalar[1:]).decode()}\n"
    )
    algorithm, private, _ = parse_bind_private(text)
    assert algorithm == 13
    assert private.private_numbers().private_value == int.from_bytes(scalar, "big")  # type: ignore[union-attr]


def test_reads_format_v1_2_without_timing(keys: dict[tuple[int, int], DnssecKey]) -> None:
    text = keys[(15, 256)].to_bind_private().replace("v1.3", "v1.2")
    assert parse_bind_private(text)[2] == KeyTiming()


def _ed25519_text(**replace: str) -> str:
    fields = {
        "Private-key-format": "v1.3",
        "Algorithm": "15 (ED25519)",
        "PrivateKey": base64.b64encode(bytes(range(32))).decode(),
        "Created": "20261123000751",
    }
    fields.update(replace)
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v != "<drop>")


def _rsa_text(keys: dict[tuple[int, int], DnssecKey], **replace: str) -> str:
    lines = []
    for line in keys[(8, 256)].to_bind_private().splitlines():
        name = line.split(":")[0]
        value = replace.get(name)
        if value == "<drop>":
            continue
        lines.append(line if value is None else f"{name}: {value}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        ({"Private-key-format": "<drop>"}, "'Private-key-format' is missing"),
        ({"Private-key-format": "v2.0"}, r"'Private-key-format' is 'v2.0'"),
        ({"Private-key-format": "v1.4"}, r"'Private-key-format' is 'v1.4'"),
        ({"Algorithm": "<drop>"}, "'Algorithm' is missing"),
        ({"Algorithm": "fifteen"}, "'Algorithm' is 'fifteen'"),
        ({"Algorithm": "15 (ECDSAP256SHA256)"}, "names 'ECDSAP256SHA256'"),
        ({"PrivateKey": "<drop>"}, "'PrivateKey' is missing"),
        ({"PrivateKey": ""}, "'PrivateKey' is empty"),
        ({"PrivateKey": "not*base64"}, "'PrivateKey' is not valid base64"),
        ({"PrivateKey": "AAA"}, "'PrivateKey' is not valid base64"),
        ({"PrivateKey": base64.b64encode(bytes(31)).decode()}, "31 bytes.*needs 32"),
        ({"PrivateKey": base64.b64encode(bytes(33)).decode()}, "33 bytes.*needs 32"),
        ({"Created": "2026-01-01"}, "'Created'.*YYYYMMDDHHMMSS"),
        ({"Activate": "20261399000000"}, "'Activate'.*not a valid date"),
        ({"Publish": "20260101000060"}, "'Publish'.*not a valid date"),
        ({"Inactive": "19691231235959"}, "'Inactive'.*before 1970"),
        ({"SyncPublish": "soon"}, "'SyncPublish'.*YYYYMMDDHHMMSS"),
        ({"Lifetime": "forever"}, "'Lifetime'.*not a number"),
    ],
)
def test_malformed_private_files_raise_key_file_error_naming_file_and_field(
    replace: dict[str, str], fragment: str
) -> None:
    with pytest.raises(KeyFileError, match=fragment) as info:
        parse_bind_private(_ed25519_text(**replace), where="Ktest.private")
    assert str(info.value).startswith("Ktest.private: ")


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        ({"Coefficient": "<drop>"}, "'Coefficient' is missing"),
        ({"Prime1": "AAAB"}, "do not form a valid RSA key"),
        ({"Modulus": base64.b64encode(bytes(513)).decode()}, "'Modulus' is longer than 512"),
    ],
)
def test_malformed_rsa_private_files_name_the_problem(
    keys: dict[tuple[int, int], DnssecKey], replace: dict[str, str], fragment: str
) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        parse_bind_private(_rsa_text(keys, **replace), where="Krsa.private")


def test_ecdsa_scalar_out_of_range_is_refused() -> None:
    text = _ed25519_text(
        Algorithm="13 (ECDSAP256SHA256)", PrivateKey=base64.b64encode(b"\xff" * 32).decode()
    )
    with pytest.raises(KeyFileError, match="not a valid ECDSAP256SHA256 private key"):
        parse_bind_private(text, where="K.private")


def test_repeated_field_and_line_without_colon_are_refused() -> None:
    with pytest.raises(KeyFileError, match=r"'Created' appears twice \(lines 4 and 5\)"):
        parse_bind_private(_ed25519_text() + "Created: 20261123000751\n", where="K.private")
    with pytest.raises(KeyFileError, match="line 5 is not 'Field: value'"):
        parse_bind_private(_ed25519_text() + "garbage\n", where="K.private")


@pytest.mark.parametrize("algorithm", [5, 7, 10, 12, 17])
def test_unsupported_algorithm_in_private_file_is_named(algorithm: int) -> None:
    with pytest.raises(UnsupportedAlgorithmError, match=rf"K.private: .*algorithm {algorithm} "):
        parse_bind_private(_ed25519_text(Algorithm=f"{algorithm}"), where="K.private")


def test_unknown_fields_and_settime_lines_are_tolerated() -> None:
    extra = "Engine: pkcs11\nFutureField: anything\nSYNC Publish: UNSET\n; comment\n\n"
    algorithm, _, timing = parse_bind_private(_ed25519_text() + extra)
    assert algorithm == 15 and timing == KeyTiming(created=1795392471)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no DNSKEY record"),
        ("; only a comment\n", "no DNSKEY record"),
        ("example.com IN DNSKEY 256 3 15 AAAA", "does not end with a dot"),
        ("example.com. IN DS 1 15 2 AAAA", "expected TTL, class IN or DNSKEY"),
        ("example.com. CH DNSKEY 256 3 15 AAAA", "expected TTL, class IN or DNSKEY"),
        ("example.com. IN DNSKEY 256 3", "malformed DNSKEY record"),
        ("example.com. IN DNSKEY 256 3 15 AAAA\nexample.com. IN DNSKEY 257 3 15 AAAA", "more than"),
        ("example.com. 3000000000 IN DNSKEY 256 3 15 AAAA", "TTL 3000000000"),
    ],
)
def test_malformed_key_files_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        parse_dnskey_text(text, where="Kx.key")


def test_dnskey_text_accepts_class_before_ttl_and_tdns_tabs() -> None:
    owner, ttl, _ = parse_dnskey_text(
        "example.com.\tIN\t300\tDNSKEY\t256 3 15 RKv+gealjmBudWGDN/L+tac3uErX0/XLh0CArvPV3rg=",
        where="x",
    )
    assert (owner, ttl) == (ZONE, 300)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_written_key_pair_reads_back_with_modes_0600_and_0644(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey], algorithm: int
) -> None:
    key = keys[(algorithm, 257)]
    key_path, private_path = write_bind_key_pair(tmp_path, key, TIMING)
    assert key_path == tmp_path / f"Kexample.com.+{algorithm:03d}+{key.key_tag:05d}.key"
    assert private_path == key_path.with_suffix(".private")
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o644
    for path in (key_path, private_path, key_path.with_suffix("")):
        loaded, timing = read_bind_key_pair(path)
        assert loaded == key and loaded.key_tag == key.key_tag and timing == TIMING
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([key_path.name, private_path.name])


def test_private_file_is_never_readable_by_others_even_under_a_loose_umask(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *a: object, **kw: object) -> int:
        if ".private" in os.fspath(path):
            created.append(mode)
        return real_open(path, flags, mode, *a, **kw)  # type: ignore[arg-type]

    old = os.umask(0)
    try:
        monkeypatch.setattr(os, "open", spy)
        _, private_path = write_bind_key_pair(tmp_path, keys[(15, 256)], TIMING)
    finally:
        os.umask(old)
    assert created and all(mode == 0o600 for mode in created)
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600


def test_rewriting_a_key_pair_replaces_it_atomically(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    key = keys[(13, 256)]
    write_bind_key_pair(tmp_path, key, KeyTiming(created=1, publish=1))
    write_bind_key_pair(tmp_path, key, TIMING)
    assert read_bind_key_pair(tmp_path / key.basename)[1] == TIMING
    assert len(list(tmp_path.iterdir())) == 2


def test_refuses_private_file_that_belongs_to_another_key(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    key, other = keys[(13, 256)], generate_key(ZONE, 13, 256)
    key_path, private_path = write_bind_key_pair(tmp_path, key, TIMING)
    private_path.write_text(other.to_bind_private(TIMING))
    with pytest.raises(KeyMismatchError) as info:
        read_bind_key_pair(key_path)
    message = str(info.value)
    assert str(private_path) in message
    assert f"tag {key.key_tag}" in message and f"tag {other.key_tag}" in message


def test_refuses_private_file_of_another_algorithm(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    key_path, private_path = write_bind_key_pair(tmp_path, keys[(13, 256)], TIMING)
    private_path.write_text(keys[(15, 256)].to_bind_private())
    with pytest.raises(KeyMismatchError, match=r"algorithm 15 key.*algorithm 13 DNSKEY"):
        read_bind_key_pair(key_path)


def test_refuses_key_files_renamed_to_another_key_tag(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    key = keys[(15, 256)]
    key_path, private_path = write_bind_key_pair(tmp_path, key, TIMING)
    wrong = (key.key_tag + 1) % 65536
    stem = tmp_path / f"Kexample.com.+015+{wrong:05d}"
    key_path.rename(f"{stem}.key")
    private_path.rename(f"{stem}.private")
    with pytest.raises(KeyMismatchError, match=rf"file name says algorithm 15 tag {wrong}"):
        read_bind_key_pair(stem)


def test_key_files_with_other_names_are_read(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    key = keys[(16, 257)]
    (tmp_path / "zsk.key").write_text(key.to_bind_public())
    (tmp_path / "zsk.private").write_text(key.to_bind_private())
    assert read_bind_key_pair(tmp_path / "zsk.key")[0].key_tag == key.key_tag


def test_missing_or_binary_files_are_key_file_errors(
    tmp_path: Path, keys: dict[tuple[int, int], DnssecKey]
) -> None:
    with pytest.raises(KeyFileError, match=r"Knone\.key: cannot read key file"):
        read_bind_key_pair(tmp_path / "Knone")
    key_path, _ = write_bind_key_pair(tmp_path, keys[(15, 256)])
    key_path.write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="not ASCII text"):
        read_bind_key_pair(key_path)


def test_key_file_paths_accepts_either_file_or_the_stem() -> None:
    expected = (Path("/k/Ka.+015+00001.key"), Path("/k/Ka.+015+00001.private"))
    for path in ("/k/Ka.+015+00001", "/k/Ka.+015+00001.key", "/k/Ka.+015+00001.private"):
        assert key_file_paths(path) == expected


@pytest.mark.parametrize("value", [-1, 253_402_300_800, True, 1.5])
def test_key_timing_refuses_values_that_are_not_unix_seconds(value: object) -> None:
    with pytest.raises(KeyFileError, match="publish"):
        KeyTiming(publish=value)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=600))
def test_private_parser_raises_only_krs_errors_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(KrsError):
        parse_bind_private(text)


_FIELD_NAMES = [
    "Private-key-format",
    "Algorithm",
    "PrivateKey",
    "Modulus",
    "PublicExponent",
    "PrivateExponent",
    "Prime1",
    "Prime2",
    "Exponent1",
    "Exponent2",
    "Coefficient",
    "Created",
    "Publish",
    "SyncPublish",
    "Lifetime",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_FIELD_NAMES),
            st.one_of(
                st.sampled_from(["v1.3", "v1.2", "8", "13 (ECDSAP256SHA256)", "15", "16 (ED448)"]),
                st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode()),
                st.from_regex(r"[0-9]{14}", fullmatch=True),
                st.text(max_size=20),
            ),
        ),
        max_size=14,
    )
)
def test_private_parser_raises_only_krs_errors_on_near_valid_files(
    fields: list[tuple[str, str]],
) -> None:
    text = "".join(f"{name}: {value}\n" for name, value in fields)
    with contextlib.suppress(KrsError):
        parse_bind_private(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_dnskey_parser_raises_only_krs_errors_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(KrsError):
        parse_dnskey_text(text, where="x")
