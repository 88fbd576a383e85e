"""An algorithm rollover's first step, a key that signs while its DNSKEY is not published (an
Activate time and no Publish time), is refused by the BIND adapter on both generations: named
9.18 and 9.20 sign only with keys of the DNSKEY RRset they serve (docs/lifecycle.md, "Algorithm
rollover"; lab/experiments/unpublished_signing*.sh)."""

from __future__ import annotations

import time

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import ApplyFailed, KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


def test_signing_with_an_unpublished_key_is_refused(bind9_named: Bind9Lab) -> None:
    krs = Bind9Adapter({**bind9_named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 60
    at = KeyTiming(now, now, now)
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    krs.apply(NAME, KeyPlan(NAME, (PlannedKey(ksk, "KSK", at), PlannedKey(zsk, "ZSK", at))))
    new = generate_key(ZONE, 15, 257)
    unpublished = KeyTiming(created=now, activate=now)
    install = (PlannedKey(ksk, "KSK", at), PlannedKey(zsk, "ZSK", at))
    install += (PlannedKey(new, "CSK", unpublished),)
    files = sorted(p.name for p in bind9_named.key_directory.iterdir())
    with pytest.raises(ApplyFailed, match=f"key {new.key_tag} .*not published") as refused:
        krs.apply(NAME, KeyPlan(NAME, install))
    assert "nothing was changed" in str(refused.value)
    assert sorted(p.name for p in bind9_named.key_directory.iterdir()) == files
    assert Served(bind9_named.host, bind9_named.port, ZONE).tags == {ksk.key_tag, zsk.key_tag}
