"""The signed, sealed envelope T = base64(JWS_ES256(C)) of docs/protocol.md section 4.

Interoperability is checked against code we did not write: tdns's Go output (the golden vector),
joserfc for JWS/JWE, and cryptography's own RFC 9180 HPKE.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwe as rfc_jwe
from joserfc import jws as rfc_jws
from joserfc.jwk import ECKey, OctKey

from krs_plugin.crypto import HpkeKey, JoseKey, load_jose_key, open_envelope, seal_envelope
from krs_plugin.crypto import jose as jose_impl
from krs_plugin.crypto.keys import b64url_decode, b64url_encode
from krs_plugin.errors import (
    DecryptionError,
    KrsError,
    SignatureError,
    UnsupportedAlgorithmError,
    WireError,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "tdns-transport"
SHARED = Path("/work/shared/testvectors/tdns-transport")
GOLDEN_CLEARTEXT = b'{"MessageType":"ping","MyIdentity":"a.example.","nonce":"n-1"}'
TDNS_JWS_HEADER = {"alg": "ES256", "cty": "application/octet-stream", "typ": "JWS"}
TDNS_JWE_HEADER = {
    "typ": "tdns-distribution",
    "cty": "application/octet-stream",
    "crypto_backend": "jose",
    "recipients_count": 1,
    "peer_id": "node.example.",
}
HPKE_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)

KDC = JoseKey.generate()
OTHER_KDC = JoseKey.generate()
NODE_JOSE = JoseKey.generate()
OTHER_JOSE = JoseKey.generate()
NODE_HPKE = HpkeKey.generate()
OTHER_HPKE = HpkeKey.generate()
NODE_KEYS = {"jose": NODE_JOSE, "hpke": NODE_HPKE}
OTHER_KEYS = {"jose": OTHER_JOSE, "hpke": OTHER_HPKE}
BACKENDS = ["jose", "hpke"]


def golden_transport() -> bytes:
    # The file holds T followed by a newline; T itself is the bare base64 string.
    return (DATA / "a-to-b.wire").read_bytes().rstrip(b"\n")


def seal(plaintext: bytes, backend: str, *, signer: JoseKey | None = KDC, **kw) -> bytes:
    recipient = NODE_KEYS[backend].public_only()
    return seal_envelope(plaintext, backend=backend, recipient=recipient, signer=signer, **kw)


def open_(transport: bytes, backend: str, **kw):
    kw.setdefault("recipient", NODE_KEYS[backend])
    kw.setdefault("verifier", KDC.public_only())
    return open_envelope(transport, backend=backend, **kw)


def jws_parts(transport: bytes) -> list[str]:
    return base64.b64decode(transport).decode("ascii").split(".")


def transport_of(compact: str | bytes) -> bytes:
    return base64.b64encode(compact.encode() if isinstance(compact, str) else compact)


def rfc_key(key: JoseKey, *, private: bool = False) -> ECKey:
    return ECKey.import_key(key.private_jwk() if private else key.public_jwk)


def rfc_jwe_registry(*algorithms: str) -> rfc_jwe.JWERegistry:
    # tdns puts private headers (crypto_backend, peer_id, ...) into the JWE protected header.
    return rfc_jwe.JWERegistry(algorithms=list(algorithms), strict_check_header=False)


def rfc_sign(payload: bytes, header=None, key: JoseKey = KDC) -> str:
    return rfc_jws.serialize_compact(
        header or TDNS_JWS_HEADER, payload, rfc_key(key, private=True), algorithms=["ES256"]
    )


def hand_made_jws(header: dict | bytes, payload: bytes, signature: bytes = b"\x00" * 64) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return ".".join(b64url_encode(part) for part in (raw, payload, signature)).encode()


# --- golden vector from tdns --------------------------------------------------------------------


def test_golden_vector_copy_is_identical_to_the_shared_one():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    for name in ("a-to-b.wire", "a.pub.json", "b.priv.json"):
        assert (DATA / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_opens_the_tdns_golden_vector():
    opened = open_envelope(
        golden_transport(),
        backend="jose",
        recipient=load_jose_key(DATA / "b.priv.json"),
        verifier=load_jose_key(DATA / "a.pub.json"),
    )
    assert opened.plaintext == GOLDEN_CLEARTEXT
    assert opened.signed is True
    assert opened.backend == "jose"
    assert opened.headers["peer_id"] == "b.example."
    assert (opened.headers["alg"], opened.headers["enc"]) == ("ECDH-ES", "A256GCM")
    assert opened.headers["typ"] == "tdns-distribution"
    assert opened.headers["crypto_backend"] == "jose"


def test_golden_vector_jws_header_is_the_one_we_write():
    header = b64url_decode(jws_parts(golden_transport())[0])
    assert header == b'{"alg":"ES256","cty":"application/octet-stream","typ":"JWS"}'
    assert header == jose_impl.JWS_HEADER


def test_golden_vector_refused_with_another_kdc_key():
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(
            golden_transport(),
            backend="jose",
            recipient=load_jose_key(DATA / "b.priv.json"),
            verifier=OTHER_KDC,
        )


def test_golden_vector_also_opens_with_joserfc():
    # Sanity check of the independent implementation used below.
    outer = base64.b64decode(golden_transport())
    a_pub = ECKey.import_key(load_jose_key(DATA / "a.pub.json").public_jwk)
    inner = rfc_jws.deserialize_compact(outer, a_pub, algorithms=["ES256"]).payload
    b_priv = ECKey.import_key(load_jose_key(DATA / "b.priv.json").private_jwk())
    opened = rfc_jwe.decrypt_compact(inner, b_priv, registry=rfc_jwe_registry("ECDH-ES", "A256GCM"))
    assert opened.plaintext == GOLDEN_CLEARTEXT


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [1, 62, 1000, 60000, 200_000])
def test_round_trip(backend, size):
    plaintext = hashlib.shake_256(b"cleartext").digest(size)
    transport = seal(plaintext, backend)
    assert transport.isascii()
    base64.b64decode(transport, validate=True)  # T is standard, padded base64
    opened = open_(transport, backend)
    assert opened.plaintext == plaintext
    assert opened.signed is True
    assert opened.backend == backend


def test_jose_headers_travel_in_the_jwe_protected_header():
    transport = seal(b"[]", "jose", headers={"peer_id": "b.example.", "distribution_id": "abcd"})
    headers = open_(transport, "jose").headers
    assert headers["peer_id"] == "b.example."
    assert headers["distribution_id"] == "abcd"
    for key, value in {**TDNS_JWE_HEADER, "peer_id": "b.example."}.items():
        assert headers[key] == value


def test_hpke_envelope_has_no_headers():
    assert open_(seal(b"[]", "hpke"), "hpke").headers == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_jws_protected_header_is_exactly_tdns(backend):
    header = b64url_decode(jws_parts(seal(b"[]", backend))[0])
    assert header == b'{"alg":"ES256","cty":"application/octet-stream","typ":"JWS"}'


def test_opened_envelope_repr_hides_the_cleartext():
    opened = open_(seal(b"secret-key-material", "hpke"), "hpke")
    assert "secret-key-material" not in repr(opened)


# --- interop: joserfc ---------------------------------------------------------------------------


def test_joserfc_verifies_our_jws_and_decrypts_our_jwe():
    plaintext = b'[{"operation":"ping"}]'
    transport = seal(plaintext, "jose", headers={"peer_id": "node.example."})
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(transport), rfc_key(KDC), algorithms=["ES256"]
    )
    assert signed.protected == TDNS_JWS_HEADER
    opened = rfc_jwe.decrypt_compact(
        signed.payload,
        rfc_key(NODE_JOSE, private=True),
        registry=rfc_jwe_registry("ECDH-ES", "A256GCM"),
    )
    assert opened.plaintext == plaintext
    assert opened.protected["alg"] == "ECDH-ES"
    assert opened.protected["enc"] == "A256GCM"
    assert opened.protected["peer_id"] == "node.example."


def test_joserfc_rejects_our_jws_under_another_key():
    transport = seal(b"[]", "jose")
    with pytest.raises(Exception, match="signature"):
        rfc_jws.deserialize_compact(
            base64.b64decode(transport), rfc_key(OTHER_KDC), algorithms=["ES256"]
        )


@pytest.mark.parametrize("key_alg", ["ECDH-ES", "ECDH-ES+A256KW"])
def test_opens_jws_of_jwe_built_entirely_by_joserfc(key_alg):
    plaintext = b'[{"operation":"ping","metadata":{"nonce":"n-2"}}]'
    inner = rfc_jwe.encrypt_compact(
        {**TDNS_JWE_HEADER, "alg": key_alg, "enc": "A256GCM"},
        plaintext,
        rfc_key(NODE_JOSE),
        registry=rfc_jwe_registry(key_alg, "A256GCM"),
    )
    transport = transport_of(rfc_sign(inner.encode()))
    opened = open_(transport, "jose")
    assert opened.plaintext == plaintext
    assert opened.signed is True
    assert opened.headers["alg"] == key_alg
    assert opened.headers["peer_id"] == "node.example."


# --- interop: cryptography's HPKE ---------------------------------------------------------------


def test_cryptography_hpke_opens_our_ciphertext():
    plaintext = b'[{"operation":"roll_key"}]' * 50
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal(plaintext, "hpke")), rfc_key(KDC), algorithms=["ES256"]
    )
    ciphertext = signed.payload
    assert len(ciphertext) == 32 + len(plaintext) + 16  # enc || ct || tag, nothing else
    assert HPKE_SUITE.decrypt(ciphertext, NODE_HPKE.private) == plaintext


def test_opens_cryptography_hpke_ciphertext_in_a_joserfc_jws():
    plaintext = b'[{"operation":"delete_key"}]'
    ciphertext = HPKE_SUITE.encrypt(plaintext, NODE_HPKE.public)
    opened = open_(transport_of(rfc_sign(ciphertext)), "hpke")
    assert opened.plaintext == plaintext
    assert opened.signed is True


def test_cryptography_hpke_cannot_open_ciphertext_for_another_node():
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal(b"x", "hpke")), rfc_key(KDC), algorithms=["ES256"]
    )
    with pytest.raises(Exception):  # noqa: B017 - any failure of the independent implementation
        HPKE_SUITE.decrypt(signed.payload, OTHER_HPKE.private)


# --- signature refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bit", [0, 255, 511])
def test_rejects_bit_flip_in_signature(backend, bit):
    header, payload, signature = jws_parts(seal(b"[]", backend))
    raw = bytearray(b64url_decode(signature))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = transport_of(f"{header}.{payload}.{b64url_encode(bytes(raw))}")
    with pytest.raises(SignatureError, match="signature does not verify with the KDC key"):
        open_(tampered, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_distribution_signed_by_another_key(backend):
    transport = seal(b"[]", backend, signer=OTHER_KDC)
    with pytest.raises(SignatureError, match="signed by another key") as info:
        open_(transport, backend)
    assert KDC.thumbprint in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_payload_swapped_under_a_valid_signature(backend):
    header, _, signature = jws_parts(seal(b"[1]", backend))
    _, payload, _ = jws_parts(seal(b"[2]", backend))
    with pytest.raises(SignatureError, match="does not verify"):
        open_(transport_of(f"{header}.{payload}.{signature}"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refuses_unsigned_envelope_by_default(backend):
    transport = seal(b"[]", backend, signer=None)
    with pytest.raises(SignatureError, match=r"not signed by the KDC .*allow_unsigned"):
        open_(transport, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_unsigned_envelope_when_allowed(backend):
    transport = seal(b"[7]", backend, signer=None)
    opened = open_(transport, backend, verifier=None, allow_unsigned=True)
    assert opened.plaintext == b"[7]"
    assert opened.signed is False


def test_signed_envelope_is_still_verified_when_unsigned_is_allowed():
    transport = seal(b"[]", "hpke", signer=OTHER_KDC)
    with pytest.raises(SignatureError, match="does not verify"):
        open_(transport, "hpke", allow_unsigned=True)


@pytest.mark.parametrize("allow_unsigned", [False, True])
def test_rejects_signed_envelope_without_a_configured_verifier(allow_unsigned):
    with pytest.raises(SignatureError, match="no KDC verification key is configured"):
        open_(seal(b"[]", "jose"), "jose", verifier=None, allow_unsigned=allow_unsigned)


@pytest.mark.parametrize(
    ("header", "alg"),
    [
        ({"alg": "HS256", "typ": "JWS"}, "'HS256'"),
        ({"alg": "none"}, "'none'"),
        ({"alg": "ES384"}, "'ES384'"),
        ({"alg": "EdDSA"}, "'EdDSA'"),
        ({"alg": None}, "None"),
    ],
)
def test_rejects_jws_algorithms_other_than_es256(header, alg):
    signature = b"" if header["alg"] == "none" else b"\x01" * 32
    transport = transport_of(hand_made_jws(header, b"payload", signature))
    with pytest.raises(UnsupportedAlgorithmError, match=f"JWS algorithm {alg} is not supported"):
        open_(transport, "jose")


def test_rejects_hs256_jws_keyed_with_the_public_key():
    # The classic algorithm-confusion attack: HMAC keyed with the verifier's public key.
    inner = seal(b"[]", "jose", signer=None)
    key = OctKey.import_key(json.dumps(KDC.public_jwk).encode())
    compact = rfc_jws.serialize_compact(
        {"alg": "HS256"}, base64.b64decode(inner), key, algorithms=["HS256"]
    )
    with pytest.raises(UnsupportedAlgorithmError, match="'HS256'"):
        open_(transport_of(compact), "jose")


def test_rejects_jws_with_critical_extensions():
    header = {**TDNS_JWS_HEADER, "crit": ["exp"], "exp": 1}
    with pytest.raises(UnsupportedAlgorithmError, match="critical extensions"):
        open_(transport_of(hand_made_jws(header, b"x")), "jose")


def test_rejects_es256_signature_of_wrong_length():
    transport = transport_of(hand_made_jws(TDNS_JWS_HEADER, b"x", b"\x01" * 63))
    with pytest.raises(SignatureError, match="ES256 signature is 63 bytes, expected 64"):
        open_(transport, "jose")


def test_rejects_jws_with_malformed_payload_encoding():
    # The signature is checked before the payload is decoded: a malformed payload under a bad
    # signature is "altered"; one the KDC really signed is malformed.
    header = b64url_encode(json.dumps(TDNS_JWS_HEADER).encode())
    signing_input = f"{header}.not+base64url"
    transport = transport_of(f"{signing_input}.{b64url_encode(b'1' * 64)}")
    with pytest.raises(SignatureError, match="does not verify"):
        open_(transport, "jose")
    r, s = decode_dss_signature(KDC.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    signature = b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(WireError, match="malformed compact JWS payload"):
        open_(transport_of(f"{signing_input}.{signature}"), "jose")


@pytest.mark.parametrize(
    "header", [b'{"alg":"ES256"', b"not json", b"[1,2]", b'"ES256"', b"\xff\xfe"]
)
def test_jws_with_malformed_header_is_not_taken_as_signed(header):
    transport = transport_of(hand_made_jws(header, b"x"))
    with pytest.raises(SignatureError, match="not signed by the KDC"):
        open_(transport, "jose")
    with pytest.raises(WireError, match="a compact JWE has 5 parts, found 3"):
        open_(transport, "jose", allow_unsigned=True)


def test_rejects_deeply_nested_jws_header_as_malformed():
    # Unauthenticated input: a header nested beyond Python's recursion limit must be an error of
    # this package, not a RecursionError escaping to the caller.
    transport = transport_of(hand_made_jws(b"[" * 50_000, b"x"))
    with pytest.raises(KrsError):
        open_(transport, "jose")


def test_rejects_deeply_nested_jwe_header_as_malformed():
    inner = b64url_encode(b"[" * 50_000) + ".a.b.c.d"
    transport = transport_of(jose_impl.jws_sign(inner.encode(), KDC))
    with pytest.raises(KrsError):
        open_(transport, "jose")


# --- decryption refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_ciphertext_for_another_recipient(backend):
    transport = seal_envelope(
        b"[]", backend=backend, recipient=OTHER_KEYS[backend].public_only(), signer=KDC
    )
    with pytest.raises(DecryptionError, match=r"not .*to this key"):
        open_(transport, backend)


def _tamper_inner(inner: bytes, backend: str) -> bytes:
    if backend == "hpke":
        tampered = bytearray(inner)
        tampered[40] ^= 0x01  # inside the AEAD ciphertext
        return bytes(tampered)
    parts = inner.decode().split(".")
    ciphertext = bytearray(b64url_decode(parts[3]))
    ciphertext[0] ^= 0x01
    parts[3] = b64url_encode(bytes(ciphertext))
    return ".".join(parts).encode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_tampered_ciphertext_re_signed_by_the_kdc(backend):
    _, payload, _ = jws_parts(seal(b"[1, 2, 3]", backend))
    inner = _tamper_inner(b64url_decode(payload), backend)
    transport = transport_of(jose_impl.jws_sign(inner, KDC))
    with pytest.raises(DecryptionError, match="altered"):
        open_(transport, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_tampered_unsigned_ciphertext(backend):
    inner = base64.b64decode(seal(b"[1, 2, 3]", backend, signer=None))
    transport = base64.b64encode(_tamper_inner(inner, backend))
    with pytest.raises(DecryptionError, match="altered"):
        open_(transport, backend, verifier=None, allow_unsigned=True)


def test_rejects_tampered_jwe_protected_header():
    _, payload, _ = jws_parts(seal(b"[]", "jose", headers={"peer_id": "b.example."}))
    parts = b64url_decode(payload).decode().split(".")
    header = json.loads(b64url_decode(parts[0]))
    header["peer_id"] = "evil.example."
    parts[0] = b64url_encode(json.dumps(header).encode())
    transport = transport_of(jose_impl.jws_sign(".".join(parts).encode(), KDC))
    with pytest.raises(DecryptionError):
        open_(transport, "jose")


@pytest.mark.parametrize("length", [0, 1, 47])
def test_rejects_hpke_ciphertext_shorter_than_48_bytes(length):
    transport = transport_of(jose_impl.jws_sign(b"\x01" * length, KDC))
    with pytest.raises(DecryptionError, match=f"is {length} bytes, shorter than the 48-byte"):
        open_(transport, "hpke")


def test_rejects_48_byte_hpke_ciphertext_that_does_not_open():
    transport = transport_of(jose_impl.jws_sign(b"\x01" * 48, KDC))
    with pytest.raises(DecryptionError, match="HPKE open failed"):
        open_(transport, "hpke")


@pytest.mark.parametrize("enc", ["A128GCM", "A192GCM", "A256CBC-HS512"])
def test_rejects_jwe_with_other_content_encryption(enc):
    inner = rfc_jwe.encrypt_compact(
        {"alg": "ECDH-ES", "enc": enc},
        b"[]",
        rfc_key(NODE_JOSE),
        registry=rfc_jwe_registry("ECDH-ES", enc),
    )
    transport = transport_of(rfc_sign(inner.encode()))
    with pytest.raises(UnsupportedAlgorithmError, match=re.escape(f"enc '{enc}' not supported")):
        open_(transport, "jose")


@pytest.mark.parametrize("alg", ["RSA-OAEP", "dir", "ECDH-ES+A128KW", "A256KW"])
def test_rejects_jwe_with_other_key_management(alg):
    header = b64url_encode(json.dumps({"alg": alg, "enc": "A256GCM"}).encode())
    inner = f"{header}.AAAA.AAAA.AAAA.AAAA".encode()
    with pytest.raises(UnsupportedAlgorithmError, match=re.escape(f"JWE alg '{alg}'")):
        open_(transport_of(jose_impl.jws_sign(inner, KDC)), "jose")


def test_rejects_binary_payload_for_the_jose_backend():
    transport = transport_of(jose_impl.jws_sign(b"\xff" * 60, KDC))
    with pytest.raises(WireError, match="not a compact JWE"):
        open_(transport, "jose")


def test_rejects_backend_the_node_has_no_key_for():
    with pytest.raises(DecryptionError, match="no X25519 key"):
        open_(seal(b"[]", "hpke"), "hpke", recipient=NODE_JOSE)
    with pytest.raises(DecryptionError, match="no P-256 key"):
        open_(seal(b"[]", "jose"), "jose", recipient=NODE_HPKE)


def test_rejects_public_only_recipient_key():
    with pytest.raises(DecryptionError, match="no X25519 private key"):
        open_(seal(b"[]", "hpke"), "hpke", recipient=NODE_HPKE.public_only())
    with pytest.raises(DecryptionError, match="no P-256 private key"):
        open_(seal(b"[]", "jose"), "jose", recipient=NODE_JOSE.public_only())


def test_rejects_unknown_backend():
    with pytest.raises(WireError, match="crypto backend 'rsa' is not one of"):
        open_envelope(seal(b"[]", "hpke"), backend="rsa", recipient=NODE_HPKE, verifier=KDC)


# --- malformed transport ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transport",
    [b"not base64!", b"ZX\nk=", b"ZXk=ZXk=", "ü".encode(), b"-_-_"],
)
def test_rejects_transport_that_is_not_standard_base64(transport):
    with pytest.raises(WireError, match="transport string is not standard base64"):
        open_(transport, "jose")


# --- arbitrary input ----------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(
    data=st.binary(max_size=400),
    backend=st.sampled_from(BACKENDS),
    allow_unsigned=st.booleans(),
)
def test_open_envelope_on_arbitrary_bytes_raises_only_krs_errors(data, backend, allow_unsigned):
    for transport in (data, base64.b64encode(data)):
        with pytest.raises(KrsError):
            open_(transport, backend, allow_unsigned=allow_unsigned)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "ECDH-ES", "ECDH-ES+A256KW", "none"]) | _JSON_VALUES,
        "enc": st.sampled_from(["A256GCM", "A128GCM"]) | _JSON_VALUES,
        "epk": st.just(NODE_JOSE.public_jwk) | _JSON_VALUES,
        "crit": _JSON_VALUES,
        "zip": st.just("DEF"),
    },
)
_PARTS = st.lists(
    st.binary(max_size=48).map(b64url_encode) | st.sampled_from(["", "AAAA", "a", "!!"]),
    max_size=6,
)


@PROPERTY
@given(header=_HEADERS, parts=_PARTS, backend=st.sampled_from(BACKENDS), signed=st.booleans())
def test_open_envelope_on_structured_garbage_raises_only_krs_errors(header, parts, backend, signed):
    # JOSE-shaped garbage, signed by the real KDC key so that it reaches the decryptor.
    inner = ".".join([b64url_encode(json.dumps(header).encode()), *parts]).encode()
    outer = jose_impl.jws_sign(inner, KDC).encode() if signed else inner
    with pytest.raises(KrsError):
        open_(base64.b64encode(outer), backend, allow_unsigned=True)
