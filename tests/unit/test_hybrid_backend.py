"""The hpke-pq backend (docs/protocol.md section 4): hybrid HPKE, MLKEM768-X25519, HKDF-SHA256,
AES-256-GCM. Interop is checked against cryptography's own HPKE, called directly on keys rebuilt
from our key files' bytes (not through krs_plugin), and against joserfc for the JWS around it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat

import dns.message
import dns.name
import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)
from joserfc import jws as rfc_jws
from joserfc.jwk import ECKey

from krs_plugin import enrollment
from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, open_envelope, seal_envelope
from krs_plugin.crypto.hybrid import (
    ENC_BYTES,
    load_hybrid_private,
    load_hybrid_public,
    write_hybrid_private,
    write_hybrid_public,
)
from krs_plugin.crypto.nodekey import (
    generate_node_key,
    load_node_private,
    load_node_public,
    public_text,
    write_node_private,
    write_node_public,
)
from krs_plugin.enrollment import BootstrapPackage, EnrollmentConfirmation, EnrollmentRequest
from krs_plugin.errors import DecryptionError, EnrollmentError, KeyFileError

# The suite named in docs/protocol.md section 4, hpke-pq, built here from cryptography directly.
PQ_SUITE = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
KDC = JoseKey.generate()
NODE_PQ = HybridKey.generate()
OTHER_PQ = HybridKey.generate()
NODE_HPKE = HpkeKey.generate()
NODE_JOSE = JoseKey.generate()
TDNS_JWS_HEADER = {"alg": "ES256", "cty": "application/octet-stream", "typ": "JWS"}


def independent_private(key: HybridKey) -> MLKEM768X25519PrivateKey:
    """The node's private key rebuilt from its file's bytes with cryptography alone."""
    raw = bytes.fromhex(key.private_hex())
    return MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64]),
        x25519.X25519PrivateKey.from_private_bytes(raw[64:]),
    )


def independent_public(key: HybridKey) -> MLKEM768X25519PublicKey:
    raw = bytes.fromhex(key.public_hex)
    return MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
        x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
    )


def rfc_key(key: JoseKey, *, private: bool = False) -> ECKey:
    return ECKey.import_key(key.private_jwk() if private else key.public_jwk)


def seal_pq(plaintext: bytes, recipient: HybridKey = NODE_PQ) -> bytes:
    return seal_envelope(
        plaintext, backend="hpke-pq", recipient=recipient.public_only(), signer=KDC
    )


def open_(transport: bytes, backend: str, recipient: object) -> bytes:
    opened = open_envelope(
        transport,
        backend=backend,  # type: ignore[arg-type]
        recipient=recipient,  # type: ignore[arg-type]
        verifier=KDC.public_only(),
    )
    assert opened.signed and opened.backend == backend
    return opened.plaintext


# --- round trip and wire form -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, 200_000])
def test_hybrid_envelope_round_trip(size: int) -> None:
    plaintext = hashlib.shake_256(b"ksk").digest(size)
    assert open_(seal_pq(plaintext), "hpke-pq", NODE_PQ) == plaintext


def test_hybrid_ciphertext_is_enc_then_aead_ciphertext_and_tag() -> None:
    plaintext = b'[{"operation":"roll_key"}]' * 20
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal_pq(plaintext)), rfc_key(KDC), algorithms=["ES256"]
    )
    assert signed.protected == TDNS_JWS_HEADER  # the outer JWS is the same for every backend
    assert ENC_BYTES == 1120 == KEM.MLKEM768_X25519.enc_length()
    assert len(signed.payload) == ENC_BYTES + len(plaintext) + 16


# --- interop: cryptography's HPKE called directly -----------------------------------------------


def test_cryptography_hpke_opens_our_hybrid_ciphertext() -> None:
    plaintext = b'[{"operation":"roll_key","zone":"example."}]' * 30
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal_pq(plaintext)), rfc_key(KDC), algorithms=["ES256"]
    )
    assert PQ_SUITE.decrypt(signed.payload, independent_private(NODE_PQ)) == plaintext


def test_we_open_a_hybrid_ciphertext_sealed_by_cryptography_in_a_joserfc_jws() -> None:
    plaintext = b'[{"operation":"delete_key"}]'
    ciphertext = PQ_SUITE.encrypt(plaintext, independent_public(NODE_PQ))
    compact = rfc_jws.serialize_compact(
        TDNS_JWS_HEADER, ciphertext, rfc_key(KDC, private=True), algorithms=["ES256"]
    )
    transport = base64.b64encode(compact.encode())
    assert open_(transport, "hpke-pq", NODE_PQ) == plaintext


def test_cryptography_hpke_cannot_open_our_ciphertext_with_another_node_key() -> None:
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal_pq(b"x")), rfc_key(KDC), algorithms=["ES256"]
    )
    with pytest.raises(Exception):  # noqa: B017 - any failure of the independent implementation
        PQ_SUITE.decrypt(signed.payload, independent_private(OTHER_PQ))


def test_classic_x25519_suite_cannot_open_a_hybrid_ciphertext() -> None:
    """The X25519 half alone is not enough: the hybrid is not X25519 with padding."""
    raw = bytes.fromhex(NODE_PQ.private_hex())
    x_only = x25519.X25519PrivateKey.from_private_bytes(raw[64:])
    ciphertext = PQ_SUITE.encrypt(b"secret", independent_public(NODE_PQ))
    classic = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    with pytest.raises(Exception):  # noqa: B017
        classic.decrypt(ciphertext, x_only)


# --- interop: the suite composed here from primitives (X-Wing combiner, RFC 9180 key schedule) ---

XWING_LABEL = b"\\.//^\\"  # the X-Wing combiner's label (6 bytes), hashed last
SUITE_ID = b"HPKE" + bytes.fromhex("647a00010002")  # KEM, KDF, AEAD ids (RFC 9180 5.1)


def labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + SUITE_ID + label + ikm, hashlib.sha256).digest()


def labeled_expand(prk: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = length.to_bytes(2, "big") + b"HPKE-v1" + SUITE_ID + label + context
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]  # one block: <= 32


def key_schedule(shared_secret: bytes) -> tuple[bytes, bytes]:
    """Base mode, empty info and psk: the AEAD key and the first message's nonce."""
    context = (
        b"\x00"
        + labeled_extract(b"", b"psk_id_hash", b"")
        + labeled_extract(b"", b"info_hash", b"")
    )
    secret = labeled_extract(shared_secret, b"secret", b"")
    key = labeled_expand(secret, b"key", context, 32)
    return key, labeled_expand(secret, b"base_nonce", context, 12)


def xwing_secret(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def test_our_hybrid_ciphertext_opens_with_the_suite_composed_from_primitives() -> None:
    """ML-KEM-768 decapsulation, X25519, the SHA3-256 combiner, HKDF and AES-GCM called one by
    one: checks the composition (ids, halves' order, combiner, key schedule), not one call."""
    plaintext = b'[{"operation":"roll_key"}]' * 9
    signed = rfc_jws.deserialize_compact(
        base64.b64decode(seal_pq(plaintext)), rfc_key(KDC), algorithms=["ES256"]
    )
    sealed = signed.payload
    raw = bytes.fromhex(NODE_PQ.private_hex())
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(raw[64:])
    ct_m, ct_x, body = sealed[:1088], sealed[1088:1120], sealed[1120:]
    shared = xwing_secret(
        sk_m.decapsulate(ct_m),
        sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x)),
        ct_x,
        bytes.fromhex(NODE_PQ.public_hex)[1184:],
    )
    key, nonce = key_schedule(shared)
    assert AESGCM(key).decrypt(nonce, body, b"") == plaintext


def test_we_open_a_hybrid_ciphertext_composed_from_primitives() -> None:
    plaintext = b'[{"operation":"delete_key"}]'
    public = bytes.fromhex(NODE_PQ.public_hex)
    ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(public[:1184]).encapsulate()
    ephemeral = x25519.X25519PrivateKey.generate()
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(public[1184:]))
    key, nonce = key_schedule(xwing_secret(ss_m, ss_x, ct_x, public[1184:]))
    sealed = ct_m + ct_x + AESGCM(key).encrypt(nonce, plaintext, b"")
    compact = rfc_jws.serialize_compact(
        TDNS_JWS_HEADER, sealed, rfc_key(KDC, private=True), algorithms=["ES256"]
    )
    assert open_(base64.b64encode(compact.encode()), "hpke-pq", NODE_PQ) == plaintext


# --- bad input: the wrong backend for the node's key --------------------------------------------


def test_a_hybrid_envelope_for_a_node_with_an_hpke_key_is_refused_at_decryption() -> None:
    with pytest.raises(
        DecryptionError, match="sealed with hpke-pq but this node has no ML-KEM"
    ) as e:
        open_(seal_pq(b"[]"), "hpke-pq", NODE_HPKE)
    assert e.value.stage == "decryption"
    assert "it holds an hpke (X25519) key" in str(e.value)


def test_an_hpke_envelope_for_a_node_with_a_hybrid_key_is_refused_at_decryption() -> None:
    transport = seal_envelope(b"[]", backend="hpke", recipient=NODE_HPKE.public_only(), signer=KDC)
    with pytest.raises(DecryptionError, match="sealed with hpke but this node has no X25519") as e:
        open_(transport, "hpke", NODE_PQ)
    assert e.value.stage == "decryption"
    assert "hpke-pq (ML-KEM-768 + X25519)" in str(e.value)


def test_a_hybrid_ciphertext_named_hpke_fails_to_open_with_the_x25519_key() -> None:
    """A manifest that says hpke over a hybrid ciphertext: the X25519 open fails, by name."""
    inner = PQ_SUITE.encrypt(b"[]", independent_public(NODE_PQ))
    compact = rfc_jws.serialize_compact(
        TDNS_JWS_HEADER, inner, rfc_key(KDC, private=True), algorithms=["ES256"]
    )
    with pytest.raises(DecryptionError, match="HPKE open failed with X25519 key"):
        open_(base64.b64encode(compact.encode()), "hpke", NODE_HPKE)


def test_an_altered_or_short_hybrid_ciphertext_is_refused() -> None:
    inner = bytearray(PQ_SUITE.encrypt(b"[]" * 10, independent_public(NODE_PQ)))
    inner[ENC_BYTES + 3] ^= 1
    for body, fragment in (
        (bytes(inner), "not sealed to this key, or altered"),
        (b"x" * 1135, "shorter"),
    ):
        compact = rfc_jws.serialize_compact(
            TDNS_JWS_HEADER, body, rfc_key(KDC, private=True), algorithms=["ES256"]
        )
        with pytest.raises(DecryptionError, match=fragment):
            open_(base64.b64encode(compact.encode()), "hpke-pq", NODE_PQ)


def test_sealing_to_a_key_of_another_backend_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="hpke-pq backend seals to"):
        seal_envelope(b"[]", backend="hpke-pq", recipient=NODE_HPKE, signer=KDC)


# --- key files ----------------------------------------------------------------------------------


def test_key_files_round_trip_private_0600_public_readable(tmp_path) -> None:
    write_hybrid_private(tmp_path / "node.key", NODE_PQ, comment="node hybrid key")
    write_hybrid_public(tmp_path / "node.pub", NODE_PQ)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "node.pub").stat().st_mode) == 0o644
    loaded = load_hybrid_private(tmp_path / "node.key")
    assert loaded.public_hex == NODE_PQ.public_hex and loaded.private_hex() == NODE_PQ.private_hex()
    assert load_hybrid_public(tmp_path / "node.pub").public_hex == NODE_PQ.public_hex
    assert len(NODE_PQ.private_hex()) == 192 and len(NODE_PQ.public_hex) == 2432
    assert NODE_PQ.private_hex() not in repr(NODE_PQ)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("zz" * 96, "hex characters"),
        ("ab" * 95, "expected 96 bytes"),
        ("ab" * 64 + "00" * 32, "all-zero X25519"),
    ],
)
def test_a_malformed_private_key_file_is_refused_by_name(
    tmp_path, text: str, fragment: str
) -> None:
    (tmp_path / "bad.key").write_text(f"# comment\n{text}\n")
    with pytest.raises(KeyFileError, match=fragment) as e:
        load_hybrid_private(tmp_path / "bad.key")
    assert str(tmp_path / "bad.key") in str(e.value)


def test_a_public_key_of_an_hpke_node_is_not_a_hybrid_key(tmp_path) -> None:
    (tmp_path / "x.pub").write_text(NODE_HPKE.public_hex + "\n")
    with pytest.raises(KeyFileError, match="expected 1216 bytes"):
        load_hybrid_public(tmp_path / "x.pub")


@pytest.mark.parametrize("backend", ["hpke", "jose", "hpke-pq"])
def test_node_key_hook_makes_writes_and_loads_each_backend(tmp_path, backend: str) -> None:
    key = generate_node_key(backend)
    write_node_private(tmp_path / "k", backend, key)
    write_node_public(tmp_path / "p", backend, key)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert public_text(load_node_private(backend, tmp_path / "k")) == public_text(key)
    assert public_text(load_node_public(backend, tmp_path / "p")) == public_text(key)
    with pytest.raises(ValueError, match="not one of"):
        generate_node_key("rsa")


# --- enrollment messages ------------------------------------------------------------------------

CZ = dns.name.from_text("kdc.example.")
KDC_HPKE = HpkeKey.generate()


def test_an_hpke_pq_request_carries_the_hybrid_key_and_is_sealed_to_the_kdc_x25519_key() -> None:
    package = BootstrapPackage(
        token="t" * 43, node_id="pq.example.", kdc_hpke_pubkey=KDC_HPKE.public_hex,
        kdc_jose_pubkey="", kdc_enrollment_address="127.0.0.1:5300",
        control_zone="kdc.example.", backend="hpke-pq",
    )  # fmt: skip
    assert BootstrapPackage.parse(package.to_text()).backend == "hpke-pq"
    request = EnrollmentRequest(
        "t" * 43, "127.0.0.1:5301", "pq.example. KEY 512 3 15 AAAA", "2030-01-01T00:00:00Z",
        hpke_pq_pubkey=NODE_PQ.public_hex,
    )  # fmt: skip
    sealed = enrollment.seal_request(request, package)
    opened, backend = enrollment.open_request(sealed, KDC_HPKE, JoseKey.generate())
    assert backend == "hpke" and opened == request
    key = opened.hybrid_key()
    assert key is not None and key.public_hex == NODE_PQ.public_hex
    assert json.loads(request.to_json())["hpke_pq_pubkey"] == NODE_PQ.public_hex


def test_an_hpke_pq_package_without_the_kdc_x25519_key_is_refused() -> None:
    body = {"token": "t", "node_id": "pq.example.", "kdc_jose_pubkey": "e30=",
            "kdc_enrollment_address": "127.0.0.1:1", "control_zone": "kdc.example.",
            "backend": "hpke-pq"}  # fmt: skip
    with pytest.raises(EnrollmentError, match="hpke-pq package needs kdc_hpke_pubkey"):
        BootstrapPackage.parse(base64.b64encode(json.dumps(body).encode()).decode())
    body["backend"] = "kyber"
    with pytest.raises(EnrollmentError, match="backend 'kyber' is not one of"):
        BootstrapPackage.parse(base64.b64encode(json.dumps(body).encode()).decode())


def test_the_confirmation_to_an_hpke_pq_node_opens_only_with_its_hybrid_key() -> None:
    success = EnrollmentConfirmation("pq.example.", "success", "2030-01-01T00:00:00Z")
    sealed = enrollment.seal_confirmation(
        success,
        node_hpke=None,
        node_jose=None,
        kdc_hpke=KDC_HPKE,
        node_hybrid=NODE_PQ.public_only(),
    )
    assert PQ_SUITE.decrypt(sealed, independent_private(NODE_PQ)) == success.to_json()
    reply = dns.message.make_response(enrollment.build_update(CZ, b"x"))
    reply.use_edns(0, 0, 1232, options=[enrollment.answer_option(sealed)])
    # 1120 bytes of enc alone: over the 1232 of EDNS, so it travels over TCP, as krs enroll does
    reply = dns.message.from_wire(reply.to_wire(max_size=0xFFFF))
    keys = {"node_hpke": None, "node_jose": None, "kdc_hpke": KDC_HPKE.public_only()}
    assert enrollment.open_confirmation(reply, **keys, node_hybrid=NODE_PQ) == success
    with pytest.raises(EnrollmentError, match="does not open with this node's new key"):
        enrollment.open_confirmation(reply, **keys, node_hybrid=OTHER_PQ)


# --- the node's configuration -------------------------------------------------------------------


def test_krs_yaml_names_the_hybrid_key_and_krs_run_loads_it_doctor_checks_it(tmp_path) -> None:
    from krs_plugin.config import load_config
    from krs_plugin.receiver.doctor import check_key_files
    from krs_plugin.receiver.pipeline import load_identity

    write_node_private(tmp_path / "node.hpke-pq.privatekey", "hpke-pq", NODE_PQ)
    (tmp_path / "kdc.pub").write_text(json.dumps(KDC.public_jwk))
    (tmp_path / "keys").mkdir()
    config = {
        "node_id": "pq.example.",
        "keys": {"hpke-pq": str(tmp_path / "node.hpke-pq.privatekey")},
        "kdc": {"verification_key": str(tmp_path / "kdc.pub")},
        "control_zone": "kdc.example.",
        "control_servers": ["127.0.0.1:5354"],
        "zones": ["example.com."],
        "state": str(tmp_path / "krs.db"),
        "adapter": {"type": "directory", "settings": {"path": str(tmp_path / "keys")}},
    }
    (tmp_path / "krs.yaml").write_text(json.dumps(config))
    loaded = load_config(tmp_path / "krs.yaml")
    identity, _, _ = load_identity(loaded)
    assert identity.hpke is None and identity.jose is None and identity.hybrid is not None
    assert identity.hybrid.public_hex == NODE_PQ.public_hex
    (check,) = [c for c in check_key_files(loaded) if c.name == "keys.hpke-pq"]
    assert check.status == "ok" and NODE_PQ.fingerprint in check.message
