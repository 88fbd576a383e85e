"""The pure side of seeing the DS (krs_plugin/kdc/parent.py): the DS step rule the engine
applies to a view, addresses, trust anchors and DS lines."""

from __future__ import annotations

import pytest

from krs_plugin.kdc.parent import (
    AddressView,
    ParentConfig,
    ParentView,
    ds_step_state,
    ds_tuples,
    largest_ttl,
    observe,
    parse_anchor,
    split_address,
)

NEW = (11111, 13, 2, "aa" * 32)
OLD = (22222, 13, 2, "bb" * 32)


def view(*addresses: AddressView, error: str | None = None) -> ParentView:
    return ParentView("child.lab.example.", "lab.example.", 0, addresses, error)


def at(address: str, *ds: tuple[int, int, int, str], ttl: int = 60) -> AddressView:
    return AddressView(address, "ns1.lab.example.", frozenset(ds), ttl if ds else None, None)


def failed(address: str, error: str) -> AddressView:
    return AddressView(address, "agent", None, None, error)


def test_new_seen_and_old_gone_only_when_every_address_agrees() -> None:
    both = view(at("127.0.0.1:53", NEW), at("[::1]:53", NEW))
    assert ds_step_state(both, {NEW}, {OLD})[:2] == (True, True)

    lagging = view(at("127.0.0.1:53", NEW), at("[::1]:53", OLD))
    seen, gone, why = ds_step_state(lagging, {NEW}, {OLD})
    assert (seen, gone) == (False, False)
    assert "not yet at [::1]:53 (ns1.lab.example.)" in why
    assert "old DS 22222/13/2 still at [::1]:53" in why
    assert "127.0.0.1" not in why

    double = view(at("127.0.0.1:53", NEW, OLD), at("[::1]:53", NEW, OLD))
    assert ds_step_state(double, {NEW}, {OLD})[:2] == (True, False)


def test_an_error_at_one_address_holds_both_and_is_named() -> None:
    one_bogus = view(at("127.0.0.1:53", NEW), failed("127.0.0.1:54", "bogus signature"))
    seen, gone, why = ds_step_state(one_bogus, {NEW}, {OLD})
    assert (seen, gone) == (False, False)
    assert why == "127.0.0.1:54: bogus signature"


def test_validated_absence_counts_as_gone_and_a_view_error_as_nothing() -> None:
    assert ds_step_state(view(at("127.0.0.1:53")), set(), {OLD})[:2] == (True, True)
    assert ds_step_state(view(at("127.0.0.1:53")), {NEW}, set())[:2] == (False, True)
    assert ds_step_state(view(error="timeout"), set(), set()) == (
        False,
        False,
        "parent of child.lab.example.: timeout",
    )
    assert ds_step_state(view(), set(), set())[:2] == (False, False)


def test_digests_compare_case_insensitively() -> None:
    upper = (NEW[0], NEW[1], NEW[2], NEW[3].upper())
    assert ds_step_state(view(at("127.0.0.1:53", NEW)), {upper}, set())[0]


def test_largest_ttl() -> None:
    assert largest_ttl(view(at("a", NEW, ttl=60), at("b", NEW, ttl=3600), at("c"))) == 3600
    assert largest_ttl(view(at("c"))) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5300", ("127.0.0.1", 5300)),
        ("[::1]:53", ("::1", 53)),
        ("[::1]", ("::1", 53)),
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("::1", ("::1", 53)),
    ],
)
def test_split_address(text: str, expected: tuple[str, int]) -> None:
    assert split_address(text) == expected


@pytest.mark.parametrize("text", ["ns1.example:53", "127.0.0.1:0", "[::1]x", "1.2.3.4:http"])
def test_split_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        split_address(text)


def test_parse_anchor_takes_ds_and_dnskey_of_one_zone() -> None:
    owner, records = parse_anchor(
        "; the parent\n"
        f"lab.example. IN DS {NEW[0]} 13 2 {NEW[3]}\n"
        "lab.example. 3600 IN DNSKEY 257 3 13 "
        "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n"
    )
    assert str(owner) == "lab.example."
    assert len(records) == 2
    with pytest.raises(ValueError, match=r"line 2: other\.example\. is not lab\.example\."):
        parse_anchor(f"lab.example. DS {NEW[0]} 13 2 {NEW[3]}\nother.example. DS 1 13 2 {OLD[3]}")
    with pytest.raises(ValueError, match="not a DS or DNSKEY"):
        parse_anchor("lab.example. IN A 192.0.2.1")
    with pytest.raises(ValueError, match="no DS or DNSKEY"):
        parse_anchor("; nothing\n")


def test_ds_tuples_from_zone_ds_lines_and_bare_rdata() -> None:
    lines = [
        "; DS for the parent",
        f"child.lab.example. IN DS {NEW[0]} 13 2 {NEW[3].upper()}",
        f"child.lab.example. 60 IN DS {OLD[0]} 13 2 {OLD[3]}",
        f"{NEW[0]} 13 2 {NEW[3]}",
    ]
    assert ds_tuples(lines) == {NEW, OLD}


def test_observe_names_configuration_problems_without_asking() -> None:
    anchor = f"lab.example. IN DS {NEW[0]} 13 2 {NEW[3]}"
    cases = {
        ParentConfig(agents=("127.0.0.1:53",)): (
            "cannot validate: no trust anchor for the parent and no resolver"
        ),
        ParentConfig(trust_anchor=anchor): (
            "no parental agents and no resolver to find the parent's servers"
        ),
        ParentConfig(agents=("127.0.0.1:53",), trust_anchor="lab.example. IN A 192.0.2.1"): (
            "trust anchor line 1: not a DS or DNSKEY record"
        ),
    }
    for config, error in cases.items():
        view = observe("child.lab.example.", config)
        assert (view.error, view.addresses) == (error, ()), config
    other = observe(
        "child.other.example.", ParentConfig(agents=("127.0.0.1:53",), trust_anchor=anchor)
    )
    assert other.error == "child.other.example. is not below the parent zone lab.example."
    assert observe("bad..name", ParentConfig()).error is not None


def test_the_old_ds_named_is_what_the_address_still_serves_not_every_digest_looked_for() -> None:
    """The engine looks for the old KSK's DS in every digest type; status names only those the
    lagging address serves."""
    from krs_plugin.kdc.parent import AddressView, ParentView, ds_step_state

    old = {(45040, 13, d, f"{d:02x}" * 4) for d in (1, 2, 4)}
    lagging = AddressView("[::1]:53", "agent", frozenset({(45040, 13, 2, "02" * 4)}), 60, None)
    view = ParentView("child.example.", "example.", 0, (lagging,), None)
    _, gone, why = ds_step_state(view, set(), old)
    assert not gone and why == "old DS 45040/13/2 still at [::1]:53"
