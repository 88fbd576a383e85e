"""A KRS trusts a KDC key announced in ``kdc_keys`` only from a distribution that verified with a
key it already trusts, and drops the old key when the new one says so (docs/security.md,
"Rotation"). The real pipeline, state database and directory adapter; only the transport (the
CHUNK records handed over instead of fetched) is skipped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.config import Config
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import generate_key
from krs_plugin.errors import PayloadError
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import encode_payload, parse_payload, ping_entry, roll_key_entry
from krs_plugin.receiver import kdctrust
from krs_plugin.receiver.pipeline import Outcome, Pipeline
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.unpack import NodeIdentity
from tests.nodefolder import write_node_folder

NODE = dns.name.from_text("ns1.edge.example.")
ZONE = "example.com."


@pytest.fixture
def node(tmp_path: Path) -> tuple[Config, HpkeKey, JoseKey]:
    folder = write_node_folder(tmp_path, [ZONE], node_id=NODE.to_text())
    return folder.config(), folder.node_key, folder.kdc_key


_serial = [int(time.time())]


def send(pipeline: Pipeline, key: HpkeKey, signer: JoseKey, announced: list[JoseKey]) -> Outcome:
    """One distribution of a new ZSK for ZONE, signed by ``signer``, carrying ``announced``."""
    _serial[0] += 1
    dist_id = f"{_serial[0]:x}"
    entry = roll_key_entry(generate_key(ZONE, 13, 256), "ZSK", distribution_id=dist_id)
    records = build_distribution(
        encode_payload([entry], announced),
        NodeRecipient(NODE, "hpke", key.public_only()),
        signer,
        dist_id,
        now=time.time(),
    )
    return pipeline.process(dist_id, records[0], records[1:])


def make_pipeline(config: Config, key: HpkeKey, kdc: JoseKey) -> Pipeline:
    adapter = DirectoryAdapter({"path": "keys"}, config_path=config.path)
    store = ReceiverStore(config.state)
    return Pipeline(config, adapter, store, NodeIdentity(NODE, hpke=key), kdc.public_only())


def trusted(pipeline: Pipeline, kdc: JoseKey) -> set[str]:
    return set(kdctrust.thumbprints(pipeline.store.db, kdc.public_only()))


def test_announcement_signed_by_an_untrusted_key_changes_nothing(
    node: tuple[Config, HpkeKey, JoseKey],
) -> None:
    config, key, kdc = node
    pipeline = make_pipeline(config, key, kdc)
    rogue = JoseKey.generate()
    for announced in ([rogue], [kdc.public_only(), rogue]):
        outcome = send(pipeline, key, rogue, announced)
        assert (outcome.outcome, outcome.stage) == ("rejected", "signature")
        assert "does not verify with any KDC key this node trusts" in (outcome.error or "")
        assert "krs trust-kdc-key FILE --fingerprint=THUMBPRINT" in (outcome.error or "")
        assert trusted(pipeline, kdc) == {kdc.thumbprint}
    # and the KDC's own distribution still goes through, trusting only its key
    assert send(pipeline, key, kdc, []).outcome == "applied"
    assert trusted(pipeline, kdc) == {kdc.thumbprint}


def test_roll_adds_the_next_key_then_drops_the_old_one(
    node: tuple[Config, HpkeKey, JoseKey],
) -> None:
    config, key, kdc = node
    pipeline = make_pipeline(config, key, kdc)
    following = JoseKey.generate()
    announcing = send(pipeline, key, kdc, [kdc.public_only(), following.public_only()])
    assert announcing.outcome == "applied", announcing.error
    assert trusted(pipeline, kdc) == {kdc.thumbprint, following.thumbprint}
    assert announcing.report["kdc_keys"] == sorted([kdc.thumbprint, following.thumbprint])
    # the overlap: either key verifies
    assert send(pipeline, key, kdc, [kdc.public_only(), following.public_only()]).outcome == (
        "applied"
    )
    switched = send(pipeline, key, following, [following.public_only()])
    assert switched.outcome == "applied", switched.error
    assert trusted(pipeline, kdc) == {following.thumbprint}
    assert switched.report["kdc_keys"] == [following.thumbprint]
    old = send(pipeline, key, kdc, [])
    assert (old.outcome, old.stage) == ("rejected", "signature")
    # krs.yaml (read-only under the systemd unit) is untouched: the change is in krs.db
    assert json.loads((config.path.parent / "kdc.pub").read_text())["x"] == kdc.public_jwk["x"]


def test_set_without_the_signing_key_is_refused_and_changes_nothing(
    node: tuple[Config, HpkeKey, JoseKey],
) -> None:
    config, key, kdc = node
    pipeline = make_pipeline(config, key, kdc)
    outcome = send(pipeline, key, kdc, [JoseKey.generate().public_only()])
    assert (outcome.outcome, outcome.stage) == ("rejected", "payload")
    assert "does not list the key that signed" in (outcome.error or "")
    assert trusted(pipeline, kdc) == {kdc.thumbprint}


def test_operator_trusts_a_key_by_hand(node: tuple[Config, HpkeKey, JoseKey]) -> None:
    config, key, kdc = node
    pipeline = make_pipeline(config, key, kdc)
    following = JoseKey.generate()
    assert send(pipeline, key, following, [following.public_only()]).stage == "signature"
    kdctrust.trust_key(pipeline.store.db, following.public_only())
    outcome = send(pipeline, key, following, [following.public_only()])
    assert outcome.outcome == "applied", outcome.error
    assert trusted(pipeline, kdc) == {following.thumbprint}  # the configured key dropped


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "non-empty list"),
        ("x", "non-empty list"),
        ([{"kty": "EC"}], "P-256"),
        ([{**JoseKey.generate().private_jwk()}], "member 'd'"),
        ([{**JoseKey.generate().public_jwk, "kid": "other"}], "not the key's thumbprint"),
        ([JoseKey.generate().public_jwk] * 5, "at most 4"),
    ],
)
def test_payload_refuses_a_malformed_key_set(value: object, problem: str) -> None:
    text = encode_payload([ping_entry("n-1")]).decode()
    data = json.loads(text)
    data[0]["metadata"]["kdc_keys"] = value
    with pytest.raises(PayloadError, match=problem):
        parse_payload(json.dumps(data).encode(), now=time.time())


def test_payload_carries_one_key_set() -> None:
    key = JoseKey.generate()
    text = encode_payload([ping_entry("n-1"), ping_entry("n-2")], [key]).decode()
    data = json.loads(text)
    assert "kdc_keys" not in data[1]["metadata"]
    data[1]["metadata"]["kdc_keys"] = data[0]["metadata"]["kdc_keys"]
    with pytest.raises(PayloadError, match="carries one set"):
        parse_payload(json.dumps(data).encode(), now=time.time())
    parsed = parse_payload(text.encode(), now=time.time())
    assert [k.thumbprint for k in parsed.kdc_keys] == [key.thumbprint]


def test_a_thumbprint_that_begins_with_a_dash_is_taken_in_the_form_the_hint_shows() -> None:
    """A base64url thumbprint begins with '-' once in 64; ``--fingerprint VALUE`` would then be
    read as an option (argparse: "expected one argument"), so every hint writes
    ``--fingerprint=THUMBPRINT`` (a clean-clone CI run drew such a key)."""
    from krs_plugin.cli import build_parser

    thumbprint = "-Yk2" + "A" * 39
    args = build_parser().parse_args(["trust-kdc-key", "kdc.pub", f"--fingerprint={thumbprint}"])
    assert args.fingerprint == thumbprint
