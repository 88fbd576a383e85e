"""`krs fetch` against a real `krs-kdc serve`: keys land on disk, refusals are recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from netutil import free_port

from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.store import Store

BIN = Path(sys.executable).parent
CZ, ZONE = "kdc.example.", "example.com."


def run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class Site:
    """A KDC serving on loopback, and one KRS config per backend (directory adapter)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.kdc_state = base / "kdc"
        self.port = free_port()
        self.dead_port = free_port()  # a configured server that never answers: failover

    def kdc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("krs-kdc", "--state", str(self.kdc_state), *args, check=check)

    def node(self, name: str, backend: str, zones: list[str]) -> Path:
        folder = self.base / name
        (folder / "keys").mkdir(parents=True)
        if backend == "hpke":
            key = HpkeKey.generate()
            write_hpke_private(folder / "node.key", key)
            write_hpke_public(folder / "node.pub", key)
        else:
            jkey = JoseKey.generate()
            write_jose_private(folder / "node.key", jkey)
            write_jose_public(folder / "node.pub", jkey)
        self.kdc(
            "node",
            "add",
            f"{name}.edge.example.",
            "--notify",
            "127.0.0.1:9",
            f"--{backend}-pubkey",
            str(folder / "node.pub"),
            *[a for z in zones for a in ("--zone", z)],
        )
        config = folder / "krs.yaml"
        config.write_text(
            json.dumps(
                {
                    "node_id": f"{name}.edge.example.",
                    "keys": {backend: str(folder / "node.key")},
                    "kdc": {
                        "verification_key": str(self.kdc_state / "keys" / "kdc.signing.pubkey")
                    },
                    "control_zone": CZ,
                    "control_servers": [f"127.0.0.1:{self.dead_port}", f"127.0.0.1:{self.port}"],
                    "adapter": {"type": "directory", "settings": {"path": str(folder / "keys")}},
                    "zones": [ZONE],
                    "state": str(folder / "krs.db"),
                    "fetch": {"timeout": 1, "retries": 2, "backoff": 0.05},
                }
            )
        )
        return config


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    s.kdc("init", "--control-zone", CZ)
    s.kdc("zone", "add", ZONE)
    s.kdc("zone", "add", "other.example.")
    s.kdc("key", "generate", "--zone", ZONE, "--role", "KSK", "--algorithm", "13")
    s.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK", "--algorithm", "15")
    s.kdc("key", "generate", "--zone", "other.example.", "--role", "ZSK")
    process = subprocess.Popen(
        [
            str(BIN / "krs-kdc"),
            "--state",
            str(s.kdc_state),
            "serve",
            "--listen",
            f"127.0.0.1:{s.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while True:
        try:
            dns.query.udp(
                dns.message.make_query(CZ, dns.rdatatype.SOA), "127.0.0.1", port=s.port, timeout=1
            )
            break
        except Exception:
            if time.time() > deadline:
                pytest.fail("krs-kdc serve did not start")
            time.sleep(0.1)
    yield s
    process.terminate()
    process.wait(timeout=10)


def distribute(site: Site, zone: str = ZONE) -> str:
    return str(
        json.loads(site.kdc("--json", "distribute", "--zone", zone).stdout)["distribution_id"]
    )


def status(config: Path) -> list[dict[str, object]]:
    return json.loads(run("krs", "status", "-c", str(config), "--json").stdout)


@pytest.mark.parametrize("backend", ["hpke", "jose"])
def test_fetch_installs_the_kdcs_keys_through_failover(site: Site, backend: str) -> None:
    config = site.node("ns1", backend, [ZONE])
    dist_id = distribute(site)
    result = run("krs", "fetch", dist_id, "-c", str(config))
    assert "applied" in result.stdout
    store = Store(site.kdc_state / "kdc.db")
    expected = {dnskey_of(k) for k in store.keys(ZONE)}
    store.close()
    files = sorted((config.parent / "keys").glob("*.private"))
    assert {read_bind_key_pair(f)[0].dnskey for f in files} == expected
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert status(config)[0]["outcome"] == "applied"


def test_replay_and_older_serial_are_refused_and_recorded(site: Site) -> None:
    config = site.node("ns1", "hpke", [ZONE])
    first, second = distribute(site), distribute(site)
    run("krs", "fetch", second, "-c", str(config))
    before = sorted(p.name for p in (config.parent / "keys").iterdir())
    again = run("krs", "fetch", second, "-c", str(config), check=False)
    assert again.returncode == 1 and "replay" in again.stdout
    older = run("krs", "fetch", first, "-c", str(config), check=False)
    assert older.returncode == 1 and "not newer" in older.stdout
    assert sorted(p.name for p in (config.parent / "keys").iterdir()) == before
    outcomes = {r["id"]: (r["outcome"], r["stage"]) for r in status(config)}
    assert outcomes[second] == ("applied", "done")
    assert outcomes[first] == ("rejected", "policy")


def test_zone_not_served_here_is_refused_before_any_file_is_written(site: Site) -> None:
    # The KDC believes the node serves other.example.; its krs.yaml says only example.com.
    config = site.node("ns1", "hpke", [ZONE, "other.example."])
    dist_id = distribute(site, "other.example.")
    result = run("krs", "fetch", dist_id, "-c", str(config), check=False)
    assert result.returncode == 1
    assert "not served by this node: other.example." in result.stdout
    assert list((config.parent / "keys").iterdir()) == []
    assert status(config)[0]["stage"] == "policy"


def test_wrong_kdc_key_is_a_signature_rejection(site: Site, tmp_path: Path) -> None:
    config = site.node("ns1", "jose", [ZONE])
    impostor = tmp_path / "impostor.pub"
    write_jose_public(impostor, JoseKey.generate(), use="sig")
    settings = json.loads(config.read_text())
    settings["kdc"]["verification_key"] = str(impostor)
    config.write_text(json.dumps(settings))
    result = run("krs", "fetch", distribute(site), "-c", str(config), check=False)
    assert result.returncode == 1 and "signature" in result.stdout
    assert list((config.parent / "keys").iterdir()) == []
    assert status(config)[0]["stage"] == "signature"


def test_unknown_distribution_is_a_clear_fetch_failure(site: Site) -> None:
    config = site.node("ns1", "hpke", [ZONE])
    result = run("krs", "fetch", "abcdef01", "-c", str(config), check=False)
    assert result.returncode == 1
    assert "not published" in result.stdout
