"""A key that signs while its DNSKEY is not published (activate past, no publish time): what
every server must serve (dnscheck), Knot's pre_active/post_active times, and the same-algorithm
conflicts PowerDNS and ldns-signzone refuse."""

from __future__ import annotations

import dns.name

from krs_plugin.adapters.dnscheck import (
    KeyState,
    expectation,
    is_published,
    same_algorithm_unpublished,
    signs_unpublished,
)
from krs_plugin.adapters.knotctl import KaspKey, full_times, knot_times
from krs_plugin.dnssec import KeyTiming, generate_key

NOW = 1_800_000_000
ZONE = dns.name.from_text("example.com.")
PUBLISHED = KeyTiming(publish=NOW - 99, activate=NOW - 99)
HIDDEN = KeyTiming(activate=NOW - 99)


def test_activate_past_without_publish_signs_unpublished() -> None:
    assert signs_unpublished(HIDDEN, NOW) and not is_published(HIDDEN, NOW)
    # every other timing as before
    assert is_published(KeyTiming(), NOW)
    assert is_published(KeyTiming(activate=NOW + 9), NOW)
    assert is_published(KeyTiming(publish=NOW + 9, activate=NOW - 9), NOW)
    assert not signs_unpublished(PUBLISHED, NOW)
    retired = KeyTiming(activate=NOW - 99, inactive=NOW - 9)
    assert not signs_unpublished(retired, NOW) and not is_published(retired, NOW)
    assert not signs_unpublished(KeyTiming(activate=NOW - 99, delete=NOW - 9), NOW)


def test_expectation_of_an_algorithm_rollover() -> None:
    new_ksk, new_zsk = generate_key("example.com.", 15, 257), generate_key("example.com.", 15, 256)
    keys = [
        KeyState(1, 257, PUBLISHED, algorithm=13),
        KeyState(2, 256, PUBLISHED, algorithm=13),
        KeyState(new_ksk.key_tag, 257, HIDDEN, new_ksk.dnskey),
        KeyState(new_zsk.key_tag, 256, HIDDEN, new_zsk.dnskey),
    ]
    expect = expectation(ZONE, keys, (), NOW)
    assert expect.present == {1, 2}
    assert expect.absent == {new_ksk.key_tag, new_zsk.key_tag}
    assert expect.soa_signers == {2, new_zsk.key_tag}
    assert expect.dnskey_signers == {1}  # the unpublished KSK may sign it, or not
    assert set(expect.hidden) == {new_ksk.dnskey, new_zsk.dnskey}


def test_expectation_of_an_unpublished_csk() -> None:
    csk = generate_key("example.com.", 15, 257)
    keys = [
        KeyState(1, 257, PUBLISHED, algorithm=13),
        KeyState(2, 256, PUBLISHED, algorithm=13),
        KeyState(csk.key_tag, 257, HIDDEN, csk.dnskey),
    ]
    assert expectation(ZONE, keys, (), NOW).soa_signers == {2, csk.key_tag}


def test_same_algorithm_conflicts() -> None:
    old = [KeyState(1, 257, PUBLISHED, algorithm=13), KeyState(2, 256, PUBLISHED, algorithm=13)]
    assert same_algorithm_unpublished([*old, KeyState(3, 256, HIDDEN, algorithm=15)], NOW) == []
    assert same_algorithm_unpublished([*old, KeyState(3, 256, HIDDEN, algorithm=13)], NOW) == [
        (3, 2, 13)
    ]
    csk = [KeyState(1, 257, PUBLISHED, algorithm=13)]
    assert same_algorithm_unpublished([*csk, KeyState(3, 256, HIDDEN, algorithm=13)], NOW) == [
        (3, 1, 13)
    ]
    # an unpublished KSK next to a published ZSK of its algorithm only: no role shared
    zsk = [KeyState(2, 256, PUBLISHED, algorithm=13)]
    assert same_algorithm_unpublished([*zsk, KeyState(3, 257, HIDDEN, algorithm=13)], NOW) == []


def kasp(times: tuple[int, ...]) -> KaspKey:
    return KaspKey("id", 1, 15, False, True, False, full_times(times))


def test_knot_pre_active_for_a_key_never_published() -> None:
    times = knot_times(HIDDEN, NOW)
    assert times == (0, 0, 0, 0, 0, NOW - 99, 0)
    key = kasp(times)
    assert key.unpublished and key.timing == KeyTiming(activate=NOW - 99)
    assert knot_times(HIDDEN, NOW, existing=key) == times  # applied again: no change
    # published later (step 2): pre_active cleared
    assert knot_times(KeyTiming(NOW, NOW, NOW), NOW, existing=key) == (NOW, 0, NOW, 0, 0, 0, 0)


def test_knot_post_active_for_a_key_that_was_published() -> None:
    was = kasp((NOW - 99, 0, NOW - 99, 0, 0))
    times = knot_times(HIDDEN, NOW, existing=was)
    assert times == (NOW - 99, 0, NOW - 99, 0, 0, 0, NOW)
    key = kasp(times)
    assert key.unpublished and key.timing == KeyTiming(activate=NOW - 99)
    assert knot_times(HIDDEN, NOW + 50, existing=key) == times  # kept as it is
    # retired: Knot holds a post-active key with a retire time invalid, so it leaves by remove
    assert key.retimed(NOW + 60, 0) == (NOW - 99, 0, NOW - 99, 0, NOW + 60, 0, NOW)


def test_knot_times_of_other_timings_unchanged() -> None:
    assert knot_times(PUBLISHED, NOW) == (NOW - 99, 0, NOW - 99, 0, 0, 0, 0)
    assert knot_times(KeyTiming(), NOW) == (NOW, 0, 0, 0, 0, 0, 0)
    assert knot_times(KeyTiming(activate=NOW + 9), NOW) == (NOW + 9, 0, NOW + 9, 0, 0, 0, 0)
    assert full_times((1, 2, 3, 4)) == (1, 0, 2, 3, 4, 0, 0)
    assert full_times((1, 2, 3, 4, 5)) == (1, 2, 3, 4, 5, 0, 0)
