"""The KDC's side of a signing-key roll on a real kdc.db and key files (kdc/signroll.py): what
holds each step, which reports count, and the files each step leaves (docs/security.md,
"Rotation"). The whole path with krs-kdc serve and krs run is
tests/integration/test_kdc_signing_roll.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from krs_plugin.crypto import HpkeKey, JoseKey, load_jose_key
from krs_plugin.kdc import signroll
from krs_plugin.kdc.identity import KdcIdentity, create_identity
from krs_plugin.kdc.store import StateError, Store

SIGNED, UNSIGNED = "ns1.edge.example.", "ns2.edge.example."


@pytest.fixture
def kdc(tmp_path: Path) -> tuple[Store, KdcIdentity]:
    identity = create_identity(tmp_path / "keys")
    store = Store(tmp_path / "kdc.db")
    store.add_zone("example.com.")
    for node, signing in ((SIGNED, JoseKey.generate()), (UNSIGNED, None)):
        store.add_node(
            node,
            notify_address="127.0.0.1:5355",
            backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex,
            jose_pubkey=None,
            signing_pubkey=json.dumps(signing.public_jwk) if signing else None,
            zones=[],
        )
    return store, identity


def holding(store: Store) -> dict[str, str]:
    return {h.node_id: h.why for h in signroll.gate(store).holding}


def test_each_step_waits_for_the_reports_of_every_node(kdc: tuple[Store, KdcIdentity]) -> None:
    store, identity = kdc
    keys = store.path.parent / "keys"
    old = identity.signer.thumbprint
    assert signroll.signing_state(store, identity) == (identity.signer, ())
    new = signroll.start(store, identity, now=time.time()).thumbprint
    with pytest.raises(StateError, match="already under way"):
        signroll.start(store, identity, now=time.time())
    signer, announced = signroll.signing_state(store, identity)
    assert signer.thumbprint == old and [k.thumbprint for k in announced] == [old, new]
    assert holding(store) == {
        SIGNED: "has not confirmed trusting the next key",
        UNSIGNED: "no signing key: cannot report the keys it trusts",
    }
    signroll.note_report(store, SIGNED, "6b150000", 0x6B150000, {"kdc_keys": [old, new]})
    signroll.note_report(store, SIGNED, "6b14ffff", 0x6B14FFFF, {"kdc_keys": [old]})  # older
    signroll.note_report(store, UNSIGNED, "6b150001", 0x6B150001, {"kdc_keys": [old, new]})
    assert holding(store) == {UNSIGNED: "no signing key: cannot report the keys it trusts"}
    other = JoseKey.generate().thumbprint
    signroll.note_report(store, SIGNED, "6b150002", 0x6B150002, {"kdc_keys": [old, new, other]})
    assert holding(store)[SIGNED] == f"trusts a key this KDC does not: {other}"
    assert signroll.advance(store, identity, now=time.time()).taken is None  # held

    step = signroll.advance(store, identity, now=time.time(), force=True)
    assert step.taken == "switched"
    assert load_jose_key(keys / "kdc.signing.privatekey").thumbprint == new
    assert load_jose_key(keys / "kdc.signing.pubkey").thumbprint == new
    kept = keys / f"kdc.signing.{old[:16]}.privatekey"
    assert load_jose_key(kept).thumbprint == old and kept.stat().st_mode & 0o777 == 0o600
    signer, announced = signroll.signing_state(store, identity)  # identity still holds the old
    assert signer.thumbprint == new and [k.thumbprint for k in announced] == [new]
    assert holding(store)[SIGNED] == "still trusts the old key"  # its last report
    signroll.note_report(store, SIGNED, "6b150003", 0x6B150003, {"kdc_keys": [old]})
    assert holding(store)[SIGNED] == "has not confirmed trusting the new key"
    signroll.note_report(store, SIGNED, "6b150004", 0x6B150004, {"kdc_keys": [new, other]})
    assert holding(store)[SIGNED] == f"trusts a key this KDC does not: {other}"
    signroll.note_report(store, SIGNED, "6b150005", 0x6B150005, {"kdc_keys": [new]})
    assert SIGNED not in holding(store) and kept.exists()

    assert signroll.advance(store, identity, now=time.time(), force=True).taken == "retired"
    assert not kept.exists()
    assert signroll.gate(store).phase == "idle"
    assert signroll.signing_state(store, identity)[1] == ()
    kinds = [r["kind"] for r in store.db.execute("SELECT kind FROM audit ORDER BY seq")]
    assert [k for k in kinds if k.startswith("signing.")] == [
        "signing.roll",
        "signing.switch",
        "signing.retire",
    ]
    forced = json.loads(
        store.db.execute("SELECT details FROM audit WHERE kind = 'signing.retire'").fetchone()[
            "details"
        ]
    )["forced_past"]
    assert forced == [UNSIGNED]
