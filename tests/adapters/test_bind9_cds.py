"""CDS and CDNSKEY from the payload's ``cds`` (docs/payload.md) on BIND 9.18 (auto-dnssec: the
key files' SyncPublish/SyncDelete, the delete records by dynamic update) and BIND 9.20
(manual-mode: the key's DS state, re-derived from SyncPublish): what named serves, asked over
TCP and validated with dnspython only (docs/servers/bind9.md, "CDS and CDNSKEY")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import ApplyFailed, KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from tests.adapters.servers import bind9_root

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


@pytest.fixture(params=["bind9.18", "bind9.20"])
def named(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bind9Lab]:
    """named of each generation serving example.com.; on 9.18 the zone takes dynamic updates
    with named's session key (update-policy local), how the delete records reach it."""
    policy = request.param == "bind9.20"
    lab = Bind9Lab(
        tmp_path / "named",
        [ZONE],
        sysroot=bind9_root(policy=policy),
        extra_zone_options={} if policy else {ZONE: "update-policy local;"},
    )
    lab.start()
    assert lab.uses_policy == policy
    yield lab
    lab.stop()


def adapter(lab: Bind9Lab, **changes: object) -> Bind9Adapter:
    settings = {**lab.adapter_settings(), "verify_timeout": 5, **changes}
    if not lab.uses_policy and "update_key" not in changes:
        settings["update_key"] = str(lab.root / "session.key")
    return Bind9Adapter(settings, zones=[NAME])


def timing() -> KeyTiming:
    then = int(time.time()) - 7200
    return KeyTiming(created=then, publish=then, activate=then)


def plan(*keys: tuple[DnssecKey, str, str | None], at: KeyTiming | None = None) -> KeyPlan:
    at = at or timing()
    return KeyPlan(NAME, tuple(PlannedKey(k, role, at, cds) for k, role, cds in keys))  # type: ignore[arg-type]


class Served:
    """The zone's CDS and CDNSKEY RRsets as named serves them, and whether an RRSIG over each
    validates against the served DNSKEY RRset."""

    def __init__(self, lab: Bind9Lab) -> None:
        self.dnskey, _ = self._get(lab, dns.rdatatype.DNSKEY)
        cds, cds_sigs = self._get(lab, dns.rdatatype.CDS)
        cdnskey, cdnskey_sigs = self._get(lab, dns.rdatatype.CDNSKEY)
        self.cds = {r.to_text() for r in cds} if cds else set()
        self.cdnskey = {r.to_text() for r in cdnskey} if cdnskey else set()
        self.signed = self._valid(cds, cds_sigs) and self._valid(cdnskey, cdnskey_sigs)

    @staticmethod
    def _get(lab: Bind9Lab, rdtype: dns.rdatatype.RdataType):  # type: ignore[no-untyped-def]
        query = dns.message.make_query(NAME, rdtype, want_dnssec=True)
        reply = dns.query.tcp(query, lab.host, port=lab.port, timeout=3)
        rrset = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, rdtype)
        sigs = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
        return rrset, sigs

    def _valid(self, rrset, sigs) -> bool:  # type: ignore[no-untyped-def]
        if rrset is None:
            return True  # nothing to sign
        if sigs is None or self.dnskey is None:
            return False
        for sig in sigs:
            try:
                dns.dnssec.validate_rrsig(rrset, sig, {NAME: self.dnskey})
            except dns.exception.ValidationFailure:
                continue
            return True
        return False


def cds_of(*keys: DnssecKey) -> set[str]:
    """The SHA-256 CDS (digest type 2) of each key, as a parent computes its DS."""
    return {dns.dnssec.make_ds(NAME, k.dnskey, "SHA256").to_text() for k in keys}


def cdnskey_of(*keys: DnssecKey) -> set[str]:
    return {k.dnskey.to_text() for k in keys}


def assert_serves(lab: Bind9Lab, *keys: DnssecKey) -> None:
    served = Served(lab)
    assert served.cds == cds_of(*keys)
    assert served.cdnskey == cdnskey_of(*keys)
    assert served.signed


def test_cds_follows_publish_and_none(named: Bind9Lab) -> None:
    krs = adapter(named)
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    at = timing()
    result = krs.apply(NAME, plan((ksk, "KSK", "publish"), (zsk, "ZSK", None), at=at))
    assert_serves(named, ksk)  # at once: apply verified it
    assert result.served is not None
    assert result.served["cds"] == [[ksk.key_tag, 13, 2]]

    # the same distribution again changes nothing
    assert not krs.apply(NAME, plan((ksk, "KSK", "publish"), (zsk, "ZSK", None), at=at)).changed

    result = krs.apply(NAME, plan((ksk, "KSK", None), (zsk, "ZSK", None), at=at))
    assert result.changed and result.installed == (ksk.key_tag,)
    assert_serves(named)  # none
    assert result.served is not None and "cds" not in result.served

    krs.apply(NAME, plan((ksk, "KSK", "publish"), (zsk, "ZSK", None), at=at))
    assert_serves(named, ksk)


def test_two_ksks_only_the_marked_one(named: Bind9Lab) -> None:
    krs = adapter(named)
    old, new, zsk = (generate_key(ZONE, 13, f) for f in (257, 257, 256))
    at = timing()
    krs.apply(NAME, plan((old, "KSK", None), (new, "KSK", "publish"), (zsk, "ZSK", None), at=at))
    assert_serves(named, new)
    krs.apply(
        NAME, plan((old, "KSK", "publish"), (new, "KSK", "publish"), (zsk, "ZSK", None), at=at)
    )
    assert_serves(named, old, new)
    krs.apply(NAME, plan((old, "KSK", "publish"), (new, "KSK", None), (zsk, "ZSK", None), at=at))
    assert_serves(named, old)


def test_delete_records(named: Bind9Lab) -> None:
    krs = adapter(named)
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    at = timing()
    krs.apply(NAME, plan((ksk, "KSK", "publish"), (zsk, "ZSK", None), at=at))
    delete = plan((ksk, "KSK", "delete"), (zsk, "ZSK", None), at=at)
    if named.uses_policy:
        # named rewrites its .state files as their states settle: compare what the KRS writes
        records = {p.name: p.read_bytes() for p in named.key_directory.glob("*.krs-timing")}
        with pytest.raises(
            ApplyFailed, match=r"BIND 9\.20 under dnssec-policy serves the RFC 8078"
        ):
            krs.apply(NAME, delete)
        assert {p.name: p.read_bytes() for p in named.key_directory.glob("*.krs-timing")} == records
        assert_serves(named, ksk)
        return
    before = krs.snapshot(NAME)
    krs.apply(NAME, delete)
    served = Served(named)
    assert served.cds == {"0 0 0 00"} and served.cdnskey == {"0 3 0 AA=="} and served.signed
    named.rndc("loadkeys", ZONE)  # named keeps them at its key events
    time.sleep(0.5)
    assert Served(named).cds == {"0 0 0 00"}
    assert not krs.apply(NAME, delete).changed
    # a rollback (restore from the snapshot taken first) puts back what named served
    assert krs.restore(NAME, before) == "named serves the previous keys again"
    assert_serves(named, ksk)
    krs.apply(NAME, delete)
    krs.apply(NAME, plan((ksk, "KSK", "publish"), (zsk, "ZSK", None), at=at))
    assert_serves(named, ksk)
    krs.apply(NAME, delete)
    krs.apply(NAME, plan((ksk, "KSK", None), (zsk, "ZSK", None), at=at))
    assert_serves(named)


def test_delete_without_an_update_key_is_refused_on_918(named: Bind9Lab) -> None:
    if named.uses_policy:
        pytest.skip("9.20 refuses every delete (test_delete_records)")
    krs = Bind9Adapter({**named.adapter_settings(), "verify_timeout": 5}, zones=[NAME])
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    with pytest.raises(ApplyFailed, match=r"update-policy local;.*update_key") as refused:
        krs.apply(NAME, plan((ksk, "KSK", "delete"), (zsk, "ZSK", None)))
    assert "nothing was changed" in str(refused.value)
    assert list(named.key_directory.iterdir()) == []


def test_a_marked_ksk_serves_its_cds_from_its_activation(named: Bind9Lab) -> None:
    """The CDS of a marked key is served while it is active (cdsset.has_cds, every server):
    named 9.18 acts on the SyncPublish at the key's Activate by itself, on 9.20 the KRS's
    maintain() has named re-derive the key's DS state at that time."""
    krs = adapter(named)
    ksk, zsk, new = (generate_key(ZONE, 13, f) for f in (257, 256, 257))
    now = int(time.time())
    at = timing()
    later = KeyTiming(created=now - 7200, publish=now - 7200, activate=now + 3)
    install = (
        PlannedKey(ksk, "KSK", at, "publish"),
        PlannedKey(zsk, "ZSK", at),
        PlannedKey(new, "KSK", later, "publish"),
    )
    krs.apply(NAME, KeyPlan(NAME, install))
    assert_serves(named, ksk)
    deadline = time.monotonic() + 60  # generous: the parallel suite loads the machine
    while time.time() < now + 3.5 or Served(named).cds != cds_of(ksk, new):
        assert time.monotonic() < deadline, Served(named).cds
        if named.uses_policy:
            krs.maintain()
        time.sleep(0.2)
    assert_serves(named, ksk, new)


def test_a_removed_or_retired_marked_ksk_takes_its_cds_along(named: Bind9Lab) -> None:
    krs = adapter(named)
    old, new, zsk = (generate_key(ZONE, 13, f) for f in (257, 257, 256))
    at = timing()
    krs.apply(
        NAME, plan((old, "KSK", "publish"), (new, "KSK", "publish"), (zsk, "ZSK", None), at=at)
    )
    assert_serves(named, old, new)
    # a tdns-style retire of a key the plan does not install: inactive now, its CDS goes
    krs.apply(NAME, KeyPlan(NAME, retire=(old.key_tag,)))
    assert_serves(named, new)
    krs.apply(NAME, KeyPlan(NAME, remove=(old.key_tag,)))
    assert_serves(named, new)
