"""Our key files work with BIND's own tools, and BIND's key files work with us (bind9-utils)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from krs_plugin.dnssec import KeyTiming, generate_key, read_bind_key_pair, write_bind_key_pair

pytestmark = pytest.mark.bind_tools

ZONE = "example.com."
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


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install bind9-utils`")
    return path


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{args[0]} failed: {result.stderr}{result.stdout}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_bind_signs_with_our_keys_and_the_result_validates(tmp_path: Path, algorithm: int) -> None:
    timing = KeyTiming(created=1_700_000_000, publish=1_700_000_000, activate=1_700_000_000)
    ksk = generate_key(ZONE, algorithm, 257)
    zsk = generate_key(ZONE, algorithm, 256)
    for key in (ksk, zsk):
        write_bind_key_pair(tmp_path, key, timing)
    (tmp_path / "db.example.com").write_text(UNSIGNED)
    run(
        tool("dnssec-signzone"),
        "-S",
        "-K",
        str(tmp_path),
        "-o",
        ZONE,
        "-x",
        "-N",
        "unixtime",
        "-f",
        "db.signed",
        "db.example.com",
        cwd=tmp_path,
    )
    run(tool("dnssec-verify"), "-o", ZONE, "db.signed", cwd=tmp_path)

    zone = dns.zone.from_file(str(tmp_path / "db.signed"), origin=ZONE, relativize=False)
    origin = dns.name.from_text(ZONE)
    dnskeys = zone.find_rdataset(origin, dns.rdatatype.DNSKEY)
    assert {rd for rd in dnskeys} == {ksk.dnskey, zsk.dnskey}
    keys = {origin: dnskeys}
    dnskey_sigs = zone.find_rdataset(origin, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)
    dns.dnssec.validate((origin, dnskeys), (origin, dnskey_sigs), keys)
    assert {sig.key_tag for sig in dnskey_sigs} >= {ksk.key_tag}
    www = dns.name.from_text("www." + ZONE)
    a_set = zone.find_rdataset(www, dns.rdatatype.A)
    a_sigs = zone.find_rdataset(www, dns.rdatatype.RRSIG, dns.rdatatype.A)
    dns.dnssec.validate((www, a_set), (www, a_sigs), keys)
    assert {sig.key_tag for sig in a_sigs} == {zsk.key_tag}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("ksk", [False, True])
def test_keys_made_by_dnssec_keygen_load_with_their_timing(
    tmp_path: Path, algorithm: int, ksk: bool
) -> None:
    args = [
        tool("dnssec-keygen"),
        "-q",
        "-a",
        ALGORITHMS[algorithm],
        "-K",
        str(tmp_path),
        "-P",
        "20300101000000",
        "-A",
        "20300102000000",
        "-I",
        "20300201000000",
        "-D",
        "20300301000000",
    ]
    if algorithm == 8:
        args += ["-b", "2048"]
    if ksk:
        args += ["-f", "KSK"]
    stem = run(*args, ZONE, cwd=tmp_path).strip().splitlines()[-1]
    tag = int(re.fullmatch(r"K.+\+\d{3}\+(\d{5})", stem).group(1))  # type: ignore[union-attr]
    key, timing = read_bind_key_pair(tmp_path / stem)
    assert key.key_tag == tag
    assert key.algorithm == algorithm
    assert key.flags == (257 if ksk else 256)
    assert (timing.publish, timing.activate, timing.inactive, timing.delete) == (
        1893456000,
        1893542400,
        1896134400,
        1898553600,
    )
    settime = run(tool("dnssec-settime"), "-u", "-p", "all", stem, cwd=tmp_path)
    assert f"Publish: {timing.publish}" in settime
    assert f"Delete: {timing.delete}" in settime
