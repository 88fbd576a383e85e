"""What a new operator meets following docs/kdc.md: --json in either place, DS for the parent,
durations such as 1h, human times, zones of an existing node, the first distribution's life and
the KDC's log times (issue 21)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from krs_plugin import cli as krs_cli
from krs_plugin.kdc import enroll
from krs_plugin.kdc.store import Store
from tests.integration.kdcrun import NODE, ZONE, Kdc, new_kdc

DOCS = Path(__file__).resolve().parents[2] / "docs"
UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \((in \w+|\w+ ago|now)\)"


@pytest.fixture
def kdc(tmp_path: Path) -> Kdc:
    kdc = new_kdc(tmp_path, ZONE, "example.net.")
    kdc.add_node()
    return kdc


def test_json_goes_before_or_after_the_subcommand(kdc: Kdc) -> None:
    before = kdc("--json", "zone", "list")
    after = kdc("zone", "list", "--json")
    assert before.code == after.code == 0
    assert json.loads(before.out) == json.loads(after.out) == [ZONE, "example.net."]
    assert kdc("zone", "list").out.splitlines() == [ZONE, "example.net."]


def test_krs_takes_json_in_both_places_and_still_its_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = krs_cli.build_parser()
    for argv in (["--json", "status"], ["status", "--json"], ["keys", "--json", "example.com."]):
        assert parser.parse_args(argv).json is True, argv
    assert parser.parse_args(["status"]).json is False
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("krs ")


def test_zone_ds_prints_ds_cds_and_cdnskey_of_published_ksks(kdc: Kdc) -> None:
    ksk = kdc.generate("KSK")
    kdc.generate("ZSK")
    refused = kdc("zone", "ds", ZONE)
    assert refused.code == 2 and f"krs-kdc distribute --zone {ZONE}" in refused.err
    kdc.ok("distribute", "--zone", ZONE)
    text = kdc("zone", "ds", ZONE, "--digest", "SHA-256", "--digest", "SHA-384").out
    zone = dns.zone.from_text(
        "$TTL 3600\n" + text, origin=ZONE, relativize=False, check_origin=False
    )
    node = zone.find_node(ZONE)
    (cdnskey,) = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.CDNSKEY)
    ds = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.DS)
    cds = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.CDS)
    dnskey = dns.rdata.from_text("IN", "DNSKEY", cdnskey.to_text())
    assert dns.dnssec.key_id(dnskey) == ksk  # type: ignore[arg-type]
    expected = {dns.dnssec.make_ds(ZONE, dnskey, d).to_text() for d in ("SHA256", "SHA384")}
    assert {r.to_text() for r in ds} == {r.to_text() for r in cds} == expected
    data = kdc.ok("zone", "ds", ZONE)
    (key,) = data["keys"]
    assert (key["key_tag"], key["role"], key["ds"][0]["digest_type"]) == (ksk, "KSK", 2)
    assert key["ds"][0]["text"] == dns.dnssec.make_ds(ZONE, dnskey, "SHA256").to_text()


def test_zone_ds_as_trust_anchors_named_reads(kdc: Kdc, tmp_path: Path) -> None:
    """``--trust-anchors`` (docs/quickstart.md: delv -a validates before the parent has the DS):
    named-checkconf takes it, and it names the DS the KDC prints."""
    ksk = kdc.generate("KSK")
    kdc.generate("ZSK")
    kdc.ok("distribute", "--zone", ZONE)
    text = kdc("zone", "ds", ZONE, "--trust-anchors").out
    (ds,) = kdc.ok("zone", "ds", ZONE)["keys"][0]["ds"]
    tag, algorithm, digest_type, digest = ds["text"].split()
    assert int(tag) == ksk
    assert f'{ZONE} static-ds {ksk} {algorithm} {digest_type} "{digest}";' in text
    anchors = tmp_path / "anchors.conf"
    anchors.write_text(text)
    checkconf = shutil.which("named-checkconf") or "/usr/bin/named-checkconf"
    result = subprocess.run([checkconf, str(anchors)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    anchors.write_text(text.replace("static-ds", "static-dz"))
    assert subprocess.run([checkconf, str(anchors)], capture_output=True).returncode != 0


def test_every_duration_option_takes_units(kdc: Kdc) -> None:
    key = kdc.ok("key", "generate", "--zone", ZONE, "--role", "ZSK", "--activate-after", "1h",
                 "--retire-after", "30d", "--remove-after", "5w")  # fmt: skip
    start = key["publish_at"]
    assert (key["activate_at"], key["inactive_at"], key["delete_at"]) == (
        start + 3600, start + 30 * 86400, start + 35 * 86400)  # fmt: skip
    dist = kdc.ok("distribute", "--zone", ZONE, "--ttl", "15m")
    (row,) = kdc.ok("distribution", "show", dist["distribution_id"])
    assert row["expires_at"] - row["created_at"] == 900
    package = kdc.ok("enroll", "create", "--node", "ns9.edge.example.", "--zones", ZONE,
                     "--valid", "1h30m", "-o", str(kdc.root / "ns9.enroll"))  # fmt: skip
    (token,) = kdc.ok("enroll", "list")
    assert token["expires_at"] - token["created_at"] == 5400 and package["token_id"]
    from krs_plugin.kdc.cli import build_parser

    serve = build_parser().parse_args(["serve", "--notify-retry", "2s",
                                       "--notify-retry-max", "2m", "--clock-skew", "1m",
                                       "--tcp-idle-timeout", "45s"])  # fmt: skip
    assert (serve.notify_retry, serve.notify_retry_max, serve.clock_skew,
            serve.tcp_idle_timeout) == (2, 120, 60, 45)  # fmt: skip
    bad = kdc("distribute", "--zone", ZONE, "--ttl", "soon")
    assert bad.code == 2 and "expected a duration such as" in bad.err


def test_remove_after_needs_retire_after_and_the_times_in_order(kdc: Kdc) -> None:
    lone = kdc("key", "generate", "--zone", ZONE, "--role", "ZSK", "--remove-after", "1d")
    assert lone.code == 2 and "--remove-after needs --retire-after" in lone.err
    early = kdc("key", "generate", "--zone", ZONE, "--role", "ZSK", "--activate-after", "2h",
                "--retire-after", "1h")  # fmt: skip
    assert early.code == 2 and "must be later than --activate-after (2h)" in early.err
    assert kdc.keys() == {}


def test_listings_show_times_in_utc_and_how_far_from_now(kdc: Kdc) -> None:
    kdc.generate("ZSK", "--activate-after", "2h")
    lines = kdc("key", "list").out.splitlines()
    assert re.fullmatch(rf"    publish  {UTC_TIME}", lines[1]), lines
    assert lines[2].endswith("(in 2h)"), lines
    dist = kdc.ok("distribute", "--zone", ZONE)["distribution_id"]
    shown = kdc("distribution", "show", dist).out
    assert "notify    not notified yet" in shown and "0x" not in shown
    assert re.search(rf"created   {UTC_TIME}", shown) and re.search(rf"expires   {UTC_TIME}", shown)
    store = Store(kdc.state / "kdc.db")
    for _ in range(3):
        store.mark_notified(dist, NODE, now=time.time())
    store.mark_notify_acked(dist, NODE, now=time.time())
    store.close()
    shown = kdc("distribution", "show", dist).out
    assert re.search(rf"notified 3 times, last {UTC_TIME}, acknowledged {UTC_TIME}", shown), shown
    assert re.search(rf"pending   created {UTC_TIME}", kdc("distribution", "list").out)
    kdc.ok("enroll", "create", "--node", "ns9.edge.example.", "--zones", ZONE,
           "-o", str(kdc.root / "ns9.enroll"))  # fmt: skip
    assert re.search(rf"open     until {UTC_TIME}", kdc("enroll", "list").out)


def test_node_set_adds_and_removes_zones_of_an_existing_node(kdc: Kdc) -> None:
    node = kdc.ok("node", "set", NODE, "--add-zone", "example.net.")
    assert node["zones"] == [ZONE, "example.net."]
    kdc.generate("CSK", zone="example.net.")
    sent = kdc.ok("distribute", "--zone", "example.net.", "--node", NODE)
    assert sent["nodes"] == [NODE]
    text = kdc("node", "set", NODE, "--remove-zone", "example.net.").out
    assert f"node {NODE} serves: {ZONE}" in text
    for args, reason in (
        (("--add-zone", "example.org."), "zone example.org. not found"),
        (("--remove-zone", "example.net."), "does not serve zone example.net."),
        (("--add-zone", ZONE), f"already serves zone {ZONE}"),
        ((), "give --add-zone or --remove-zone"),
    ):
        result = kdc("node", "set", NODE, *args)
        assert result.code == 2 and reason in result.err, result.err
    unknown = kdc("node", "set", "ns7.edge.example.", "--add-zone", ZONE)
    assert unknown.code == 2 and "node ns7.edge.example. not found" in unknown.err
    mixed = kdc("node", "set", NODE, "--add-zone", "example.net.", "--remove-zone", "example.org.")
    assert mixed.code == 2
    assert kdc.ok("node", "list")[0]["zones"] == [ZONE]  # the refused change left nothing


def test_the_first_distribution_lives_an_hour_and_the_docs_say_why() -> None:
    assert enroll.FIRST_DISTRIBUTION_TTL == 3600
    text = (DOCS / "enrollment.md").read_text()
    assert "stays valid for an hour" in text and "before `krs run`" in text


def test_serve_logs_as_krs_run_does_in_utc(
    kdc: Kdc, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from krs_plugin.kdc import server

    async def fake_serve(*args: object) -> None:
        logging.getLogger("krs_plugin.kdc.server").warning("serving", extra={"zone": ZONE})

    monkeypatch.setattr(server, "serve", fake_serve)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = kdc("serve", "--log-format", "json")
    finally:
        root.handlers[:], root.level = handlers, level
    assert result.code == 0
    (line,) = [json.loads(x) for x in result.err.splitlines() if x.startswith("{")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert (line["message"], line["zone"]) == ("serving", ZONE)


def test_import_keeps_the_files_retire_and_remove_times(kdc: Kdc) -> None:
    from krs_plugin.dnssec import KeyTiming, generate_key, write_bind_key_pair

    now = int(time.time())
    key = generate_key(ZONE, 13, 256)
    timing = KeyTiming(now, now, now + 60, now + 86400, now + 2 * 86400)
    path, _ = write_bind_key_pair(kdc.root, key, timing)
    row = kdc.ok("key", "import", str(path))
    assert (row["activate_at"], row["inactive_at"], row["delete_at"]) == (
        now + 60, now + 86400, now + 2 * 86400)  # fmt: skip
    bad = generate_key(ZONE, 13, 256)
    path, _ = write_bind_key_pair(kdc.root, bad, KeyTiming(now, now, now + 86400, now + 60))
    result = kdc("key", "import", str(path))
    assert result.code == 2 and "Inactive (" in result.err and "is before Activate" in result.err


def test_a_package_that_cannot_be_written_leaves_no_open_token(kdc: Kdc, tmp_path: Path) -> None:
    """Found following docs/quickstart.md: krs-kdc run as its own user could not write the
    package into /root, and the token stayed open for a package nobody had."""
    target = tmp_path / "missing-dir" / "ns9.enroll"
    result = kdc("enroll", "create", "--node", "ns9.edge.example.", "--zones", ZONE,
                 "--output", str(target))  # fmt: skip
    assert result.code == 2
    assert "cannot write the package" in result.err and "token revoked" in result.err
    (token,) = kdc.ok("enroll", "list")
    assert token["status"] == "revoked", token
