"""Key files: tdns's X25519 hex and P-256 JWK formats, file modes, and refusals."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    load_hpke_private,
    load_hpke_public,
    load_jose_key,
    read_key_text,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.crypto import jose as jose_impl
from krs_plugin.crypto.keys import b64url_decode, b64url_decode_view, b64url_encode
from krs_plugin.errors import KeyFileError

DATA = Path(__file__).resolve().parent.parent / "data" / "tdns-transport"

# RFC 7748 section 6.1 (Alice).
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def restore_umask():
    """Let a test change the umask; put the previous one back afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


# --- X25519 hex files ---------------------------------------------------------------------------


def test_loads_x25519_private_hex_with_comment_lines(tmp_path):
    path = tmp_path / "node.hpke.priv"
    path.write_text(
        f"# HPKE private key for cpt.axfr.net.\n# Public Key: {ALICE_PUBLIC}\n\n{ALICE_PRIVATE}\n"
    )
    key = load_hpke_private(path)
    assert key.private_hex() == ALICE_PRIVATE
    assert key.public_hex == ALICE_PUBLIC  # derived per RFC 7748


def test_loads_x25519_public_hex_and_base64(tmp_path):
    hex_file = tmp_path / "pub.hex"
    hex_file.write_text(f"# comment\n{ALICE_PUBLIC.upper()}\n")
    b64_file = tmp_path / "pub.b64"
    b64_file.write_text(base64.b64encode(bytes.fromhex(ALICE_PUBLIC)).decode() + "\n")
    assert load_hpke_public(hex_file).public_hex == ALICE_PUBLIC
    assert load_hpke_public(b64_file).public_hex == ALICE_PUBLIC
    assert load_hpke_public(hex_file).private is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("zz" * 32, "expected 64 hex characters"),
        (ALICE_PRIVATE[:-2], "expected 32 bytes (64 hex characters), got 31"),
        (ALICE_PRIVATE + "00", "expected 32 bytes (64 hex characters), got 33"),
        ("00" * 32, "the all-zero X25519 key is not a key"),
        ("# only a comment\n\n", "holds no key"),
    ],
)
def test_rejects_malformed_x25519_private_file_naming_it(tmp_path, content, problem):
    path = tmp_path / "bad.hpke.priv"
    path.write_text(content + "\n")
    with pytest.raises(KeyFileError) as info:
        load_hpke_private(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_rejects_malformed_x25519_public_file_naming_it(tmp_path):
    path = tmp_path / "bad.hpke.pub"
    path.write_text("abcdef\n")
    with pytest.raises(KeyFileError, match="got 3") as info:
        load_hpke_public(path)
    assert str(path) in str(info.value)


def test_rejects_missing_key_file_naming_it(tmp_path):
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="cannot read key file") as info:
        load_hpke_private(path)
    assert str(path) in str(info.value)


def test_read_key_text_drops_comments_and_blank_lines(tmp_path):
    path = tmp_path / "k"
    path.write_text("# a\n  # indented comment\n\nline1\nline2\n")
    assert read_key_text(path) == "line1\nline2"


# --- P-256 JWK files ----------------------------------------------------------------------------


def test_loads_tdns_jwk_with_use_enc_and_ecdh_alg():
    raw = json.loads((DATA / "a.pub.json").read_text())
    assert (raw["use"], raw["alg"]) == ("enc", "ECDH-ES")
    key = load_jose_key(DATA / "a.pub.json")
    assert key.private is None
    assert key.public_jwk == {k: raw[k] for k in ("kty", "crv", "x", "y")}


def test_tdns_enc_jwk_still_verifies_the_golden_vector_signature():
    # The KDC's signing key in the golden vector is a JWK marked "use":"enc","alg":"ECDH-ES".
    outer = base64.b64decode((DATA / "a-to-b.wire").read_bytes().strip())
    payload = jose_impl.jws_verify(outer, load_jose_key(DATA / "a.pub.json"))
    assert payload.count(b".") == 4  # a compact JWE


def test_loaded_enc_jwk_verifies_a_fresh_signature(tmp_path):
    signer = JoseKey.generate()
    path = tmp_path / "kdc.pub.json"
    write_jose_public(path, signer, use="enc")
    on_disk = json.loads(path.read_text())
    assert (on_disk["use"], on_disk["alg"]) == ("enc", "ECDH-ES")
    compact = jose_impl.jws_sign(b"payload", signer)
    assert jose_impl.jws_verify(compact, load_jose_key(path)) == b"payload"


def test_loads_private_jwk_with_comment_lines(tmp_path):
    key = load_jose_key(DATA / "b.priv.json")
    raw = json.loads((DATA / "b.priv.json").read_text())
    assert key.private_jwk()["d"] == raw["d"]
    path = tmp_path / "b.priv.json"
    path.write_text("# node b\n" + (DATA / "b.priv.json").read_text())
    assert load_jose_key(path).private_jwk() == key.private_jwk()


def _jwk_file(tmp_path: Path, obj) -> Path:
    path = tmp_path / "bad.jwk.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


GOOD_PUBLIC = json.loads((DATA / "a.pub.json").read_text())


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ({**GOOD_PUBLIC, "crv": "P-384"}, "expected an EC P-256 JWK, got kty='EC' crv='P-384'"),
        ({"kty": "OKP", "crv": "X25519", "x": GOOD_PUBLIC["x"]}, "expected an EC P-256 JWK"),
        ({**GOOD_PUBLIC, "x": GOOD_PUBLIC["x"] + "="}, "JWK member 'x' is not base64url"),
        ({**GOOD_PUBLIC, "y": "+/+/" + GOOD_PUBLIC["y"][4:]}, "JWK member 'y' is not base64url"),
        ({**GOOD_PUBLIC, "x": "A"}, "JWK member 'x' is not base64url"),
        ({**GOOD_PUBLIC, "x": "é" * 43}, "JWK member 'x' is not base64url"),
        ({**GOOD_PUBLIC, "x": b64url_encode(b"\x01" * 31)}, "'x' is 31 bytes, expected 32"),
        ({k: v for k, v in GOOD_PUBLIC.items() if k != "y"}, "'y' is missing or not a string"),
        ({**GOOD_PUBLIC, "y": GOOD_PUBLIC["x"]}, "not a valid P-256 key"),  # not on the curve
        ({**GOOD_PUBLIC, "d": b64url_encode(b"\x07" * 32)}, "not a valid P-256 key"),  # wrong d
        ([GOOD_PUBLIC], "a JWK must be a JSON object"),
        ("{not json", "not JWK JSON"),
    ],
)
def test_rejects_malformed_jwk_file_naming_it(tmp_path, obj, problem):
    path = _jwk_file(tmp_path, obj)
    with pytest.raises(KeyFileError) as info:
        load_jose_key(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_rejects_keys_on_other_curves():
    with pytest.raises(KeyFileError, match="must be on P-256"):
        JoseKey(private=ec.generate_private_key(ec.SECP384R1()))


# --- writing files ------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_written_private_files_are_0600_and_public_files_0644(tmp_path, restore_umask, mask):
    os.umask(mask)
    hpke, jose = HpkeKey.generate(), JoseKey.generate()
    files = {
        "h.priv": (write_hpke_private, hpke, 0o600),
        "h.pub": (write_hpke_public, hpke, 0o644),
        "j.priv.json": (write_jose_private, jose, 0o600),
        "j.pub.json": (write_jose_public, jose, 0o644),
    }
    for name, (write, key, _) in files.items():
        write(tmp_path / name, key)
    for name, (_, _, expected) in files.items():
        assert mode_of(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no temp files left


def test_private_x25519_file_round_trips(tmp_path):
    key = HpkeKey.generate()
    path = tmp_path / "node.hpke.priv"
    write_hpke_private(path, key, comment="node cpt.axfr.net.\nmade by a test")
    text = path.read_text()
    assert text.startswith("# node cpt.axfr.net.\n# made by a test\n")
    assert f"# Public Key: {key.public_hex}\n" in text
    assert text.endswith(key.private_hex() + "\n")
    loaded = load_hpke_private(path)
    assert loaded.private_hex() == key.private_hex()
    assert loaded.public_hex == key.public_hex


def test_public_x25519_file_round_trips(tmp_path):
    key = HpkeKey.generate()
    write_hpke_public(tmp_path / "pub", key)
    loaded = load_hpke_public(tmp_path / "pub")
    assert loaded.public_hex == key.public_hex
    assert loaded.private is None


@pytest.mark.parametrize(("use", "alg"), [("enc", "ECDH-ES"), ("sig", "ES256")])
def test_private_jwk_file_round_trips_with_tdns_hints(tmp_path, use, alg):
    key = JoseKey.generate()
    path = tmp_path / "k.json"
    write_jose_private(path, key, use=use, comment="kdc signing key")
    on_disk = json.loads(read_key_text(path))
    assert (on_disk["use"], on_disk["alg"], on_disk["kty"], on_disk["crv"]) == (
        use,
        alg,
        "EC",
        "P-256",
    )
    loaded = load_jose_key(path)
    assert loaded.private_jwk() == key.private_jwk()
    assert loaded.thumbprint == key.thumbprint


def test_overwriting_a_key_file_replaces_it_atomically(tmp_path):
    path = tmp_path / "k"
    first, second = HpkeKey.generate(), HpkeKey.generate()
    write_hpke_private(path, first)
    write_hpke_private(path, second)
    assert load_hpke_private(path).private_hex() == second.private_hex()
    assert mode_of(path) == 0o600


def test_write_into_missing_directory_is_a_key_file_error(tmp_path):
    with pytest.raises(KeyFileError, match="cannot create file"):
        write_hpke_private(tmp_path / "nope" / "k", HpkeKey.generate())


# --- no private material in reprs ---------------------------------------------------------------


def test_repr_of_x25519_key_shows_no_private_material():
    key = HpkeKey.from_private_hex(ALICE_PRIVATE)
    for text in (repr(key), str(key)):
        assert ALICE_PRIVATE not in text
        assert ALICE_PRIVATE[:16] not in text
        assert "private" in text
        assert key.fingerprint in text
    assert repr(key.public_only()) == f"HpkeKey(public, {key.fingerprint})"


def test_repr_of_p256_key_shows_no_private_material():
    key = JoseKey.generate()
    d = key.private_jwk()["d"]
    d_int = str(key.private.private_numbers().private_value)
    for text in (repr(key), str(key)):
        assert d not in text
        assert d[:12] not in text
        assert d_int not in text
        assert b64url_decode(d).hex()[:16] not in text
    assert repr(key) == f"JoseKey(private, {key.fingerprint})"


def test_thumbprint_is_rfc7638():
    # RFC 7638 section 3.1 computes it over the required members in lexicographic order.
    key = load_jose_key(DATA / "a.pub.json")
    jwk = key.public_jwk
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
    ).encode()
    assert key.thumbprint == b64url_encode(hashlib.sha256(canonical).digest())


@pytest.mark.parametrize("size", [0, 1, 2, 3, 786431, 786432, 786433, 2_000_001])
def test_sliced_base64url_decoding_matches_the_plain_one(size: int) -> None:
    # 786432 bytes encode to exactly one 1 MiB slice of base64url text.
    data = hashlib.shake_256(b"payload").digest(size)
    text = b64url_encode(data).encode()
    assert b64url_decode_view(memoryview(text)) == b64url_decode(text) == data


@pytest.mark.parametrize("text", [b"ab+d", b"ab/d", b"abc=", b"a", b"ab!d"])
def test_sliced_base64url_decoding_refuses_what_is_not_unpadded_base64url(text: bytes) -> None:
    with pytest.raises((ValueError, binascii.Error)):
        b64url_decode_view(memoryview(text))


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"jwk"', '{"kty": "RSA"}'])
def test_jwk_text_that_is_no_p256_jwk_is_a_key_file_error_naming_where(text: str) -> None:
    """Stored JWK text (kdc.db, krs.db) that went bad is named, not a JSON traceback."""
    with pytest.raises(KeyFileError, match=r"^krs\.db kdc_trust abc: "):
        JoseKey.from_jwk_text(text, "krs.db kdc_trust abc")


def test_jwk_text_round_trips() -> None:
    key = JoseKey.generate()
    assert JoseKey.from_jwk_text(json.dumps(key.public_jwk)).thumbprint == key.thumbprint
