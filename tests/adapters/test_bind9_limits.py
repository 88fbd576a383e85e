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


def test_a_second_key_with_a_held_tag_is_refused(bind9_named: Bind9Lab) -> None:
    # named names key files K<zone>+<alg>+<tag>: a different key with a held tag would replace
    # the held key's files. Refused before anything is written.
    adapter = Bind9Adapter({**bind9_named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    by_tag: dict[int, DnssecKey] = {}
    while True:  # about 300 keys until two share a tag
        key = generate_key(ZONE, 13, 257)
        if key.key_tag in by_tag:
            held, twin = by_tag[key.key_tag], key
            break
        by_tag[key.key_tag] = key
    zsk = next(k for k in distinct_keys(3) if k.key_tag != held.key_tag and k.flags == 256)
    adapter.apply(
        NAME, KeyPlan(NAME, (PlannedKey(held, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
    )
    before = {p.name: p.read_bytes() for p in bind9_named.key_directory.iterdir()}

    with pytest.raises(AdapterError, match=f"key {held.key_tag} .* is not the key of that tag"):
        adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(twin, "KSK", timing),)))
    assert {p.name: p.read_bytes() for p in bind9_named.key_directory.iterdir()} == before
    assert Served(bind9_named.host, bind9_named.port, ZONE).dnskey_signers == {held.key_tag}
