"""A key the KDC makes (the engine's, key generate's: kdc/keygen.py) never takes the tag of a
key the zone already has, removed ones included (kdc.db refuses it, and the zone would be held
at every pass)."""

from __future__ import annotations

from pathlib import Path

import pytest

from krs_plugin.dnssec import generate_key
from krs_plugin.kdc import keygen
from krs_plugin.kdc.engine import Engine
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.store import Store
from tests.unit.test_lifecycle_engine import POLICY, T0, ZONE


def test_a_new_key_whose_tag_the_zone_has_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "kdc.db")
    store.add_policy("fast", POLICY, now=T0)
    store.add_zone(ZONE, now=T0, policy="fast")
    old = generate_key(ZONE, 13, 256)
    store.add_key(ZONE, key_tag=old.key_tag, role="ZSK", algorithm=13, flags=256,
                  private_pem=old.to_pkcs8_pem(), state="removed", now=T0)  # fmt: skip
    made = iter([old, generate_key(ZONE, 13, 257), old, generate_key(ZONE, 13, 256)])
    monkeypatch.setattr(keygen, "generate_key", lambda *a, **k: next(made))
    engine = Engine(store, create_identity(tmp_path / "keys"))
    engine.start(ZONE, "initial", cause="command: test", now=T0)
    tags = sorted(k.key_tag for k in store.keys(ZONE) if k.state != "removed")
    assert len(tags) == 2 and old.key_tag not in tags
    store.close()
