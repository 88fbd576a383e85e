"""What named cannot do, refused by the adapter before it writes anything, on 9.18 and 9.20."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import MAX_ZONE_KEYS, Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from krs_plugin.lab.bind9 import Bind9Lab
from tests.adapters.servers import Served, bind9_root

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


@pytest.fixture(params=["bind9.18", "bind9.20"])
def named(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bind9Lab]:
    lab = Bind9Lab(tmp_path / "named", [ZONE], sysroot=bind9_root(request.param == "bind9.20"))
    lab.start()
    yield lab
    lab.stop()


def test_more_keys_than_named_signs_with_are_refused(named: Bind9Lab) -> None:
    # 32 keys: named signs with all of them. A 33rd made both 9.18 and 9.20 stop signing the
    # DNSKEY RRset with the KSK (measured), so the adapter refuses it, touching nothing.
    adapter = Bind9Adapter({**named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    ksk = generate_key(ZONE, 13, 257)
    zsks = [generate_key(ZONE, 13, 256) for _ in range(MAX_ZONE_KEYS - 1)]
    planned = [PlannedKey(ksk, "KSK", timing)] + [PlannedKey(z, "ZSK", timing) for z in zsks]
    adapter.apply(NAME, KeyPlan(NAME, tuple(planned)))
    served = Served(named.host, named.port, ZONE)
    assert len(served.tags) == MAX_ZONE_KEYS and served.dnskey_signers == {ksk.key_tag}
    before = sorted(p.name for p in named.key_directory.iterdir())

    extra = generate_key(ZONE, 13, 256)
    with pytest.raises(AdapterError, match=f"33 keys; named signs with at most {MAX_ZONE_KEYS}"):
        adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(extra, "ZSK", timing),)))
    assert sorted(p.name for p in named.key_directory.iterdir()) == before
    assert Served(named.host, named.port, ZONE).dnskey_signers == {ksk.key_tag}
