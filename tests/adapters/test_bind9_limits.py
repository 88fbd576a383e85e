"""What named cannot do, refused by the adapter before it writes anything, on 9.18 and 9.20."""

from __future__ import annotations

import time

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import MAX_ZONE_KEYS, Bind9Adapter
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from tests.adapters.servers import Served

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


def distinct_keys(count: int) -> list[DnssecKey]:
    """A KSK then ZSKs, no two with one tag (33 random keys share a tag about once in 120
    runs; the KDC never makes such a pair, keygen.new_key)."""
    keys: dict[int, DnssecKey] = {}
    while len(keys) < count:
        key = generate_key(ZONE, 13, 257 if not keys else 256)
        keys.setdefault(key.key_tag, key)
    return list(keys.values())


def test_more_keys_than_named_signs_with_are_refused(bind9_named: Bind9Lab) -> None:
    # 32 keys: named signs with all of them. A 33rd made both 9.18 and 9.20 stop signing the
    # DNSKEY RRset with the KSK (measured), so the adapter refuses it, touching nothing.
    adapter = Bind9Adapter({**bind9_named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    keys = distinct_keys(MAX_ZONE_KEYS + 1)
    ksk, zsks, extra = keys[0], keys[1:-1], keys[-1]
    planned = [PlannedKey(ksk, "KSK", timing)] + [PlannedKey(z, "ZSK", timing) for z in zsks]
    adapter.apply(NAME, KeyPlan(NAME, tuple(planned)))
    served = Served(bind9_named.host, bind9_named.port, ZONE)
    assert len(served.tags) == MAX_ZONE_KEYS and served.dnskey_signers == {ksk.key_tag}
    before = sorted(p.name for p in bind9_named.key_directory.iterdir())

    with pytest.raises(AdapterError, match=f"33 keys; named signs with at most {MAX_ZONE_KEYS}"):
        adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(extra, "ZSK", timing),)))
    assert sorted(p.name for p in bind9_named.key_directory.iterdir()) == before
    assert Served(bind9_named.host, bind9_named.port, ZONE).dnskey_signers == {ksk.key_tag}
