"""Crash recovery with named down: ``restore`` puts the key files back without named (it is what
``krs run`` does at start after a crash), and named, started again, serves the old keys."""

from __future__ import annotations

import time

import dns.name

from krs_lab.bind9 import Bind9Lab
from krs_lab.deployment import wait_until
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.keyfiles import KeyFolder
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


def test_restore_with_named_down_brings_the_old_keys_back(bind9_named: Bind9Lab) -> None:
    adapter = Bind9Adapter({**bind9_named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    ksk, zsk, newer = (generate_key(ZONE, 13, f) for f in (257, 256, 256))
    adapter.apply(
        NAME, KeyPlan(NAME, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
    )
    snapshot = adapter.snapshot(NAME)
    adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(newer, "ZSK", timing),), (zsk.key_tag,)))

    bind9_named.stop()
    adapter.restore(NAME, snapshot)  # named does not answer: the files alone
    # The key the undone apply added stays, deleted as of now: named 9.18 keeps serving a key
    # whose files are simply gone (it is in its signed copy), so it must read that.
    timings = {k.key_tag: t for _, k, t in KeyFolder(bind9_named.key_directory).read_keys(NAME)}
    assert set(timings) == {ksk.key_tag, zsk.key_tag, newer.key_tag}
    deleted = timings[newer.key_tag].delete
    assert deleted is not None and deleted <= time.time()
    assert timings[zsk.key_tag].inactive is None  # the old ZSK signs again

    bind9_named.start()
    # named may answer from its signed copy before it has acted on the key files' times (a
    # clean-clone CI run under load asked that early and saw the withdrawn key still there)
    wait_until(
        lambda: Served(bind9_named.host, bind9_named.port, ZONE).tags == {ksk.key_tag, zsk.key_tag},
        30,
        "named to serve the old keys only",
    )
    served = Served(bind9_named.host, bind9_named.port, ZONE)
    assert served.tags == {ksk.key_tag, zsk.key_tag}
    assert served.soa_signers == {zsk.key_tag} and served.dnskey_signers == {ksk.key_tag}

    # the next successful apply deletes the withdrawn key's files
    another = generate_key(ZONE, 13, 256)
    now = int(time.time()) - 1
    adapter.apply(NAME, KeyPlan(NAME, (PlannedKey(another, "ZSK", KeyTiming(now, now, now)),)))
    tags = {k.key_tag for _, k, _ in KeyFolder(bind9_named.key_directory).read_keys(NAME)}
    assert tags == {ksk.key_tag, zsk.key_tag, another.key_tag}
    assert not list(bind9_named.key_directory.glob(f"*{newer.key_tag:05d}*"))
