"""A PowerDNS batch does not read the metadata of a *fresh* zone (unsigned, on a backend that
stores keys, serving no CDS: krs_plugin/adapters/pdnsfresh.py) before it writes, against a real
pdns_server: such a zone whose keys' flags say all their timing costs four API requests (two
keys, one metadata read, a rectify: no metadata written), what an earlier life left in its KRS
metadata is replaced and never acted on, a zone that still serves
the delete records of an earlier marking is read and set right as before, a re-apply changes
nothing, and a failed batch puts every fresh zone back as it was (docs/servers/powerdns.md,
"Many zones in one distribution")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from krs_lab.powerdns import PowerDnsLab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.pdnsfresh import backends_store_keys, backends_store_no_keys
from krs_plugin.adapters.powerdns import PowerDnsAdapter
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey
from krs_plugin.errors import AdapterError
from tests.adapters.servers import Served
from tests.adapters.test_scenarios import key, now_timing

pytestmark = pytest.mark.integration

STALE = "stale.example."  # unsigned, its KRS metadata left by an earlier life: fresh
PLAIN = "plain.example."  # unsigned, no metadata: fresh
DELETED = "deleted.example."  # left DNSSEC through the KRS: still serves the delete records
ZONES = (STALE, PLAIN, DELETED)
TIMING, LEGACY = "X-KRS-KEY-TIMING", "X-KRS-CDS"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[PowerDnsLab]:
    server = PowerDnsLab(tmp_path / "pdns", ZONES)
    server.start()
    try:
        for command in (
            ("set-meta", STALE, LEGACY, "delete"),
            ("set-meta", STALE, TIMING, "1 13 257 1 1 - -", "cds delete"),
            ("set-meta", DELETED, LEGACY, "delete"),
            ("replace-rrset", DELETED, "@", "CDS", "3600", "0 0 0 00"),
            ("replace-rrset", DELETED, "@", "CDNSKEY", "3600", "0 3 0 AA=="),
        ):
            done = server.pdnsutil(*command)
            assert done.returncode == 0, done.stderr
        server.pdns_control("purge")
        yield server
    finally:
        server.stop()


def node(lab: PowerDnsLab) -> PowerDnsAdapter:
    settings = lab.adapter_settings()
    return PowerDnsAdapter(
        {
            "method": "api",
            "api_url": settings["api_url"],
            "api_key_file": settings["api_key_file"],
            "server": settings["server"],
            "verify_timeout": 10,
        },
        zones=[dns.name.from_text(z) for z in ZONES],
    )


def plans(keys: dict[str, tuple[DnssecKey, DnssecKey]]) -> list[KeyPlan]:
    return [
        KeyPlan(
            dns.name.from_text(zone),
            (PlannedKey(ksk, "KSK", now_timing()), PlannedKey(zsk, "ZSK", now_timing())),
        )
        for zone, (ksk, zsk) in keys.items()
    ]


def new_keys() -> dict[str, tuple[DnssecKey, DnssecKey]]:
    return {zone: (key("KSK", zone), key("ZSK", zone)) for zone in ZONES}


def requests(lab: PowerDnsLab, zone: str) -> list[str]:
    """The API requests pdns_server logged for ``zone`` (method and path, loglevel 6)."""
    found = re.findall(r'"(GET|PUT|POST|PATCH|DELETE) (/api/v1/\S+)', lab.log())
    return [f"{method} {path}" for method, path in found if f"/zones/{zone}" in path]


def cds_served(lab: PowerDnsLab, zone: str) -> list[str]:
    """The CDS and CDNSKEY records ``zone`` serves, as text."""
    out = []
    for rdtype in (dns.rdatatype.CDS, dns.rdatatype.CDNSKEY):
        query = dns.message.make_query(zone, rdtype, want_dnssec=True)
        reply = dns.query.tcp(query, lab.host, port=lab.port, timeout=5)
        out += [r.to_text() for rrset in reply.answer if rrset.rdtype == rdtype for r in rrset]
    return out


def meta(lab: PowerDnsLab, zone: str, kind: str) -> list[str]:
    status, reply = lab.api("GET", f"/zones/{zone}/metadata/{kind}")
    return list(reply.get("metadata", [])) if status == 200 else []


def test_a_fresh_zone_costs_four_requests_and_its_stale_marking_is_replaced(
    lab: PowerDnsLab,
) -> None:
    """PLAIN: its keys are published and active from times passed, no CDS marked, and it holds
    no KRS metadata, so no X-KRS-KEY-TIMING is written (the flags say it all); STALE holds the
    metadata of an earlier life, found by the same read and replaced."""
    keys = new_keys()
    batch = plans(keys)  # the same plans again below: their times are part of them
    results = apply_atomically(node(lab), batch)
    assert all(r.changed and r.verification.ok for r in results)
    asked = {zone: requests(lab, zone) for zone in (PLAIN, STALE)}  # checked last
    for zone, (ksk, zsk) in keys.items():
        served = Served(lab.host, lab.port, zone)
        assert served.tags == {ksk.key_tag, zsk.key_tag}
        assert ksk.key_tag in served.dnskey_signers and zsk.key_tag in served.soa_signers
        assert cds_served(lab, zone) == []  # DELETED's delete records are gone too
    assert any(r.endswith(f"/zones/{DELETED}/metadata") for r in requests(lab, DELETED))
    # the marking now travels in X-KRS-KEY-TIMING and says "none": the stale X-KRS-CDS
    # "delete" (left alone, never read again) and the stale timing line are gone from use
    ksk, zsk = keys[STALE]
    (value,) = meta(lab, STALE, TIMING)  # one value, its lines joined by "; "
    timing = value.split("; ")
    assert "cds none" in timing and "cds delete" not in timing
    assert {line.split()[0] for line in timing if line != "cds none"} == {
        str(ksk.key_tag),
        str(zsk.key_tag),
    }
    assert meta(lab, STALE, LEGACY) == ["delete"]
    # a second look, reading everything (the zone is signed now), keeps the marking: nothing
    # to change, no delete records written
    again = apply_atomically(node(lab), batch)
    assert not any(r.changed for r in again)
    assert all(cds_served(lab, zone) == [] for zone in ZONES)
    for zone, writes in ((PLAIN, []), (STALE, [TIMING])):
        assert sorted(r.split("?")[0].rsplit("/", 1)[-1] for r in asked[zone]) == sorted(
            ["cryptokeys", "cryptokeys", "metadata", *writes, "rectify"]
        ), asked[zone]
    assert meta(lab, PLAIN, TIMING) == [] and meta(lab, PLAIN, LEGACY) == []


def test_a_failed_batch_puts_every_fresh_zone_back_as_it_was(
    lab: PowerDnsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = node(lab)
    real_publish = PowerDnsAdapter._publish
    failed: list[dns.name.Name] = []

    def fail_at_the_last_zone(self: PowerDnsAdapter, zone: dns.name.Name) -> None:
        real_publish(self, zone)
        if zone == dns.name.from_text(ZONES[-1]) and not failed:  # its load, not its restore
            failed.append(zone)
            raise AdapterError("rectify refused (test)")

    monkeypatch.setattr(PowerDnsAdapter, "_publish", fail_at_the_last_zone)
    with pytest.raises(AdapterError, match=r"rectify refused.*rolled back"):
        apply_atomically(adapter, plans(new_keys()))
    monkeypatch.undo()
    for zone in ZONES:
        assert lab.cryptokeys(zone) == []
        assert Served(lab.host, lab.port, zone).tags == set()
    assert cds_served(lab, STALE) == [] and cds_served(lab, PLAIN) == []
    assert len(cds_served(lab, DELETED)) == 2  # read before, restored as it was
    # the fresh zones' X-KRS-CDS was never written: as the earlier life left it
    assert meta(lab, STALE, LEGACY) == ["delete"] and meta(lab, PLAIN, LEGACY) == []
    # their X-KRS-KEY-TIMING, replaced by the batch, is removed: the timing of keys STALE no
    # longer had is not kept (docs/servers/powerdns.md)
    assert meta(lab, PLAIN, TIMING) == [] and meta(lab, STALE, TIMING) == []


@pytest.mark.parametrize(
    ("settings", "every", "none"),
    [
        ({"launch": "gsqlite3", "gsqlite3-dnssec": "yes"}, True, False),
        ({"launch": "gsqlite3", "gsqlite3-dnssec": "no"}, False, True),
        ({"launch": "bind", "bind-dnssec-db": "/var/lib/powerdns/dnssec.db"}, True, False),
        ({"launch": "bind", "bind-dnssec-db": ""}, False, True),
        ({"launch": "bind,gmysql", "bind-dnssec-db": "/x.db", "gmysql-dnssec": "yes"}, True, False),
        ({"launch": "bind,gmysql", "bind-dnssec-db": "/x.db", "gmysql-dnssec": "no"}, False, False),
        ({"launch": "gpgsql:second", "gpgsql-second-dnssec": "yes"}, True, False),
        ({"launch": "gpgsql:second", "gpgsql-dnssec": "yes"}, False, True),
        ({"launch": "lmdb"}, False, False),  # not known to the KRS: every zone is read
        ({"launch": ""}, False, False),
    ],
)
def test_fresh_zones_only_where_every_launched_backend_stores_keys(
    settings: dict[str, str], every: bool, none: bool
) -> None:
    assert backends_store_keys(settings) is every
    assert backends_store_no_keys(settings) is none


@pytest.mark.parametrize(
    ("backend", "settings"),
    [("bind", {"bind-dnssec-db": ""}), ("gsqlite3", {"gsqlite3-dnssec": "no"})],
)
def test_a_batch_on_a_backend_without_dnssec_storage_is_refused_before_writing(
    tmp_path: Path, backend: str, settings: dict[str, str]
) -> None:
    # Its zones are listed unsigned like fresh ones: pdns_server's configuration says they are
    # not, and that no zone can take keys (gsqlite3 without gsqlite3-dnssec answers the metadata
    # listing as if it could), so the check refuses them before any zone is written.
    server = PowerDnsLab(tmp_path / "pdns", ZONES, backend, extra_settings=settings)  # type: ignore[arg-type]
    server.start()
    try:
        with pytest.raises(AdapterError, match=r"no DNSSEC storage.*nothing was changed"):
            apply_atomically(node(server), plans(new_keys()))
        requests_made = re.findall(r'"(PUT|POST|PATCH|DELETE) /api/v1/\S+', server.log())
        assert requests_made == []
    finally:
        server.stop()
