"""Enrollment messages (krs_plugin.enrollment): package, request, UPDATE and confirmation."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.update
import pytest

from krs_plugin import enrollment
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.crypto.keys import b64url_encode
from krs_plugin.enrollment import BootstrapPackage, EnrollmentConfirmation, EnrollmentRequest
from krs_plugin.errors import EnrollmentError
from krs_plugin.protocol.chunk import make_chunk

CZ = dns.name.from_text("kdc.example.")
ENROLL = enrollment.enroll_name(CZ)
KDC_HPKE, KDC_JOSE, KDC_SIGNER = HpkeKey.generate(), JoseKey.generate(), JoseKey.generate()
NODE_HPKE, NODE_JOSE = HpkeKey.generate(), JoseKey.generate()


def _package(**changes: object) -> BootstrapPackage:
    base = BootstrapPackage(
        token="s3cret-token", node_id="node1.example.", kdc_hpke_pubkey=KDC_HPKE.public_hex,
        kdc_jose_pubkey="", kdc_enrollment_address="192.0.2.1:5399", control_zone="kdc.example.",
        kdc_signing_pubkey=KDC_SIGNER.public_jwk, valid_until="2030-01-02T03:04:05Z",
        backend="hpke", zones=("a.example.", "b.example."),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _b64(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def _request(**changes: str) -> EnrollmentRequest:
    base = EnrollmentRequest(
        auth_token="s3cret-token", notify_address="192.0.2.7:53",
        sig0_pubkey="node1.example. 3600 IN KEY 512 3 15 AAAA",
        timestamp="2030-01-01T00:00:00Z", hpke_pubkey=NODE_HPKE.public_hex,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_a_package_survives_to_text_and_parse_with_every_field() -> None:
    package = _package()
    parsed = BootstrapPackage.parse(package.to_text())
    assert parsed == package
    assert parsed.kdc_signing_key().public_jwk == KDC_SIGNER.public_jwk
    assert parsed.expires_at() == enrollment.parse_rfc3339("2030-01-02T03:04:05Z", "t")


def test_comment_lines_are_ignored_and_the_base64_may_span_several_lines() -> None:
    body = _package().to_text().splitlines()[-1]
    text = "# a note\n" + "\n".join(body[i : i + 60] for i in range(0, len(body), 60)) + "\n# end"
    assert BootstrapPackage.parse(text) == _package()


def test_a_tdns_package_with_only_a_jose_key_is_read() -> None:
    jwk_b64 = _b64(KDC_JOSE.public_jwk)  # tdns: standard base64 of the JWK JSON
    text = _b64({
        "token": "t", "node_id": "node1.example.", "kdc_hpke_pubkey": "",
        "kdc_jose_pubkey": jwk_b64, "kdc_enrollment_address": "192.0.2.1:53",
        "control_zone": "kdc.example.",
    })  # fmt: skip
    package = BootstrapPackage.parse(text)
    assert package.kdc_hpke_key() is None
    assert package.kdc_jose_key().thumbprint == KDC_JOSE.thumbprint
    assert package.zones == () and package.kdc_signing_key() is None


def _altered(field: str, value: object = None) -> str:
    data = {**_package().fields(), field: value}
    return _b64({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not base64 at all!", "not a base64 JSON package"),
        (_b64([1, 2]), "the package is not a JSON object"),
        (_altered("token"), "token missing or empty"),
        (_altered("node_id"), "node_id missing or empty"),
        (_altered("kdc_enrollment_address", ""), "kdc_enrollment_address missing or empty"),
        (_altered("control_zone"), "control_zone missing or empty"),
        (_altered("kdc_hpke_pubkey"), "names no KDC key"),
        (_altered("kdc_hpke_pubkey", "zz" * 32), "kdc_hpke_pubkey: expected 64 hex characters"),
        (_altered("zones", "a.example."), "zones must be a list of names"),
        (_altered("kdc_signing_pubkey", "jwk"), "kdc_signing_pubkey must be a JWK object"),
        (_altered("valid_until", "next tuesday"), "is not an RFC 3339 time"),
    ],
)
def test_a_malformed_package_is_refused_by_name(text: str, fragment: str) -> None:
    with pytest.raises(EnrollmentError, match=fragment):
        BootstrapPackage.parse(text)


def test_the_digest_changes_with_any_field_and_survives_a_round_trip() -> None:
    package = _package()
    assert BootstrapPackage.parse(package.to_text()).digest() == package.digest()
    other_key = NODE_JOSE.public_jwk
    for field, value in [("zones", ("a.",)), ("token", "t2"), ("kdc_signing_pubkey", other_key)]:
        assert _package(**{field: value}).digest() != package.digest(), field


def test_a_request_is_written_with_tdns_field_names_and_without_empty_fields() -> None:
    request = _request(signing_pubkey='{"kty":"EC"}', package_digest="ab" * 32)
    obj = json.loads(request.to_json())
    assert set(obj) == {
        "auth_token", "hpke_pubkey", "notify_address", "sig0_pubkey", "timestamp",
        "signing_pubkey", "package_digest",
    }  # fmt: skip
    assert "jose_pubkey" not in json.loads(_request().to_json())
    assert EnrollmentRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not JSON"),
        (json.dumps({**json.loads(_request().to_json()), "timestamp": ""}), "timestamp missing"),
        (json.dumps({**json.loads(_request().to_json()), "sig0_pubkey": 5}), "must be a string"),
        (json.dumps({**json.loads(_request().to_json()), "hpke_pubkey": ""}), "neither hpke"),
    ],
)
def test_a_malformed_request_is_refused_by_name(data: bytes | str, fragment: str) -> None:
    with pytest.raises(EnrollmentError, match=fragment):
        EnrollmentRequest.from_json(data.encode() if isinstance(data, str) else data)


def test_the_token_is_never_shown_in_repr() -> None:
    assert "s3cret-token" not in repr(_request())
    assert "s3cret-token" not in repr(_package())


def _jose_package(kdc_jose: JoseKey) -> BootstrapPackage:
    return _package(kdc_hpke_pubkey="", kdc_jose_pubkey=enrollment.encode_jose_pubkey(kdc_jose))


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_a_request_opens_with_the_kdc_key_of_the_package_backend(backend: str) -> None:
    package = _jose_package(KDC_JOSE) if backend == "jose" else _package()
    sealed = enrollment.seal_request(_request(), package)
    assert enrollment.open_request(sealed, KDC_HPKE, KDC_JOSE) == (_request(), backend)


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_a_request_sealed_to_another_kdc_is_refused(backend: str) -> None:
    package = _package(kdc_hpke_pubkey=HpkeKey.generate().public_hex)
    if backend == "jose":
        package = _jose_package(JoseKey.generate())
    sealed = enrollment.seal_request(_request(), package)
    with pytest.raises(EnrollmentError, match="not sealed to this KDC's"):
        enrollment.open_request(sealed, KDC_HPKE, KDC_JOSE)


# An algorithm the KDC does not take is a refusal with a reason, not an error that escapes the
# KDC's desk (the UPDATE would get no answer at all).
def test_a_jwe_request_with_an_unsupported_algorithm_is_refused_as_enrollment_error() -> None:
    header = b64url_encode(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    with pytest.raises(EnrollmentError, match=r"not sealed to this KDC's JOSE key.*RSA-OAEP"):
        enrollment.open_request(f"{header}.a.b.c.d".encode(), KDC_HPKE, KDC_JOSE)


def test_an_enrollment_update_carries_the_sealed_request_through_the_wire() -> None:
    wire = enrollment.build_update(CZ, b"sealed bytes").to_wire(max_size=0xFFFF)
    assert enrollment.request_chunk(dns.message.from_wire(wire), CZ) == b"sealed bytes"


def _update(*rdatas: object, owner: dns.name.Name = ENROLL, apart: bool = False) -> object:
    """An UPDATE of CZ carrying ``rdatas`` at ``owner``: one RRset, or one RRset each."""
    update = dns.update.UpdateMessage(CZ)
    for group in [[r] for r in rdatas] if apart else [rdatas]:
        update.update.append(dns.rrset.from_rdata(owner, 300, *group))
    return update


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        (dns.message.make_query(CZ, "SOA"), "not a DNS UPDATE"),
        (enrollment.build_update(ENROLL, b"x"), "zone section must be"),
        (_update(make_chunk(0, 0, b"x"), make_chunk(0, 0, b"y")), "exactly one record"),
        (_update(make_chunk(0, 0, b"x"), make_chunk(0, 0, b"y"), apart=True), "exactly one record"),
        (_update(make_chunk(0, 0, b"x"), owner=dns.name.from_text("x.kdc.example.")), "CHUNK at"),
        (_update(make_chunk(0, 1, b"x")), "total 0 and no HMAC"),
        (_update(make_chunk(0, 0, b"x", hmac=b"\x01" * 32)), "total 0 and no HMAC"),
    ],
)
def test_an_update_that_is_not_an_enrollment_is_refused(update: object, fragment: str) -> None:
    with pytest.raises(EnrollmentError, match=fragment):
        enrollment.request_chunk(update, CZ)


def _reply(body: bytes | None, rcode: int = 0, *extra: object) -> dns.message.Message:
    reply = dns.message.make_response(enrollment.build_update(CZ, b"x"))
    reply.set_rcode(rcode)
    options = ([enrollment.answer_option(body)] if body is not None else []) + list(extra)
    reply.use_edns(0, 0, 1232, options=options)
    return dns.message.from_wire(reply.to_wire())


SUCCESS = EnrollmentConfirmation("node1.example.", "success", "2030-01-01T00:00:00Z", "ab" * 32)
HPKE_NODE = {"node_hpke": NODE_HPKE, "node_jose": None}
JOSE_NODE = {"node_hpke": None, "node_jose": NODE_JOSE}


def test_an_hpke_confirmation_opens_only_with_the_kdc_key_that_sealed_it() -> None:
    reply = _reply(enrollment.seal_confirmation(SUCCESS, **HPKE_NODE, kdc_hpke=KDC_HPKE))
    kdc_public = KDC_HPKE.public_only()
    assert enrollment.open_confirmation(reply, **HPKE_NODE, kdc_hpke=kdc_public) == SUCCESS
    with pytest.raises(EnrollmentError, match="not from that KDC"):
        enrollment.open_confirmation(reply, **HPKE_NODE, kdc_hpke=HpkeKey.generate())


def test_a_jose_confirmation_opens_with_the_node_jose_key() -> None:
    sealed = enrollment.seal_confirmation(SUCCESS, **JOSE_NODE, kdc_hpke=KDC_HPKE)
    assert sealed.startswith(b"ey")
    assert enrollment.open_confirmation(_reply(sealed), **JOSE_NODE, kdc_hpke=None) == SUCCESS


def test_a_plaintext_confirmation_is_read_only_from_an_error_answer() -> None:
    error = EnrollmentConfirmation("", "error", "2030-01-01T00:00:00Z", error_message="no")
    plain = enrollment.seal_confirmation(error, node_hpke=None, node_jose=None, kdc_hpke=KDC_HPKE)
    assert plain == error.to_json()
    refused = _reply(plain, dns.rcode.REFUSED)
    assert enrollment.open_confirmation(refused, **HPKE_NODE, kdc_hpke=KDC_HPKE) == error
    with pytest.raises(EnrollmentError, match="does not open with this node's new key"):
        enrollment.open_confirmation(_reply(plain), **HPKE_NODE, kdc_hpke=KDC_HPKE)
    assert enrollment.open_confirmation(_reply(None), **HPKE_NODE, kdc_hpke=KDC_HPKE) is None


# An HPKE ciphertext starts with the random ephemeral key: about 1 sealed confirmation in 256
# begins with 0x7B, "{", and must still be opened, not read as plain JSON.
def test_a_sealed_confirmation_whose_first_byte_is_a_brace_still_opens() -> None:
    for _ in range(5000):
        sealed = enrollment.seal_confirmation(SUCCESS, **HPKE_NODE, kdc_hpke=KDC_HPKE)
        if sealed.startswith(b"{"):
            break
    assert sealed.startswith(b"{")
    reply = _reply(sealed)
    assert enrollment.open_confirmation(reply, **HPKE_NODE, kdc_hpke=KDC_HPKE) == SUCCESS


def test_ede_text_is_the_extended_dns_error_text() -> None:
    ede = dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, "enrollment token expired")
    assert enrollment.ede_text(_reply(None, dns.rcode.REFUSED, ede)) == "enrollment token expired"
    assert enrollment.ede_text(_reply(None)) == ""


def test_tokens_are_distinct_256_bit_values_kept_only_as_their_sha256() -> None:
    tokens = {enrollment.new_token() for _ in range(50)}
    assert len(tokens) == 50 and all(len(t) >= 43 for t in tokens)
    assert enrollment.token_hash("abc") == hashlib.sha256(b"abc").hexdigest()
    assert enrollment.token_hash("abc") != enrollment.token_hash("abd")


def test_rfc3339_times_round_trip_and_a_time_without_zone_is_refused() -> None:
    assert enrollment.rfc3339(1_900_000_000) == "2030-03-17T17:46:40Z"
    assert enrollment.parse_rfc3339(enrollment.rfc3339(1_900_000_000), "t") == 1_900_000_000
    with pytest.raises(EnrollmentError, match="has no time zone"):
        enrollment.parse_rfc3339("2030-03-17T17:46:40", "t")
