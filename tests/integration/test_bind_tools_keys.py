"""Our key files work with BIND's own tools, and BIND's key files work with us (bind9-utils).

These tests fail (never skip) when the tools are missing: CI installs them, and a silently skipped
interoperability test is worse than none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.node
import dns.rdataset
import dns.rdatatype
import dns.zone
import pytest

from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    generate_key,
    load_pkcs8_pem,
    read_bind_key_pair,
    write_bind_key_pair,
)

pytestmark = pytest.mark.bind_tools

ALGORITHMS = {
    8: "RSASHA256",
    13: "ECDSAP256SHA256",
    14: "ECDSAP384SHA384",
    15: "ED25519",
    16: "ED448",
}
UNSIGNED = """$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 300
@ IN NS ns1
ns1 IN A 192.0.2.1
www IN A 192.0.2.80
"""
SETTIME_FIELDS = {
    "Created": "created",
    "Publish": "publish",
    "Activate": "activate",
    "Inactive": "inactive",
    "Delete": "delete",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: these tests need BIND's tools; "
            "install them with `apt-get install bind9-utils`"
        )
    return path


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} failed: {result.stderr}{result.stdout}"
    return result.stdout + result.stderr


def settime_timing(stem: str, cwd: Path) -> KeyTiming:
    """What BIND itself reads from a key's files (``dnssec-settime -u -p all``)."""
    out = run(tool("dnssec-settime"), "-u", "-p", "all", stem, cwd=cwd)
    values: dict[str, int | None] = {}
    for line in out.splitlines():
        name, _, value = line.partition(": ")
        if name in SETTIME_FIELDS:
            values[SETTIME_FIELDS[name]] = None if value.strip() == "UNSET" else int(value)
    assert set(values) == set(SETTIME_FIELDS.values()), out
    return KeyTiming(**values)


def sign_and_check(directory: Path, zone_text: str, ksk: DnssecKey, zsk: DnssecKey) -> None:
    """Sign with ``dnssec-signzone -S`` (keys found by file name); verify with BIND, dnspython."""
    (directory / "db.unsigned").write_text(UNSIGNED)
    run(
        tool("dnssec-signzone"),
        "-S",
        "-K",
        str(directory),
        "-o",
        zone_text,
        "-x",
        "-N",
        "unixtime",
        "-f",
        "db.signed",
        "db.unsigned",
        cwd=directory,
    )
    run(tool("dnssec-verify"), "-o", zone_text, "db.signed", cwd=directory)

    origin = dns.name.from_text(zone_text)
    zone = dns.zone.from_file(str(directory / "db.signed"), origin=origin, relativize=False)
    dnskeys = zone.find_rdataset(origin, dns.rdatatype.DNSKEY)
    assert set(dnskeys) == {ksk.dnskey, zsk.dnskey}
    keys: dict[dns.name.Name, dns.node.Node | dns.rdataset.Rdataset] = {origin: dnskeys}
    dnskey_sigs = zone.find_rdataset(origin, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    dns.dnssec.validate((origin, dnskeys), (origin, dnskey_sigs), keys)
    assert {sig.key_tag for sig in dnskey_sigs} == {ksk.key_tag}  # -x: the KSK alone
    www = dns.name.from_text("www", origin)
    a_set = zone.find_rdataset(www, dns.rdatatype.A)
    a_sigs = zone.find_rdataset(www, dns.rdatatype.RRSIG, dns.rdatatype.A)
    dns.dnssec.validate((www, a_set), (www, a_sigs), keys)
    assert {sig.key_tag for sig in a_sigs} == {zsk.key_tag}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_dnssec_signzone_signs_with_our_key_files_and_the_zone_validates(
    tmp_path: Path, algorithm: int
) -> None:
    hour_ago = int(time.time()) - 3600
    timing = KeyTiming(created=hour_ago, publish=hour_ago, activate=hour_ago)
    ksk = generate_key("example.com.", algorithm, 257)
    zsk = generate_key("example.com.", algorithm, 256)
    for key in (ksk, zsk):
        write_bind_key_pair(tmp_path, key, timing)
        assert settime_timing(key.basename, tmp_path) == timing  # BIND reads our timing
    sign_and_check(tmp_path, "example.com.", ksk, zsk)


def test_dnssec_signzone_finds_our_files_for_a_mixed_case_zone(tmp_path: Path) -> None:
    # -S looks keys up by BIND's file name (lower case): ours must be the same name.
    hour_ago = int(time.time()) - 3600
    timing = KeyTiming(created=hour_ago, publish=hour_ago, activate=hour_ago)
    ksk = generate_key("Sub-Zone.Example.COM.", 13, 257)
    zsk = generate_key("Sub-Zone.Example.COM.", 13, 256)
    for key in (ksk, zsk):
        key_path, _ = write_bind_key_pair(tmp_path, key, timing)
        assert key_path.name.startswith("Ksub-zone.example.com.+013+")
    sign_and_check(tmp_path, "sub-zone.example.com.", ksk, zsk)


def test_bind_signs_only_with_keys_our_timing_has_activated(tmp_path: Path) -> None:
    # The timing we write is what BIND acts on: a ZSK activated tomorrow is published, not used.
    now = int(time.time())
    past = KeyTiming(now - 3600, now - 3600, now - 3600)
    ksk = generate_key("example.com.", 15, 257)
    active = generate_key("example.com.", 15, 256)
    pending = generate_key("example.com.", 15, 256)
    write_bind_key_pair(tmp_path, ksk, past)
    write_bind_key_pair(tmp_path, active, past)
    write_bind_key_pair(tmp_path, pending, KeyTiming(now - 3600, now - 3600, now + 86400))
    (tmp_path / "db.unsigned").write_text(UNSIGNED)
    run(
        tool("dnssec-signzone"),
        *("-S", "-K", str(tmp_path), "-o", "example.com.", "-f", "db.signed", "db.unsigned"),
        cwd=tmp_path,
    )
    origin = dns.name.from_text("example.com.")
    zone = dns.zone.from_file(str(tmp_path / "db.signed"), origin=origin, relativize=False)
    www = dns.name.from_text("www", origin)
    a_sigs = zone.find_rdataset(www, dns.rdatatype.RRSIG, dns.rdatatype.A)
    assert {sig.key_tag for sig in a_sigs} == {active.key_tag}
    dnskeys = set(zone.find_rdataset(origin, dns.rdatatype.DNSKEY))
    assert dnskeys == {ksk.dnskey, active.dnskey, pending.dnskey}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("ksk", [False, True], ids=["zsk", "ksk"])
def test_keys_made_by_dnssec_keygen_load_with_their_key_tag_and_timing(
    tmp_path: Path, algorithm: int, ksk: bool
) -> None:
    args = [tool("dnssec-keygen"), "-q", "-a", ALGORITHMS[algorithm], "-K", str(tmp_path)]
    args += ["-L", "300", "-P", "20300101000000", "-A", "20300102000000"]
    if algorithm == 8:
        args += ["-b", "2048"]
    if ksk:
        args += ["-f", "KSK"]
    stem = run(*args, "example.com.", cwd=tmp_path).strip().splitlines()[-1]
    match = re.fullmatch(r"Kexample\.com\.\+(\d{3})\+(\d{5})", stem)
    assert match is not None, stem
    # Inactive and Delete through dnssec-settime, which rewrites both files.
    run(tool("dnssec-settime"), "-I", "20300201000000", "-D", "20300301000000", stem, cwd=tmp_path)

    for path in (tmp_path / stem, tmp_path / f"{stem}.key", tmp_path / f"{stem}.private"):
        key, timing = read_bind_key_pair(path)
        assert key.key_tag == int(match.group(2))
        assert key.algorithm == int(match.group(1)) == algorithm
        assert key.flags == (257 if ksk else 256)
        assert key.ttl == 300
        assert key.basename == stem
    assert (timing.publish, timing.activate, timing.inactive, timing.delete) == (
        1893456000,
        1893542400,
        1896134400,
        1898553600,
    )
    assert timing == settime_timing(stem, tmp_path)
    assert timing.created is not None and abs(timing.created - time.time()) < 600


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_dnssec_keygen_key_survives_pkcs8_and_is_rewritten_for_bind(
    tmp_path: Path, algorithm: int
) -> None:
    # The KDC imports a BIND key (to PKCS#8); a KRS writes it back as BIND files: same key.
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    args = [tool("dnssec-keygen"), "-q", "-a", ALGORITHMS[algorithm], "-K", str(source)]
    if algorithm == 8:
        args += ["-b", "2048"]
    stem = run(*args, "example.com.", cwd=source).strip().splitlines()[-1]
    key, timing = read_bind_key_pair(source / stem)
    again = load_pkcs8_pem(key.to_pkcs8_pem(), key.zone, key.algorithm, key.flags, key.ttl)
    key_path, _ = write_bind_key_pair(target, again, timing)
    assert key_path.name == f"{stem}.key"
    assert settime_timing(stem, target) == timing

    def rdata_text(directory: Path) -> str:
        return (directory / f"{stem}.key").read_text().splitlines()[-1].split(" DNSKEY ")[1]

    assert rdata_text(target) == rdata_text(source)  # written word for word as BIND writes it
