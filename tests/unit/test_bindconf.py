"""Reading named's configuration as ``named-checkconf -px`` prints it (BIND 9.20 layout: tabs,
one statement per line), and the BIND 9.20 state-file logic, without a running named."""

from __future__ import annotations

from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters import bindstate
from krs_plugin.adapters.bind9 import check_both_roles_per_algorithm, matching_entry
from krs_plugin.adapters.bindconf import parse_named_config, parse_policy_key
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError

# What named-checkconf -px (9.20.30) printed for a configuration with a key-store, a view and two
# policies, trimmed to the statements the adapter reads.
PRINTED = """\
dnssec-policy "kdc" {
\tkeys {
\t\tksk key-directory lifetime unlimited algorithm ecdsap256sha256;
\t\tzsk key-directory lifetime unlimited algorithm 13;
\t\tcsk key-store "hsm" lifetime unlimited algorithm rsasha256 4096 tag-range 0 32767;
\t};
\tmanual-mode yes;
\tpurge-keys P1D;
};
dnssec-policy "auto" {
\tkeys {
\t\tcsk key-directory lifetime P1Y algorithm ed25519;
\t};
};
key-store "hsm" {
\tdirectory "stores/hsm";
};
options {
\tdirectory "/var/cache/bind";
\tkey-directory "/var/lib/bind/keys";
\tdnssec-validation no;
};
zone "example.com" {
\ttype primary;
\tfile "/etc/bind/db.example.com";
\tinline-signing yes;
\tdnssec-policy "kdc";
};
view "outside" {
\tmatch-clients {
\t\t"any";
\t};
\tzone "example.net" IN {
\t\ttype primary;
\t\tfile "db.example.net";
\t\tdnssec-policy "auto";
\t\tkey-directory "keys-net";
\t};
};
"""


def test_policies_key_stores_and_zones_in_views_are_read() -> None:
    config = parse_named_config(PRINTED)
    kdc = config.policies["kdc"]
    assert kdc.manual_mode and not kdc.offline_ksk
    assert [(k.role, k.store, k.algorithm, k.length) for k in kdc.keys] == [
        ("ksk", "key-directory", 13, None),
        ("zsk", "key-directory", 13, None),
        ("csk", "hsm", 8, 4096),
    ]
    assert kdc.keys[2].tag_range == (0, 32767)
    assert not config.policies["auto"].manual_mode
    assert config.policies["auto"].keys[0].lifetime == "P1Y"
    com = config.zone("example.com.")
    net = config.zone("EXAMPLE.NET")
    assert com is not None and net is not None
    assert config.zone_policy(com) == "kdc" and config.zone_policy(net) == "auto"
    assert config.key_directory_of(com) == Path("/var/lib/bind/keys")
    assert config.key_directory_of(net) == Path("/var/cache/bind/keys-net")
    assert config.store_directory(com, kdc.keys[2]) == Path("/var/cache/bind/stores/hsm")


def test_an_unknown_policy_algorithm_is_an_error_naming_it() -> None:
    with pytest.raises(AdapterError, match="unknown dnssec-policy algorithm 'gost'"):
        parse_policy_key("ksk key-directory lifetime unlimited algorithm gost;")


@pytest.mark.parametrize(
    ("role", "algorithm", "flags", "matches"),
    [
        ("KSK", 13, 257, "ksk"),
        ("ZSK", 13, 256, "zsk"),
        ("CSK", 13, 257, None),  # the policy has no csk of algorithm 13
        ("KSK", 15, 257, None),
    ],
)
def test_keys_are_matched_by_role_and_algorithm(
    role: str, algorithm: int, flags: int, matches: str | None
) -> None:
    policy = parse_named_config(PRINTED).policies["kdc"]
    key = generate_key("example.com.", algorithm, flags)
    entry = matching_entry(role, key, policy)
    assert (entry.role if entry else None) == matches


def test_rsa_keys_are_matched_by_length_too() -> None:
    policy = parse_named_config(PRINTED).policies["kdc"]
    short = generate_key("example.com.", 8, 257, rsa_bits=2048)
    assert matching_entry("CSK", short, policy) is None  # the csk entry says 4096


def test_an_algorithm_needs_an_active_key_in_each_role() -> None:
    check_both_roles_per_algorithm([(1, 13, "KSK", True), (2, 13, "ZSK", True)])
    check_both_roles_per_algorithm([(1, 13, "CSK", True)])
    check_both_roles_per_algorithm([(1, 13, "CSK", True), (2, 15, "ZSK", False)])  # inactive
    with pytest.raises(AdapterError, match=r"key 2 \(ZSK, algorithm 15\) would have no active KSK"):
        check_both_roles_per_algorithm([(1, 13, "CSK", True), (2, 15, "ZSK", True)])
    with pytest.raises(AdapterError, match=r"key 1 \(KSK, algorithm 13\) would have no active ZSK"):
        check_both_roles_per_algorithm([(1, 13, "KSK", True), (2, 13, "ZSK", False)])


NOW = 1_800_000_000
ZONE = dns.name.from_text("example.com.")


def named_state(dnskey: str, zrrsig: str) -> str:
    return (
        "; This is the state of key 1, for example.com.\nAlgorithm: 13\nLength: 256\n"
        f"Lifetime: 0\nKSK: no\nZSK: yes\nDNSKEYState: {dnskey}\nZRRSIGState: {zrrsig}\n"
        "GoalState: omnipresent\n"
    )


@pytest.mark.parametrize(
    ("state", "timing", "reset"),
    [
        (None, KeyTiming(NOW, NOW, NOW), "no state file"),
        ("minimal", KeyTiming(NOW, NOW, NOW), "named has not read its state yet"),
        (("rumoured", "rumoured"), KeyTiming(NOW, NOW, NOW), None),
        (("omnipresent", "omnipresent"), KeyTiming(NOW, NOW, NOW), None),
        (("omnipresent", "hidden"), KeyTiming(NOW, NOW, NOW + 60), None),  # not active yet
        (("omnipresent", "hidden"), KeyTiming(NOW, NOW, NOW - 1), "its timing says published and"),
        (("omnipresent", "omnipresent"), KeyTiming(NOW, NOW, NOW, NOW), "published, not signing"),
        (("omnipresent", "unretentive"), KeyTiming(NOW, NOW, NOW, NOW, NOW), "not published"),
        (("unretentive", "hidden"), KeyTiming(NOW, NOW, NOW, NOW, NOW), None),
    ],
)
def test_a_key_is_reset_when_named_believes_otherwise_than_its_timing(
    tmp_path: Path, state: object, timing: KeyTiming, reset: str | None
) -> None:
    key = generate_key(ZONE, 13, 256)
    path = bindstate.state_path(tmp_path, key)
    if state == "minimal":
        path.write_text(bindstate.minimal_state_text(key, "ZSK"))
    elif isinstance(state, tuple):
        path.write_text(named_state(*state))
    reason = bindstate.needs_reset(tmp_path, key, timing, NOW)
    assert (reason is None) == (reset is None), reason
    if reset is not None:
        assert reason is not None and reset in reason


def test_the_minimal_state_carries_the_role_named_needs() -> None:
    csk = generate_key(ZONE, 15, 257)
    text = bindstate.minimal_state_text(csk, "CSK")
    assert text.startswith(";")  # named ignores a key whose .state does not start so
    assert "Algorithm: 15\nLength: 256\n" in text and "KSK: yes\nZSK: yes\n" in text
    rsa = generate_key(ZONE, 8, 257, rsa_bits=3072)
    assert "Length: 3072\n" in bindstate.minimal_state_text(rsa, "KSK")
