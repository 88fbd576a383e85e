"""The README's main job, `krs-demo` (from krs-plugin-lab, `./run demo`), against real servers,
and the core's `krs demo --offline`: its key files are real BIND keys that sign a zone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from krs_plugin.dnssec import read_bind_key_pair
from tests.adapters.servers import host_bind_version, other_generation_root

KRS = str(Path(sys.executable).parent / "krs")
KRS_DEMO = str(Path(sys.executable).parent / "krs-demo")  # krs-plugin-lab (lab/)


def test_demo_delivers_both_backends_and_writes_matching_bind_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [KRS, "demo", "--offline", "--keep", str(tmp_path), "--algorithm", "15"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KDC signature verified" in result.stdout
    for backend in ("hpke", "jose"):
        private_files = sorted((tmp_path / f"keys-{backend}").glob("*.private"))
        assert len(private_files) == 2, f"{backend}: expected a KSK and a ZSK"
        flags = set()
        for private in private_files:
            assert private.stat().st_mode & 0o777 == 0o600
            key, timing = read_bind_key_pair(private)
            assert key.zone == dns.name.from_text("example.com.")
            assert timing.activate is not None
            flags.add(key.flags)
            # The delivered key signs, and the signature validates against its DNSKEY.
            rrset = dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1")
            rrsig = dns.dnssec.sign(
                rrset,
                key.private_key,
                dns.name.from_text("example.com."),
                key.dnskey,
                lifetime=3600,
            )
            keys = {
                dns.name.from_text("example.com."): dns.rrset.from_rdata_list(
                    "example.com.", 300, [key.dnskey]
                )
            }
            dns.dnssec.validate_rrsig(rrset, rrsig, keys)
        assert flags == {256, 257}


def test_demo_rejects_unknown_algorithm() -> None:
    for command in ([KRS, "demo", "--offline"], [KRS_DEMO]):
        result = subprocess.run(
            [*command, "--algorithm", "7"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2
        assert "invalid choice" in result.stderr


def test_core_krs_demo_without_offline_points_to_the_lab() -> None:
    # The live demo is not in the krs-plugin wheel: krs demo says where it went, also when
    # given the live demo's own options, and starts nothing.
    for extra in ([], ["--server", "knot"]):
        result = subprocess.run(
            [KRS, "demo", *extra], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "krs-demo" in result.stderr and "krs-plugin-lab" in result.stderr
        assert result.stdout == ""


def test_krs_demo_offline_is_the_core_round_trip(tmp_path: Path) -> None:
    result = subprocess.run(
        [KRS_DEMO, "--offline", "--backend", "hpke", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KDC signature verified" in result.stdout
    assert len(list((tmp_path / "keys-hpke").glob("*.private"))) == 2


def test_main_job_installs_into_a_real_bind_and_the_served_keys_validate() -> None:
    result = subprocess.run(
        [KRS_DEMO, "--backend", "jose"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"named 9\.\d+ serving example.com. unsigned", out)
    assert "DNSKEY set equals the KDC's keys" in out
    assert out.count(": valid (dnspython)") == 2  # DNSKEY by the KSK, SOA by the ZSK
    assert out.rstrip().splitlines()[-1].startswith("[ done] VALID")


def test_main_job_installs_into_the_other_debian_generations_bind() -> None:
    # BIND 9.20 on a Debian 12 host (9.18 on Debian 13), from that release's root: the demo is
    # VALID on both generations' named, each configured its own way.
    root = other_generation_root()
    env = {**os.environ, "KRS_DEMO_SYSROOT": root.suite}
    result = subprocess.run([KRS_DEMO], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    host_920 = (host_bind_version() or (0, 0)) >= (9, 20)
    expected = "named 9.18 " if host_920 else "named 9.20 "
    mode = "(auto-dnssec maintain)" if host_920 else "(dnssec-policy manual-mode)"
    assert expected in out and mode in out
    assert "DNSKEY set equals the KDC's keys" in out
    assert out.count(": valid (dnspython)") == 2
    assert out.rstrip().splitlines()[-1].startswith("[ done] VALID")


def test_main_job_with_knot_installs_into_a_real_knotd_and_the_served_keys_validate() -> None:
    result = subprocess.run(
        [KRS_DEMO, "--server", "knot"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Knot serves for example.com.:" in out
    assert "DNSKEY set equals the KDC's keys" in out
    assert out.count(": valid (dnspython)") == 2  # DNSKEY by the KSK, SOA by the ZSK
    assert out.rstrip().splitlines()[-1].startswith("[ done] VALID")


def test_main_job_without_a_server_installs_key_files() -> None:
    result = subprocess.run(
        [KRS_DEMO, "--server", "directory"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(".private (") == 2
    assert "VALID" in result.stdout
