"""What the servers must show for a key set: the retired keys are named, to be checked unsigned."""

from __future__ import annotations

import dns.name

from krs_plugin.adapters.dnscheck import KeyState, expectation
from krs_plugin.dnssec import KeyTiming

ZONE = dns.name.from_text("example.com.")
NOW = 1_800_000_000


def test_a_key_past_its_inactive_time_is_retired_published_and_no_signer() -> None:
    keys = [
        KeyState(1, 257, KeyTiming(publish=NOW - 10, activate=NOW - 10)),
        KeyState(2, 256, KeyTiming(publish=NOW - 10, activate=NOW - 10, inactive=NOW)),
        KeyState(3, 256, KeyTiming(publish=NOW - 10, activate=NOW - 10)),
    ]
    expect = expectation(ZONE, keys, (), NOW)
    assert expect.retired == {2}
    assert expect.present == {1, 2, 3}
    assert expect.soa_signers == {3} and expect.dnskey_signers == {1}


def test_keys_not_yet_inactive_or_never_active_or_deleted_are_not_retired() -> None:
    keys = [
        KeyState(1, 256, KeyTiming(publish=NOW, activate=NOW, inactive=NOW + 1)),
        KeyState(2, 256, KeyTiming(publish=NOW, inactive=NOW)),  # never active
        KeyState(3, 256, KeyTiming(publish=NOW - 9, activate=NOW - 9, inactive=NOW, delete=NOW)),
    ]
    expect = expectation(ZONE, keys, (), NOW)
    assert expect.retired == frozenset()
    assert 3 in expect.absent
