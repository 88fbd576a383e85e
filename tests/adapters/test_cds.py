"""CDS and CDNSKEY from the distribution's ``cds`` (docs/payload.md), against the real servers.

Each case applies plans as the KRS does and asks the running server over TCP with dnspython:
the CDS set must be exactly the keys marked ``publish`` (digest type 2, one CDNSKEY per key),
signed with a valid RRSIG, or the RFC 8078 delete records; the same on every server.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.cdsset import DELETE_CDNSKEY, DELETE_CDS
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from tests.adapters.servers import (
    KnotServerLab,
    NsdLdnsServerLab,
    NsdServerLab,
    PowerDnsBindServerLab,
    PowerDnsServerLab,
    PowerDnsUtilBindServerLab,
    PowerDnsUtilServerLab,
    ServerLab,
)

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)
CDS_LABS: dict[str, Any] = {
    "knot": KnotServerLab,
    "nsd": NsdServerLab,
    "nsd-ldns": NsdLdnsServerLab,
    "powerdns-api": PowerDnsServerLab,
    "powerdns-pdnsutil": PowerDnsUtilServerLab,
    "powerdns-api-bind": PowerDnsBindServerLab,
    "powerdns-pdnsutil-bind": PowerDnsUtilBindServerLab,
}


@pytest.fixture(params=sorted(CDS_LABS))
def cds_lab(request: pytest.FixtureRequest) -> Iterator[ServerLab]:
    root = Path(tempfile.mkdtemp(prefix=f"krs-cds-{request.param}-"))
    os.chmod(root, 0o755)
    server = CDS_LABS[request.param](root / "server")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def key(role: str, algorithm: int = 13) -> DnssecKey:
    return generate_key(ZONE, algorithm, 256 if role == "ZSK" else 257)


def planned(k: DnssecKey, role: str, cds: str | None = None) -> PlannedKey:
    now = int(time.time()) - 1
    return PlannedKey(k, role, KeyTiming(now, now, now), cds)  # type: ignore[arg-type]


def plan(*keys: PlannedKey) -> KeyPlan:
    return KeyPlan(NAME, keys)


class CdsServed:
    """The zone's DNSKEY, CDS and CDNSKEY RRsets over TCP, and whose RRSIGs over them validate."""

    def __init__(self, lab: ServerLab) -> None:
        self.dnskey, self.dnskey_sigs = self._get(lab, dns.rdatatype.DNSKEY)
        self.cds_rrset, cds_sigs = self._get(lab, dns.rdatatype.CDS)
        self.cdnskey_rrset, cdnskey_sigs = self._get(lab, dns.rdatatype.CDNSKEY)
        self.dnskey_signers = self._valid(self.dnskey, self.dnskey_sigs)
        self.cds_signers = self._valid(self.cds_rrset, cds_sigs)
        self.cdnskey_signers = self._valid(self.cdnskey_rrset, cdnskey_sigs)

    @staticmethod
    def _get(lab: ServerLab, rdtype: dns.rdatatype.RdataType):  # type: ignore[no-untyped-def]
        query = dns.message.make_query(NAME, rdtype, want_dnssec=True)
        query.flags = 0
        reply = dns.query.tcp(query, lab.host, port=lab.port, timeout=3)
        rrset = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, rdtype)
        sigs = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
        return rrset, sigs

    def _valid(self, rrset, sigs) -> set[int]:  # type: ignore[no-untyped-def]
        if rrset is None or sigs is None or self.dnskey is None:
            return set()
        valid = set()
        for sig in sigs:
            try:
                dns.dnssec.validate_rrsig(rrset, sig, {NAME: self.dnskey})
            except dns.exception.ValidationFailure:
                continue
            valid.add(sig.key_tag)
        return valid

    @property
    def cds(self) -> set[tuple[int, int, int]]:
        rrset = self.cds_rrset or []
        return {(r.key_tag, int(r.algorithm), r.digest_type) for r in rrset}

    @property
    def cdnskey(self) -> set[tuple[int, int, int]]:
        rrset = self.cdnskey_rrset or []
        return {(dns.dnssec.key_id(r), int(r.algorithm), r.flags) for r in rrset}


def assert_cds_of(lab: ServerLab, *ksks: DnssecKey) -> CdsServed:
    """The zone serves exactly the CDS (digest 2, the right digest) and CDNSKEY of ``ksks``,
    each RRset with a valid RRSIG."""
    now = CdsServed(lab)
    assert now.cds == {(k.key_tag, k.algorithm, 2) for k in ksks}
    assert now.cdnskey == {(k.key_tag, k.algorithm, 257) for k in ksks}
    expected = {dns.dnssec.make_ds(NAME, k.dnskey, "SHA256").digest for k in ksks}
    assert {r.digest for r in now.cds_rrset or []} == expected
    if ksks:
        assert now.cds_signers and now.cdnskey_signers
    return now


def test_marked_ksk_has_its_cds_served_and_unmarking_withdraws_it(cds_lab: ServerLab) -> None:
    adapter = cds_lab.adapter()
    ksk, zsk = key("KSK"), key("ZSK")
    first = plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK"))
    result = adapter.apply(NAME, first)
    assert_cds_of(cds_lab, ksk)
    assert result.served is not None
    assert result.served["cds"] == [[ksk.key_tag, 13, 2]]
    assert result.served["cdnskey"] == [[ksk.key_tag, 13, 257]]

    # the same keys and times, cds no longer asked: a change, and the CDS is gone
    unmarked = plan(*(dataclasses.replace(p, cds=None) for p in first.install))
    result = adapter.apply(NAME, unmarked)
    assert result.changed and result.installed == (ksk.key_tag,)
    now = assert_cds_of(cds_lab)
    assert now.cds_rrset is None and now.cdnskey_rrset is None
    assert now.dnskey_signers == {ksk.key_tag}

    # re-applying the same plan changes nothing
    assert not adapter.apply(NAME, unmarked).changed


def test_two_ksks_signing_only_the_marked_one_has_cds(cds_lab: ServerLab) -> None:
    # The double-KSK DS step: old and new KSK both sign the DNSKEY RRset, the new one's CDS is
    # served, the old one's not.
    adapter = cds_lab.adapter()
    old, new, zsk = key("KSK"), key("KSK"), key("ZSK")
    adapter.apply(NAME, plan(planned(old, "KSK", "publish"), planned(zsk, "ZSK")))
    assert_cds_of(cds_lab, old)
    step = plan(planned(old, "KSK"), planned(zsk, "ZSK"), planned(new, "KSK", "publish"))
    if cds_lab.name.endswith("-bind"):
        # PowerDNS's bind backend holds no records the KRS can write, and its PUBLISH-CDS
        # metadata would serve both KSKs' CDS: refused, naming why
        with pytest.raises(AdapterError, match="holds no CDS records the KRS can write"):
            adapter.apply(NAME, step)
        return
    adapter.apply(NAME, step)
    now = assert_cds_of(cds_lab, new)
    assert now.dnskey_signers == {old.key_tag, new.key_tag}


def test_csk_marked_has_its_cds_served(cds_lab: ServerLab) -> None:
    csk = key("CSK")
    cds_lab.adapter().apply(NAME, plan(planned(csk, "CSK", "publish")))
    assert_cds_of(cds_lab, csk)


def test_delete_serves_the_rfc8078_delete_records(cds_lab: ServerLab) -> None:
    if isinstance(cds_lab, KnotServerLab):
        pytest.skip("Knot: test_knot_delete_needs_a_delete_dnssec_policy")
    adapter = cds_lab.adapter()
    ksk, zsk = key("KSK"), key("ZSK")
    adapter.apply(NAME, plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK")))
    result = adapter.apply(NAME, plan(planned(ksk, "KSK", "delete"), planned(zsk, "ZSK")))
    assert result.changed
    now = CdsServed(cds_lab)
    assert now.cds == {DELETE_CDS} and now.cdnskey == {DELETE_CDNSKEY}
    assert [r.to_text() for r in now.cds_rrset or []] == ["0 0 0 00"]
    assert [r.to_text() for r in now.cdnskey_rrset or []] == ["0 3 0 AA=="]
    assert now.cds_signers and now.cdnskey_signers
    # and back to none
    adapter.apply(NAME, plan(planned(ksk, "KSK"), planned(zsk, "ZSK")))
    assert CdsServed(cds_lab).cds_rrset is None


def test_knot_delete_needs_a_delete_dnssec_policy(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="krs-cds-knot-delete-"))
    os.chmod(root, 0o755)
    lab: Any = KnotServerLab(root / "server")
    try:
        adapter = lab.adapter()
        ksk, zsk = key("KSK"), key("ZSK")
        adapter.apply(NAME, plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK")))
        with pytest.raises(AdapterError, match="cds-cdnskey-publish: delete-dnssec"):
            adapter.apply(NAME, plan(planned(ksk, "KSK", "delete"), planned(zsk, "ZSK")))
        assert_cds_of(lab, ksk)  # refused before anything was written

        # the operator gives the zone's policy delete-dnssec: the delete records are served
        lab.lab.cds_cdnskey_publish = "delete-dnssec"
        lab.lab.write_config()
        assert lab.lab.knotc("reload").returncode == 0
        adapter.apply(NAME, plan(planned(ksk, "KSK", "delete"), planned(zsk, "ZSK")))
        now = CdsServed(lab)
        assert now.cds == {DELETE_CDS} and now.cdnskey == {DELETE_CDNSKEY}
        assert now.cds_signers == {ksk.key_tag}
        with pytest.raises(AdapterError, match="does not ask for it"):
            adapter.apply(NAME, plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK")))
        # any other cds-cdnskey-publish is refused by check()
        lab.lab.cds_cdnskey_publish = "always"
        lab.lab.write_config()
        assert lab.lab.knotc("reload").returncode == 0
        assert any("cds-cdnskey-publish: always" in p.what for p in adapter.check())
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_restore_puts_the_cds_back(cds_lab: ServerLab) -> None:
    adapter = cds_lab.adapter()
    ksk, zsk = key("KSK"), key("ZSK")
    marked = plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK"))
    adapter.apply(NAME, marked)
    snapshot = adapter.snapshot(NAME)
    adapter.apply(NAME, plan(*(dataclasses.replace(p, cds=None) for p in marked.install)))
    assert CdsServed(cds_lab).cds_rrset is None
    adapter.restore(NAME, snapshot)
    assert_cds_of(cds_lab, ksk)


def test_powerdns_check_names_publish_cds_metadata_the_krs_did_not_set(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="krs-cds-pdns-check-"))
    os.chmod(root, 0o755)
    lab: Any = PowerDnsServerLab(root / "server")
    try:
        adapter = lab.adapter()
        assert adapter.check() == []
        lab.lab.pdnsutil("set-meta", ZONE, "PUBLISH-CDS", "2")
        problems = adapter.check()
        assert [p.what for p in problems] == [
            f"zone {ZONE} has PUBLISH-CDS metadata: PowerDNS serves the CDS/CDNSKEY of every "
            "published KSK, not those the KDC marks"
        ]
        # the adapter takes it away when it writes the marked keys' records
        ksk, zsk = key("KSK"), key("ZSK")
        adapter.apply(NAME, plan(planned(ksk, "KSK", "publish"), planned(zsk, "ZSK")))
        assert_cds_of(lab, ksk)
        assert "PUBLISH-CDS = \n" in lab.lab.pdnsutil("get-meta", ZONE, "PUBLISH-CDS").stdout + "\n"
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_csk_rollover_ds_step_only_the_new_csk_has_cds(cds_lab: ServerLab) -> None:
    # Knot makes the marked CSK "ready": next to the active old CSK it signs the DNSKEY RRset
    # only, which the adapter's verification allows; the zone stays valid.
    if cds_lab.name.endswith("-bind"):
        pytest.skip("the bind backend cannot serve one of two CSKs' CDS (test above)")
    adapter = cds_lab.adapter()
    old, new = key("CSK"), key("CSK")
    adapter.apply(NAME, plan(planned(old, "CSK", "publish")))
    adapter.apply(NAME, plan(planned(old, "CSK"), planned(new, "CSK", "publish")))
    now = assert_cds_of(cds_lab, new)
    assert now.dnskey_signers == {old.key_tag, new.key_tag}
