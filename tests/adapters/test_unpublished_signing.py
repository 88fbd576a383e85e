"""Keys that sign while their DNSKEY is not published (an algorithm rollover, RFC 6781 4.1.4;
docs/lifecycle.md), against the real servers.

The KDC says so with a key timing of an activate time in the past and no publish time. Each
case applies plans as the KRS does and asks the running server over TCP with dnspython: the
DNSKEY RRset must hold only the published keys, and the SOA must carry a valid RRSIG by every
active ZSK, the unpublished ones validated against their own DNSKEY. Step 1 (the new algorithm
signs, its DNSKEYs not published yet), step 2 (both published) and the shape after the old
DNSKEYs are removed (step 4/5: the old keys still sign). Where the server would drop a
published key's signatures for an unpublished key of the same algorithm (PowerDNS,
ldns-signzone), the plan is refused before anything changes; BIND 9.18 refuses every such plan.
"""

from __future__ import annotations

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
import dns.rrset
import pytest

from krs_plugin.adapters.base import ApplyFailed, KeyPlan, PlannedKey
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from tests.adapters.servers import (
    Bind9ServerLab,
    KnotServerLab,
    NsdLdnsServerLab,
    NsdServerLab,
    PowerDnsServerLab,
    PowerDnsUtilServerLab,
    ServerLab,
    host_bind_version,
)

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)
OLD, NEW = 13, 15  # ECDSAP256SHA256 -> ED25519
LABS: dict[str, Any] = {
    "knot": KnotServerLab,
    "nsd": NsdServerLab,
    "nsd-ldns": NsdLdnsServerLab,
    "powerdns-api": PowerDnsServerLab,
    "powerdns-pdnsutil": PowerDnsUtilServerLab,
}
SAME_ALGORITHM_REFUSED = ("nsd-ldns", "powerdns-api", "powerdns-pdnsutil")


def make_lab(name: str, cls: Any) -> Iterator[Any]:
    root = Path(tempfile.mkdtemp(prefix=f"krs-unpub-{name}-"))
    os.chmod(root, 0o755)
    server = cls(root / "server")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=sorted(LABS))
def unpub_lab(request: pytest.FixtureRequest) -> Iterator[ServerLab]:
    yield from make_lab(request.param, LABS[request.param])


class Keys:
    def __init__(self) -> None:
        self.old_ksk = generate_key(ZONE, OLD, 257)
        self.old_zsk = generate_key(ZONE, OLD, 256)
        self.new_ksk = generate_key(ZONE, NEW, 257)
        self.new_zsk = generate_key(ZONE, NEW, 256)

    @property
    def old(self) -> tuple[DnssecKey, DnssecKey]:
        return self.old_ksk, self.old_zsk

    @property
    def new(self) -> tuple[DnssecKey, DnssecKey]:
        return self.new_ksk, self.new_zsk


def past() -> int:
    return int(time.time()) - 60


def published(since: int | None = None) -> KeyTiming:
    at = since or past()
    return KeyTiming(at, at, at)


def unpublished(since: int | None = None) -> KeyTiming:
    """What the KDC sends for a key that signs and is not published: activate past, no publish."""
    at = since or past()
    return KeyTiming(created=at, activate=at)


def role(key: DnssecKey) -> str:
    return "KSK" if key.flags == 257 else "ZSK"


def plan(*pairs: tuple[DnssecKey, KeyTiming]) -> KeyPlan:
    return KeyPlan(NAME, tuple(PlannedKey(k, role(k), t) for k, t in pairs))  # type: ignore[arg-type]


class Seen:
    """The zone's DNSKEY RRset and SOA over TCP; whose RRSIGs validate, each against the served
    DNSKEY RRset plus the DNSKEYs of ``known`` (the keys that sign unpublished)."""

    def __init__(self, lab: ServerLab, known: tuple[DnssecKey, ...] = ()) -> None:
        dnskey, dnskey_sigs = self._get(lab, dns.rdatatype.DNSKEY)
        soa, soa_sigs = self._get(lab, dns.rdatatype.SOA)
        self.dnskey = {(dns.dnssec.key_id(k), int(k.algorithm)) for k in dnskey or []}
        keys = dns.rrset.RRset(NAME, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
        for k in dnskey or []:
            keys.add(k, 300)
        for k in known:
            keys.add(k.dnskey, 300)
        self.soa_sigs = {s.key_tag for s in soa_sigs or []}
        self.soa_signers = self._valid(soa, soa_sigs, keys)
        self.dnskey_signers = self._valid(dnskey, dnskey_sigs, keys)
        self.soa_invalid = self.soa_sigs - self.soa_signers

    @staticmethod
    def _get(lab: ServerLab, rdtype: dns.rdatatype.RdataType):  # type: ignore[no-untyped-def]
        query = dns.message.make_query(NAME, rdtype, want_dnssec=True)
        query.flags = 0
        reply = dns.query.tcp(query, lab.host, port=lab.port, timeout=3)
        rrset = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, rdtype)
        sigs = reply.get_rrset(reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
        return rrset, sigs

    @staticmethod
    def _valid(rrset, sigs, keys) -> set[int]:  # type: ignore[no-untyped-def]
        if rrset is None or sigs is None:
            return set()
        valid = set()
        for sig in sigs:
            try:
                dns.dnssec.validate_rrsig(rrset, sig, {NAME: keys})
            except dns.exception.ValidationFailure:
                continue
            valid.add(sig.key_tag)
        return valid


def ids(*keys: DnssecKey) -> set[tuple[int, int]]:
    return {(k.key_tag, k.algorithm) for k in keys}


def test_algorithm_rollover_signs_unpublished_before_and_after(unpub_lab: ServerLab) -> None:
    """Step 1: DNSKEY only the old algorithm's keys, the SOA signed by both ZSKs (the new one's
    RRSIG validated against its DNSKEY, which is not served). Step 2: all four published. Then
    the old DNSKEYs removed while the old keys still sign: DNSKEY only the new algorithm's, the
    SOA still signed by both ZSKs."""
    adapter, k = unpub_lab.adapter(), Keys()
    start = past()
    old, new = published(start), unpublished(start)

    result = adapter.apply(
        NAME, plan((k.old_ksk, old), (k.old_zsk, old), (k.new_ksk, new), (k.new_zsk, new))
    )
    assert result.changed
    seen = Seen(unpub_lab, k.new)
    assert seen.dnskey == ids(*k.old)
    assert {k.old_zsk.key_tag, k.new_zsk.key_tag} <= seen.soa_signers
    assert k.old_ksk.key_tag in seen.dnskey_signers
    assert not seen.soa_invalid
    assert {k.new_ksk.key_tag, k.new_zsk.key_tag} & set(adapter_dnskey(adapter)) == set()
    served = result.served or {}
    assert k.new_zsk.key_tag in served["soa_signers"]  # type: ignore[operator]
    assert {t for t, _, _ in served["dnskey"]} == {k.old_ksk.key_tag, k.old_zsk.key_tag}  # type: ignore[attr-defined]

    # the same plan again changes nothing
    again = adapter.apply(
        NAME, plan((k.old_ksk, old), (k.old_zsk, old), (k.new_ksk, new), (k.new_zsk, new))
    )
    assert not again.changed

    now = int(time.time())
    step2 = KeyTiming(now, now, now)  # published now (the payload keeps publish <= activate)
    adapter.apply(
        NAME, plan((k.old_ksk, old), (k.old_zsk, old), (k.new_ksk, step2), (k.new_zsk, step2))
    )
    seen = Seen(unpub_lab)
    assert seen.dnskey == ids(*k.old, *k.new)
    assert {k.old_zsk.key_tag, k.new_zsk.key_tag} <= seen.soa_signers
    assert {k.old_ksk.key_tag, k.new_ksk.key_tag} <= seen.dnskey_signers

    gone = unpublished(start)  # the old keys: DNSKEY removed, RRSIGs kept
    result = adapter.apply(
        NAME, plan((k.old_ksk, gone), (k.old_zsk, gone), (k.new_ksk, step2), (k.new_zsk, step2))
    )
    assert result.changed
    seen = Seen(unpub_lab, k.old)
    assert seen.dnskey == ids(*k.new)
    assert {k.old_zsk.key_tag, k.new_zsk.key_tag} <= seen.soa_signers
    assert k.new_ksk.key_tag in seen.dnskey_signers
    assert not seen.soa_invalid
    served = result.served or {}
    assert {k.old_zsk.key_tag, k.new_zsk.key_tag} <= set(served["soa_signers"])  # type: ignore[call-overload]


def adapter_dnskey(adapter: Any) -> list[int]:
    """The tags of the DNSKEY RRset the adapter reads back over DNS (read_served)."""
    served = adapter.read_served(NAME) or {}
    return [t for t, _, _ in served.get("dnskey", [])]


def test_unpublished_from_the_start_then_published(unpub_lab: ServerLab) -> None:
    """The first keys of a zone can arrive as step 1 too; a later plan publishing the new
    algorithm's keys is served as published and active (step 2)."""
    adapter, k = unpub_lab.adapter(), Keys()
    adapter.apply(NAME, plan((k.old_ksk, published()), (k.old_zsk, published())))
    adapter.apply(
        NAME,
        plan(
            (k.old_ksk, published()),
            (k.old_zsk, published()),
            (k.new_ksk, unpublished()),
            (k.new_zsk, unpublished()),
        ),
    )
    seen = Seen(unpub_lab, k.new)
    assert seen.dnskey == ids(*k.old)
    assert {k.old_zsk.key_tag, k.new_zsk.key_tag} <= seen.soa_signers


@pytest.mark.parametrize("shape", ["csk", "split"])
@pytest.mark.parametrize("name", SAME_ALGORITHM_REFUSED)
def test_same_algorithm_unpublished_signer_is_refused(name: str, shape: str) -> None:
    """An unpublished ZSK next to a published CSK of its algorithm makes PowerDNS and
    ldns-signzone sign the zone data with the unpublished ZSK alone (bogus; measured on 4.7.3,
    4.9.20, ldns 1.8.3, 1.8.4); next to a published ZSK of its algorithm both sign, but the
    KDC uses signing unpublished only across algorithms and the adapters refuse the same
    algorithm and role too. Refused before anything is written, the zone served as before."""
    for lab in make_lab(name, LABS[name]):
        adapter, k = lab.adapter(), Keys()
        first = [(k.old_ksk, published())]
        if shape == "split":
            first.append((k.old_zsk, published()))
        adapter.apply(NAME, plan(*first))
        before, seen_before = lab.stored(), Seen(lab)
        same = generate_key(ZONE, OLD, 256)
        with pytest.raises(ApplyFailed) as failed:
            adapter.apply(NAME, plan(*first, (same, unpublished())))
        assert not failed.value.wrote
        text = str(failed.value)
        assert "same algorithm" in text and str(same.key_tag) in text, text
        assert lab.stored() == before
        after = Seen(lab)
        assert (after.dnskey, after.soa_signers) == (seen_before.dnskey, seen_before.soa_signers)


def test_directory_reports_unpublished_signers(tmp_path: Path) -> None:
    """The directory adapter's folder "serves" such a key as a server would: not in the DNSKEY
    set, among the SOA signers (and the DNSKEY signers, a KSK)."""
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    adapter, k = DirectoryAdapter({"path": str(folder)}, zones=[NAME]), Keys()
    start = past()
    adapter.apply(
        NAME,
        plan(
            (k.old_ksk, published(start)),
            (k.old_zsk, published(start)),
            (k.new_ksk, unpublished(start)),
            (k.new_zsk, unpublished(start)),
        ),
    )
    served = adapter.read_served(NAME) or {}
    assert served["dnskey"] == sorted([x.key_tag, x.algorithm, x.flags] for x in k.old)
    assert served["soa_signers"] == sorted([k.old_zsk.key_tag, k.new_zsk.key_tag])
    assert served["dnskey_signers"] == sorted([k.old_ksk.key_tag, k.new_ksk.key_tag])
    assert [x.key_tag for x in k.new] == [
        x.key_tag for x in k.new if x.key_tag in {i.key_tag for i in adapter.current_keys(NAME)}
    ]
    now = int(time.time())
    step2 = KeyTiming(now, now, now)
    adapter.apply(
        NAME,
        plan(
            (k.old_ksk, unpublished(start)),
            (k.old_zsk, unpublished(start)),
            (k.new_ksk, step2),
            (k.new_zsk, step2),
        ),
    )
    served = adapter.read_served(NAME) or {}
    assert served["dnskey"] == sorted([x.key_tag, x.algorithm, x.flags] for x in k.new)
    assert served["soa_signers"] == sorted([k.old_zsk.key_tag, k.new_zsk.key_tag])


def test_bind918_refuses_unpublished_signing() -> None:
    """BIND 9.18 with auto-dnssec never loads a key whose DNSKEY is not published
    (docs/lifecycle.md): the adapter refuses the plan before it changes anything, naming the
    limitation and the way out."""
    version = host_bind_version()
    if version is None or version >= (9, 20):
        pytest.skip("BIND 9.18 is not the host's named")
    for lab in make_lab("bind9", Bind9ServerLab):
        adapter, k = lab.adapter(), Keys()
        adapter.apply(NAME, plan((k.old_ksk, published()), (k.old_zsk, published())))
        before = lab.stored()
        with pytest.raises(ApplyFailed) as failed:
            adapter.apply(
                NAME,
                plan(
                    (k.old_ksk, published()),
                    (k.old_zsk, published()),
                    (k.new_ksk, unpublished()),
                    (k.new_zsk, unpublished()),
                ),
            )
        assert not failed.value.wrote
        text = str(failed.value)
        assert "not published" in text and "algorithm-method liberal" in text, text
        assert lab.stored() == before
        assert Seen(lab).dnskey == ids(*k.old)
