"""What only the NSD adapter does, because NSD does not sign: it keeps signatures fresh, signs
an edit of the unsigned zone, never serves a file that failed to sign, and check() says what is
missing. The first two run through a real ``krs run``, as an operator would see them."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_lab.deployment import Deployment, wait_until
from krs_lab.nsd import NsdLab
from krs_lab.ports import free_port
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.nsd import NsdAdapter, expand_zonefile
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError, ConfigError

pytestmark = pytest.mark.integration

ZONE = "example.com."
NAME = dns.name.from_text(ZONE)


@pytest.fixture
def nsd(tmp_path: Path) -> Iterator[NsdLab]:
    lab = NsdLab(tmp_path / "nsd", [ZONE, "example.net."])
    lab.start()
    yield lab
    lab.stop()


def signed_answer(lab: NsdLab, qname: str, rdtype: str) -> tuple[object, int]:
    """The validated RRset for ``qname``/``rdtype`` and its RRSIG's expiration."""
    name = dns.name.from_text(qname)
    keys_reply = dns.query.tcp(
        dns.message.make_query(NAME, "DNSKEY", want_dnssec=True), lab.host, port=lab.port
    )
    keys = keys_reply.find_rrset(keys_reply.answer, NAME, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    reply = dns.query.tcp(
        dns.message.make_query(name, rdtype, want_dnssec=True), lab.host, port=lab.port
    )
    kind = dns.rdatatype.from_text(rdtype)
    rrset = reply.find_rrset(reply.answer, name, dns.rdataclass.IN, kind)
    sigs = reply.find_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, kind)
    dns.dnssec.validate(rrset, sigs, {NAME: keys})
    return rrset, min(sig.expiration for sig in sigs)


@pytest.fixture
def deployment(nsd: NsdLab, tmp_path: Path) -> Iterator[Deployment]:
    settings = {
        **nsd.adapter_settings(),
        "signature_validity": 30,  # seconds: renewal is due 25 s before expiry, i.e. after 5 s
        "refresh_before": 25,
    }
    node = Deployment(tmp_path / "kdc-and-node", "hpke", zones=(ZONE,),
                      adapter={"type": "nsd", "settings": settings})  # fmt: skip
    node.write_config(poll_interval=3600)
    node.start_kdc()
    node.start_krs()
    for role in ("KSK", "ZSK"):
        node.kdc("key", "generate", "--zone", ZONE, "--role", role)
    node.wait_confirmed(node.distribute("--zone", ZONE), timeout=60)
    yield node
    node.close()


def test_krs_run_signs_again_before_the_signatures_expire(
    nsd: NsdLab, deployment: Deployment
) -> None:
    _, first = signed_answer(nsd, ZONE, "SOA")
    assert first - time.time() <= 31
    wait_until(lambda: signed_answer(nsd, ZONE, "SOA")[1] > first, 20, "re-signing")
    _, later = signed_answer(nsd, ZONE, "SOA")  # valid, with a later expiry
    assert later >= first + 1


def test_an_edit_of_the_unsigned_zone_is_signed_and_served(
    nsd: NsdLab, deployment: Deployment
) -> None:
    unsigned = nsd.unsigned_file(ZONE)
    unsigned.write_text(unsigned.read_text() + "mail IN A 192.0.2.25\n")

    def served() -> bool:
        try:
            signed_answer(nsd, f"mail.{ZONE}", "A")
        except (KeyError, dns.dnssec.ValidationFailure):
            return False
        return True

    wait_until(served, timeout=10, what="the edited zone, signed")
    rrset, _ = signed_answer(nsd, f"mail.{ZONE}", "A")
    assert [r.to_text() for r in rrset] == ["192.0.2.25"]


def adapter(lab: NsdLab, *zones: str, **changes: object) -> NsdAdapter:
    settings = {**lab.adapter_settings(), "verify_timeout": 3, **changes}
    return NsdAdapter(settings, zones=[dns.name.from_text(z) for z in zones])


def csk_plan() -> KeyPlan:
    now = int(time.time()) - 1
    csk = generate_key(ZONE, 13, 257)
    return KeyPlan(NAME, (PlannedKey(csk, "CSK", KeyTiming(now, now, now)),))


def test_a_failed_signing_leaves_the_served_file_byte_for_byte(nsd: NsdLab) -> None:
    nsd_adapter = adapter(nsd, ZONE)
    nsd_adapter.apply(NAME, csk_plan())
    served = nsd.signed_file(ZONE).read_bytes()
    nsd.unsigned_file(ZONE).write_text("$ORIGIN example.com.\n@ IN SOA broken\n")
    keys_before = sorted((nsd.root / "keys").iterdir())
    with pytest.raises(
        AdapterError, match=r"step 'sign' failed.*the served file was never replaced"
    ):
        apply_atomically(nsd_adapter, [csk_plan()])
    assert nsd.signed_file(ZONE).read_bytes() == served
    assert sorted((nsd.root / "keys").iterdir()) == keys_before
    assert not list(nsd.signed_file(ZONE).parent.glob(".*krs-new"))
    signed_answer(nsd, ZONE, "SOA")  # still served and valid


def test_check_reports_what_the_adapter_needs(nsd: NsdLab) -> None:
    assert adapter(nsd, ZONE).check() == []
    (problem,) = adapter(nsd, "other.example.").check()
    assert "NSD does not serve zone other.example." in problem.what
    nsd.unsigned_file("example.net.").unlink()
    (problem,) = adapter(nsd, "example.net.").check()
    assert "unsigned zone file" in problem.what and "does not exist" in problem.what
    (problem,) = adapter(nsd, ZONE, control="/nonexistent/nsd-control").check()
    assert problem.what == "/nonexistent/nsd-control not found"


def test_check_reports_a_control_channel_that_does_not_answer(nsd: NsdLab) -> None:
    nsd.stop()
    (problem,) = adapter(nsd, ZONE).check()
    assert "nsd-control cannot reach NSD" in problem.what
    assert "control-enable" in problem.fix


def test_maintain_signs_again_when_a_key_time_passes(nsd: NsdLab) -> None:
    # NSD has no key timing: a ZSK due to become active in 3 s must start signing then, not at
    # the next distribution or renewal days later.
    from tests.adapters.servers import Served

    nsd_adapter = adapter(nsd, ZONE)
    now = int(time.time())
    csk = generate_key(ZONE, 13, 257)
    zsk = generate_key(ZONE, 13, 256)
    plan = KeyPlan(
        NAME,
        (
            PlannedKey(csk, "CSK", KeyTiming(now - 1, now - 1, now - 1)),
            PlannedKey(zsk, "ZSK", KeyTiming(now - 1, now - 1, now + 3)),
        ),
    )
    nsd_adapter.apply(NAME, plan)
    before = Served(nsd.host, nsd.port, ZONE)
    assert zsk.key_tag in before.tags and before.soa_signers == {csk.key_tag}
    wait = nsd_adapter.maintain()  # nothing due yet: it says when to look again
    assert 0 < wait <= 4
    time.sleep(wait + 0.5)
    nsd_adapter.maintain()
    after = Served(nsd.host, nsd.port, ZONE)
    assert zsk.key_tag in after.soa_signers


def test_a_failing_signing_is_retried_after_a_pause_not_every_second(nsd: NsdLab) -> None:
    nsd_adapter = adapter(nsd, ZONE, signature_validity=30, refresh_before=29)
    nsd_adapter.apply(NAME, csk_plan())
    time.sleep(1.5)  # inside refresh_before: due from now on
    nsd.unsigned_file(ZONE).write_text("$ORIGIN example.com.\n@ IN SOA broken\n")
    assert nsd_adapter.maintain() >= 59  # failed, next try in RETRY_AFTER
    assert nsd_adapter.maintain() >= 59  # not tried again meanwhile


def served_serial(lab: NsdLab) -> int:
    reply = dns.query.tcp(dns.message.make_query(NAME, "SOA"), lab.host, port=lab.port)
    return int(reply.answer[0][0].serial)


@pytest.mark.parametrize("signer", ["dnssec-signzone", "ldns-signzone"])
def test_every_signing_serves_a_higher_serial_under_a_date_serial(nsd: NsdLab, signer: str) -> None:
    # 2026112301 is above the Unix time until 2034: the signers' own Unix-time serial would
    # freeze the served serial, and secondaries would never see a change.
    unsigned = nsd.unsigned_file(ZONE)
    unsigned.write_text(unsigned.read_text().replace(" 1 3600 ", " 2026112301 3600 "))
    nsd_adapter = adapter(nsd, ZONE, signer=signer)
    nsd_adapter.apply(NAME, csk_plan())
    serials = [served_serial(nsd)]
    nsd_adapter.apply(NAME, csk_plan())  # two signings within the same second
    serials.append(served_serial(nsd))
    unsigned.write_text(unsigned.read_text() + "mail IN A 192.0.2.25\n")
    nsd_adapter.maintain()  # the edit, signed
    serials.append(served_serial(nsd))
    unsigned.write_text(unsigned.read_text().replace(" 2026112301 ", " 2026112401 "))
    nsd_adapter.maintain()  # the operator's next date serial is taken as it is
    serials.append(served_serial(nsd))
    assert serials == [2026112301, 2026112302, 2026112303, 2026112401]
    signed_answer(nsd, f"mail.{ZONE}", "A")  # and every one of them validly signed


def test_a_counter_serial_becomes_the_unix_time_and_never_repeats(nsd: NsdLab) -> None:
    nsd_adapter = adapter(nsd, ZONE)
    start = int(time.time())
    nsd_adapter.apply(NAME, csk_plan())
    first = served_serial(nsd)
    nsd_adapter.apply(NAME, csk_plan())
    assert start <= first <= int(time.time()) and served_serial(nsd) > first


def test_restore_of_a_first_distribution_serves_the_zone_unsigned_with_a_higher_serial(
    nsd: NsdLab,
) -> None:
    nsd_adapter = adapter(nsd, ZONE)
    snapshot = nsd_adapter.snapshot(NAME)  # no keys yet
    nsd_adapter.apply(NAME, csk_plan())
    signed = served_serial(nsd)
    nsd_adapter.restore(NAME, snapshot)
    reply = dns.query.tcp(
        dns.message.make_query(NAME, "DNSKEY", want_dnssec=True), nsd.host, port=nsd.port
    )
    assert reply.answer == []  # no DNSKEY, no RRSIG: the zone as before the KRS signed it
    assert served_serial(nsd) > signed
    assert "RRSIG" not in nsd.signed_file(ZONE).read_text()
    assert not list((nsd.root / "keys").iterdir())


def test_a_rollback_after_the_rename_says_what_nsd_serves(nsd: NsdLab) -> None:
    nsd_adapter = adapter(nsd, ZONE)
    first = csk_plan()
    nsd_adapter.apply(NAME, first)
    serial = served_serial(nsd)
    # NSD serves another address than the adapter asks: the DNS check after the reload fails.
    elsewhere = adapter(nsd, ZONE, server=f"{nsd.host}:{nsd.port}")
    elsewhere.port = free_port(nsd.host)
    with pytest.raises(AdapterError) as failure:
        apply_atomically(elsewhere, [csk_plan()])
    message = str(failure.value)
    assert "step 'verify' failed:" in message
    assert (
        "rolled back: keys restored and the zone signed with the previous keys written" in message
    )
    assert "but NSD was not seen serving it" in message
    # it does serve it: the previous key only, under a serial above the one being undone
    reply = dns.query.tcp(
        dns.message.make_query(NAME, "DNSKEY", want_dnssec=True), nsd.host, port=nsd.port
    )
    (dnskeys,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.DNSKEY]
    assert {dns.dnssec.key_id(k) for k in dnskeys} == {first.install[0].key.key_tag}
    assert served_serial(nsd) > serial


def test_a_rollback_removes_a_signed_file_there_was_none_of(nsd: NsdLab) -> None:
    nsd.signed_file(ZONE).unlink()
    nsd.control("reload", ZONE)
    nsd_adapter = adapter(nsd, ZONE)
    nsd_adapter.port = free_port(nsd.host)  # the DNS check fails after the rename
    with pytest.raises(AdapterError, match="the signed file written is removed again"):
        apply_atomically(nsd_adapter, [csk_plan()])
    assert not nsd.signed_file(ZONE).exists()
    assert not list((nsd.root / "keys").iterdir())


def test_signing_without_an_active_key_says_so(nsd: NsdLab) -> None:
    later = int(time.time()) + 3600
    csk = generate_key(ZONE, 13, 257)
    plan = KeyPlan(NAME, (PlannedKey(csk, "CSK", KeyTiming(later, later, later)),))
    with pytest.raises(AdapterError, match="no active key to sign with"):
        adapter(nsd, ZONE).apply(NAME, plan)


def test_check_reports_a_zonefile_that_is_not_the_signed_file(nsd: NsdLab) -> None:
    other = nsd.root / "elsewhere" / "{zone}signed"
    (problem,) = adapter(nsd, ZONE, signed_file=str(other)).check()
    assert f"NSD serves zone {ZONE} from {nsd.signed_file(ZONE)}" in problem.what
    assert "zonefile:" in problem.fix


@pytest.mark.parametrize(
    ("zone_files", "error"),
    [
        ("a list", "must map zone names"),
        ({"example.org.": {"signed": "x"}}, "not one of the zones in krs.yaml"),
        ({ZONE: {"sigend": "x"}}, "expected {unsigned: <file>, signed: <file>}"),
        ({ZONE: {"signed": ""}}, "zone_files.example.com..signed: must be a file path"),
        ({ZONE: "x.signed"}, "expected {unsigned"),
    ],
)
def test_zone_files_are_checked_entry_by_entry(
    tmp_path: Path, zone_files: object, error: str
) -> None:
    settings = {"key_directory": str(tmp_path), "unsigned_file": "u/{zone}",
                "signed_file": "s/{zone}", "zone_files": zone_files}  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(error)):
        NsdAdapter(settings, zones=[NAME])


def test_two_zones_in_one_signed_file_are_refused(tmp_path: Path) -> None:
    settings = {"key_directory": str(tmp_path), "unsigned_file": "u/{zone}",
                "signed_file": "served.zone"}  # fmt: skip
    with pytest.raises(ConfigError, match="would share the signed file"):
        NsdAdapter(settings, zones=[NAME, dns.name.from_text("example.net.")])


@pytest.mark.parametrize(
    ("pattern", "zone", "path"),
    [
        ("%s.zone", "example.com.", "example.com.zone"),
        ("%z/%y/%1%2%3/%s", "example.com.", "com/example/exa/example.com"),
        ("%x-%3", "ab.", ".-."),
    ],
)
def test_nsd_zonefile_patterns_are_expanded_as_nsd_does(pattern: str, zone: str, path: str) -> None:
    assert expand_zonefile(pattern, dns.name.from_text(zone)) == path
