"""A zone moved from BIND 9.18 (auto-dnssec) to BIND 9.20 (dnssec-policy manual-mode), as the
upgrade from Debian 12 to 13 does it: same key directory, same signed copy, named.conf changed
as docs/servers/bind9.md says. The zone stays signed by the KDC's keys across the switch, and
the KRS goes on installing keys into it."""

from __future__ import annotations

import time
from pathlib import Path

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served, bind9_root

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


def test_zone_keeps_its_keys_and_signatures_from_918_to_920(tmp_path: Path) -> None:
    root = tmp_path / "named"
    old = Bind9Lab(root, [ZONE], sysroot=bind9_root(policy=False))
    old.start()
    try:
        assert not old.uses_policy
        adapter = Bind9Adapter({**old.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
        now = int(time.time()) - 1
        ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
        timing = KeyTiming(now, now, now)
        adapter.apply(
            NAME, KeyPlan(NAME, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
        )
        before = Served(old.host, old.port, ZONE)
        assert before.tags == {ksk.key_tag, zsk.key_tag}
    finally:
        old.stop()

    # The upgrade: named.conf gets a manual-mode policy instead of auto-dnssec (the lab writes
    # it for the version it runs); key directory and signed copy stay where they are.
    new = Bind9Lab(
        root, [ZONE], sysroot=bind9_root(policy=True), port=old.port, control_port=old.control_port
    )
    new.start()
    try:
        assert new.uses_policy
        served = Served(new.host, new.port, ZONE)  # named adopted the key files as they were
        assert served.tags == {ksk.key_tag, zsk.key_tag}
        assert served.soa_signers == {zsk.key_tag} and served.dnskey_signers == {ksk.key_tag}
        adapter = Bind9Adapter({**new.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
        assert adapter.check() == []
        # the KRS goes on: a ZSK rollover on 9.20
        new_zsk = generate_key(ZONE, 13, 256)
        now = int(time.time()) - 1
        result = adapter.apply(
            NAME,
            KeyPlan(NAME, (PlannedKey(new_zsk, "ZSK", KeyTiming(now, now, now)),), (zsk.key_tag,)),
        )
        assert result.installed == (new_zsk.key_tag,) and result.retired == (zsk.key_tag,)
        after = Served(new.host, new.port, ZONE)
        assert after.tags == {ksk.key_tag, zsk.key_tag, new_zsk.key_tag}
        assert after.soa_signers == {new_zsk.key_tag} and after.dnskey_signers == {ksk.key_tag}
        # the keys from 9.18 got their timing record on the first 9.20 apply
        assert sorted(p.name for p in new.key_directory.glob("*.krs-timing")) == sorted(
            f"{k.basename}.krs-timing" for k in (ksk, zsk, new_zsk)
        )
    finally:
        new.stop()
