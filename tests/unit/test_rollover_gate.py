"""The rollover engine's gate (krs_plugin/kdc/gate.py, docs/lifecycle.md): a step is reached only
when every node confirmed, after the step began, that its server serves exactly what it expects;
the waits count from the last confirmation; a lagging or different node holds it, named."""

from __future__ import annotations

from krs_plugin.kdc.gate import Expected, Served, check_gate

KSK, OLD, NEW = (7892, 13, 257), (6103, 13, 256), (12, 13, 256)
STEP = 1_000  # when the step's distribution was made
EXPECTED = Expected(
    zone="example.com.",
    dnskeys=frozenset({KSK, OLD, NEW}),
    dnskey_signers=frozenset({7892}),
    soa_signers=frozenset({6103}),
    dnskey_ttl=60,
)


def served(read_at: int, *keys: tuple[int, int, int], ttl: int = 60, soa: int = 6103) -> Served:
    return Served(
        read_at=read_at,
        dnskeys=frozenset(keys or (KSK, OLD, NEW)),
        dnskey_signers=frozenset({7892}),
        soa_signers=frozenset({soa}),
        dnskey_ttl=ttl,
    )


def test_reached_when_every_node_serves_it_and_the_wait_starts_at_the_last_confirmation() -> None:
    result = check_gate(
        EXPECTED,
        ["ns1.", "ns2.", "ns3."],
        {"ns1.": served(1_003), "ns2.": served(1_010), "ns3.": served(1_005)},
        since=STEP,
    )
    assert result.reached and result.reached_at == 1_010 and result.lagging == {}
    assert result.largest_dnskey_ttl == 60


def test_a_node_without_a_confirmation_since_the_step_holds_it_whatever_the_others_say() -> None:
    result = check_gate(
        EXPECTED,
        ["ns1.", "ns2.", "ns3."],
        {"ns1.": served(1_003), "ns2.": served(999), "ns3.": None},  # ns2: the previous step
        since=STEP,
    )
    assert not result.reached and result.reached_at is None
    assert result.lagging == {
        "ns2.": "has not confirmed this step yet",
        "ns3.": "has not confirmed this step yet",
    }


def test_a_node_serving_another_key_set_ttl_or_signer_is_named_with_what_it_serves() -> None:
    result = check_gate(
        EXPECTED,
        ["bind.", "knot.", "nsd.", "pdns."],
        {
            "bind.": served(1_001, ttl=3600),  # the key files' TTL, not the policy's
            "knot.": served(1_001, KSK, NEW),  # the old ZSK gone too early
            "nsd.": served(1_001, soa=12),  # signing with the new ZSK already
            "pdns.": served(1_001),
        },
        since=STEP,
    )
    assert not result.reached
    assert result.lagging["bind."] == (
        "serves the DNSKEY RRset with TTL 3600, the policy says 60: every node must serve the "
        "same TTL"
    )
    assert result.lagging["knot."] == "serves DNSKEY {12, 7892}, expected {12, 6103, 7892}"
    assert result.lagging["nsd."] == "signs the SOA with {12}, expected {6103}"
    assert "pdns." not in result.lagging
    assert result.largest_dnskey_ttl == 3600  # every wait uses the largest TTL any node serves


def test_a_node_that_could_not_read_its_server_holds_the_step() -> None:
    broken = Served(1_002, frozenset(), frozenset(), frozenset(), None, error="no answer")
    result = check_gate(EXPECTED, ["ns1."], {"ns1.": broken}, since=STEP)
    assert result.lagging == {"ns1.": "could not read its server: no answer"}


def test_no_nodes_is_never_reached() -> None:
    result = check_gate(EXPECTED, [], {}, since=STEP)
    assert not result.reached and "nothing can confirm" in next(iter(result.lagging.values()))


def test_served_reads_a_confirmation_entry() -> None:
    entry = {
        "zone": "example.com.",
        "read_at": 1_004,
        "dnskey": [[12, 13, 256], [6103, 13, 256], [7892, 13, 257]],
        "dnskey_ttl": 60,
        "dnskey_signers": [7892],
        "soa_signers": [6103],
        "soa_serial": 7,
    }
    state = Served.from_report(entry)
    assert state == served(1_004)
    assert check_gate(EXPECTED, ["n."], {"n.": state}, since=STEP).reached


def test_with_cds_compared_every_node_must_serve_exactly_the_keys_cds_and_cdnskey() -> None:
    """docs/lifecycle.md, "CDS and CDNSKEY on every node": parents refuse CDS sets that differ
    between nameservers, so the gate holds a node that serves another set, an extra digest
    type, or the CDS without its CDNSKEY."""
    want = Expected(**{**EXPECTED.__dict__, "cds": frozenset({(7892, 13)})})

    def with_cds(cds: set[tuple[int, int, int]], cdnskey: set[tuple[int, int, int]]) -> Served:
        return Served(**{**served(1_001).__dict__, "cds": frozenset(cds),
                         "cdnskey": frozenset(cdnskey)})  # fmt: skip

    good = with_cds({(7892, 13, 2)}, {(7892, 13, 257)})
    result = check_gate(
        want,
        ["bind.", "knot.", "nsd.", "pdns."],
        {
            "bind.": good,
            "knot.": with_cds({(7892, 13, 2), (7892, 13, 4)}, {(7892, 13, 257)}),
            "nsd.": with_cds({(7892, 13, 2)}, set()),
            "pdns.": with_cds(set(), set()),
        },
        since=STEP,
    )
    assert result.lagging == {
        "knot.": "serves CDS {7892/2, 7892/4}, expected {7892/2}",
        "nsd.": "serves CDNSKEY nothing, expected {7892}",
        "pdns.": "serves CDS nothing, expected {7892/2}",
    }
    assert check_gate(want, ["bind."], {"bind.": good}, since=STEP).reached
    # cds none: what a server publishes by itself is not compared
    assert check_gate(EXPECTED, ["pdns."], {"pdns.": with_cds(set(), set())}, since=STEP).reached
    assert Served.from_report(
        {"read_at": 5, "cds": [[7892, 13, 2]], "cdnskey": [[7892, 13, 257]]}
    ).cds == frozenset({(7892, 13, 2)})
