"""A whole ZSK rollover at the payload's times, on BIND 9.18 (auto-dnssec: named acts on the key
times itself) and BIND 9.20 (manual-mode: the KRS's ``maintain()`` has named act at each time):
publish, activate with retire, remove, each step validated over DNS with dnspython, and on 9.20
named's own key states (``rndc dnssec -status``) matching the KDC's timing."""

from __future__ import annotations

import re
import time

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)
STEP = 8  # seconds between the rollover's key times


def run_maintenance_until(adapter: Bind9Adapter, moment: float) -> None:
    """What ``krs run``'s maintenance loop does: call maintain() and sleep as long as it says."""
    while (left := moment - time.time()) > 0:
        time.sleep(min(adapter.maintain(), left))


def named_key_states(lab: Bind9Lab) -> dict[int, tuple[bool, bool]]:
    """tag -> (published, signing) as ``rndc dnssec -status`` reports it."""
    out = lab.rndc("dnssec", "-status", ZONE)
    states = {}
    for block in out.split("\nkey: ")[1:]:
        tag = int(block.split()[0])
        published = re.search(r"published:\s+yes", block) is not None
        signing = re.search(r"(zone|key) signing:\s+yes", block) is not None
        states[tag] = (published, signing)
    return states


def test_zsk_rollover_follows_the_payloads_times(bind9_named: Bind9Lab) -> None:
    adapter = Bind9Adapter({**bind9_named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    t0 = int(time.time())
    ksk, old, new = (generate_key(ZONE, 13, f) for f in (257, 256, 256))
    start = KeyTiming(created=t0 - 7200, publish=t0 - 7200, activate=t0 - 7200)
    adapter.apply(
        NAME, KeyPlan(NAME, (PlannedKey(ksk, "KSK", start), PlannedKey(old, "ZSK", start)))
    )

    # One distribution carries the whole rollover: the new ZSK published now (pre-published
    # long enough ago that 9.18 does not delay its activation by the DNSKEY TTL), active at
    # t1; the old one inactive at t1 and deleted at t2.
    t1, t2 = t0 + STEP, t0 + 2 * STEP
    rolled_old = KeyTiming(t0 - 7200, t0 - 7200, t0 - 7200, inactive=t1, delete=t2)
    rolled_new = KeyTiming(t0, t0 - 3600, t1)
    plan = KeyPlan(NAME, (PlannedKey(old, "ZSK", rolled_old), PlannedKey(new, "ZSK", rolled_new)))
    adapter.apply(NAME, plan)

    ksk_tag, old_tag, new_tag = ksk.key_tag, old.key_tag, new.key_tag
    # each step: (published keys, SOA signers), then named's own (published, signing) per key
    assert_step(
        bind9_named,
        {ksk_tag, old_tag, new_tag},
        {old_tag},
        {old_tag: (True, True), new_tag: (True, False)},
    )

    run_maintenance_until(adapter, t1 + 3)  # the retired ZSK signs nothing
    assert_step(
        bind9_named,
        {ksk_tag, old_tag, new_tag},
        {new_tag},
        {old_tag: (True, False), new_tag: (True, True)},
    )

    run_maintenance_until(adapter, t2 + 3)
    assert_step(
        bind9_named, {ksk_tag, new_tag}, {new_tag}, {old_tag: (False, False), new_tag: (True, True)}
    )


def assert_step(
    lab: Bind9Lab, tags: set[int], soa_signers: set[int], zsk_states: dict[int, tuple[bool, bool]]
) -> None:
    """What named serves, validated (the one KSK signing DNSKEY), and on 9.20 what it believes
    of each key (the KSK published and signing throughout)."""
    served = Served(lab.host, lab.port, ZONE)
    ksk_tags = tags - set(zsk_states)
    assert served.tags == tags
    assert served.soa_signers == soa_signers and served.dnskey_signers == ksk_tags
    if lab.uses_policy:
        states = named_key_states(lab)
        assert {tag: states[tag] for tag in ksk_tags} == dict.fromkeys(ksk_tags, (True, True))
        assert {tag: states[tag] for tag in zsk_states} == zsk_states
