"""Control-zone names (docs/protocol.md section 2): building them, and reading them as a KDC
does."""

from __future__ import annotations

import re

import dns.name
import pytest

from krs_plugin.errors import WireError
from krs_plugin.protocol import (
    ChunkQuery,
    check_distribution_id,
    check_node_id,
    chunk_name,
    enroll_name,
    manifest_name,
    notify_name,
    parse_chunk_query,
    parse_notify_name,
)

CZ = "kdc.example.com."
NODE = "cpt.axfr.net."
DIST = "6981284f"


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


# --- the table of section 2 -------------------------------------------------------------------


def test_notify_name_is_distribution_id_below_control_zone():
    assert notify_name(DIST, CZ) == name("6981284f.kdc.example.com.")
    assert notify_name(DIST, CZ).to_text() == "6981284f.kdc.example.com."


def test_manifest_name_is_node_id_then_distribution_id():
    assert manifest_name(NODE, DIST, CZ).to_text() == "cpt.axfr.net.6981284f.kdc.example.com."


def test_chunk_name_prefixes_the_index():
    assert chunk_name(1, NODE, DIST, CZ).to_text() == "1.cpt.axfr.net.6981284f.kdc.example.com."
    assert chunk_name(65535, NODE, DIST, CZ).labels[0] == b"65535"


def test_enroll_name_is_underscore_enroll_below_control_zone():
    assert enroll_name(CZ).to_text() == "_enroll.kdc.example.com."


def test_builders_accept_dnspython_names():
    assert manifest_name(name(NODE), DIST, name(CZ)) == manifest_name(NODE, DIST, CZ)


def test_builders_lowercase_names():
    assert manifest_name("CPT.Axfr.NET.", DIST, "KDC.example.COM.").to_text() == (
        "cpt.axfr.net.6981284f.kdc.example.com."
    )


# --- parsing query names ------------------------------------------------------------------------


def test_manifest_query_parses_to_index_zero():
    query = parse_chunk_query(name("cpt.axfr.net.6981284f.kdc.example.com."), CZ)
    assert query == ChunkQuery(node_id=name(NODE), distribution_id=DIST, index=0)


def test_chunk_query_parses_its_index():
    query = parse_chunk_query(name("17.cpt.axfr.net.6981284f.kdc.example.com."), CZ)
    assert query == ChunkQuery(node_id=name(NODE), distribution_id=DIST, index=17)


@pytest.mark.parametrize("index", [0, 1, 2, 99, 65535])
@pytest.mark.parametrize("node", ["cpt.axfr.net.", "ns1.example.", "a.", "n-1.b2.c3.example.org."])
@pytest.mark.parametrize("dist", ["abcd", "6981284f", "0123456789abcdef"])
def test_built_names_parse_back_to_the_same_parts(index, node, dist):
    qname = manifest_name(node, dist, CZ) if index == 0 else chunk_name(index, node, dist, CZ)
    assert parse_chunk_query(qname, CZ) == ChunkQuery(name(node), dist, index)


def test_query_names_are_case_insensitive_like_dns():
    # Resolvers may randomise case (DNS 0x20); the parts come back canonical.
    query = parse_chunk_query(name("2.CPT.axfr.NET.6981284F.Kdc.Example.com."), CZ)
    assert query == ChunkQuery(name(NODE), DIST, 2)


def test_notify_name_parses_to_its_distribution_id():
    assert parse_notify_name(name("6981284f.kdc.example.com."), CZ) == DIST
    assert parse_notify_name(notify_name("abcd", CZ), name(CZ)) == "abcd"


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dist_id",
    [
        "6981284F",  # uppercase
        "abc",  # too short
        "0123456789abcdef0",  # too long
        "69812g4f",  # not hex
        "",
        "69 81",
        "-abc",
    ],
)
def test_rejects_bad_distribution_id(dist_id):
    with pytest.raises(WireError, match="must be 4 to 16 lowercase hex characters"):
        check_distribution_id(dist_id)
    with pytest.raises(WireError, match="distribution id"):
        notify_name(dist_id, CZ)
    with pytest.raises(WireError, match="distribution id"):
        manifest_name(NODE, dist_id, CZ)


@pytest.mark.parametrize(
    "qname",
    [
        "cpt.axfr.net.abc.kdc.example.com.",  # too short
        "cpt.axfr.net.0123456789abcdef0.kdc.example.com.",  # too long
        "cpt.axfr.net.69812g4f.kdc.example.com.",  # not hex
        "1.cpt.axfr.net.xyz1.kdc.example.com.",
    ],
)
def test_rejects_query_with_bad_distribution_id(qname):
    with pytest.raises(WireError, match=r"distribution id .* must be 4 to 16 lowercase hex"):
        parse_chunk_query(name(qname), CZ)


@pytest.mark.parametrize("node", ["123.example.", "1.", "0.cpt.axfr.net."])
def test_rejects_node_id_with_all_digit_first_label(node):
    with pytest.raises(WireError, match="all-digit label"):
        check_node_id(node)
    with pytest.raises(WireError, match="chunk index"):
        manifest_name(node, DIST, CZ)


def test_rejects_query_whose_node_id_starts_with_digits():
    # "1.2.example.<dist>.<cz>": chunk 1 of node "2.example.", which is not a valid node id.
    with pytest.raises(WireError, match="all-digit label '2'"):
        parse_chunk_query(name("1.2.example.6981284f.kdc.example.com."), CZ)


def test_rejects_node_id_without_trailing_dot():
    with pytest.raises(WireError, match="fully qualified"):
        check_node_id("cpt.axfr.net")


def test_rejects_root_as_node_id():
    with pytest.raises(WireError, match="root"):
        check_node_id(".")


@pytest.mark.parametrize(
    "qname",
    [
        "cpt.axfr.net.6981284f.kdc.example.org.",
        "cpt.axfr.net.6981284f.example.com.",
        "kdc.example.com.",
        "com.",
    ],
)
def test_rejects_query_names_outside_the_control_zone(qname):
    with pytest.raises(WireError, match=re.escape("not below the control zone kdc.example.com.")):
        parse_chunk_query(name(qname), CZ)


def test_rejects_query_without_node_id():
    with pytest.raises(WireError, match="lacks a node id"):
        parse_chunk_query(name("6981284f.kdc.example.com."), CZ)
    with pytest.raises(WireError, match="lacks a node id"):
        parse_chunk_query(name("3.6981284f.kdc.example.com."), CZ)


def test_rejects_chunk_index_beyond_u16():
    with pytest.raises(WireError, match="chunk index 65536"):
        parse_chunk_query(name("65536.cpt.axfr.net.6981284f.kdc.example.com."), CZ)
    with pytest.raises(WireError, match=re.escape("chunk index 0 is outside 1..65535")):
        chunk_name(0, NODE, DIST, CZ)
    with pytest.raises(WireError, match="chunk index 65536"):
        chunk_name(65536, NODE, DIST, CZ)


def test_rejects_notify_name_with_extra_labels():
    with pytest.raises(WireError, match=re.escape("must be <distribution-id>.kdc.example.com.")):
        parse_notify_name(name("cpt.axfr.net.6981284f.kdc.example.com."), CZ)
    with pytest.raises(WireError, match="must be <distribution-id>"):
        parse_notify_name(name("kdc.example.com."), CZ)


def test_rejects_notify_name_outside_the_control_zone():
    with pytest.raises(WireError, match="not below the control zone"):
        parse_notify_name(name("6981284f.kdc.example.org."), CZ)


def test_rejects_notify_name_with_bad_distribution_id():
    with pytest.raises(WireError, match="lowercase hex"):
        parse_notify_name(name("zzzz.kdc.example.com."), CZ)


def test_rejects_relative_control_zone():
    with pytest.raises(
        WireError, match=re.escape("control zone 'kdc.example.com' must be a fully qualified")
    ):
        notify_name(DIST, "kdc.example.com")


def test_rejects_names_longer_than_255_octets():
    long_node = ".".join(["a" * 63] * 3 + ["b" * 50]) + "."  # 244 octets: a valid node id
    assert check_node_id(long_node) == name(long_node)
    with pytest.raises(WireError, match="name too long"):
        manifest_name(long_node, DIST, CZ)
    with pytest.raises(WireError, match="name too long"):
        chunk_name(1, long_node, DIST, CZ)
