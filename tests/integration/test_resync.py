"""Issue 21, item 3: a KRS whose server lost the keys it installed (a key folder emptied, krs.yaml
switched to another adapter after enrolling) finds out at start and after the reload, says so
(log, /healthz, `krs keys`, `krs doctor`) and asks the KDC to send the keys again; real
`krs-kdc serve` and `krs run`, no operator `distribute`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest
import yaml
from daemonkit import BIN, ZONE, Deployment, http_get, wait_until
from netutil import free_port

from krs_lab.knot import KnotLab
from krs_lab.process import server_binary
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.errors import KrsError
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.store import Store

NEW = "ns2.edge.example."


def kdc_keys(deployment: Deployment) -> dict[int, str]:
    store = Store(deployment.state / "kdc.db")
    try:
        return {k.key_tag: dnskey_of(k) for k in store.keys(ZONE)}
    finally:
        store.close()


def folder_dnskeys(folder: Path) -> set[str]:
    try:
        return {read_bind_key_pair(f)[0].dnskey for f in sorted(folder.glob("*.private"))}
    except KrsError:  # a pair being written
        return set()


def krs(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "krs"), *args, "-c", str(deployment.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def resends(deployment: Deployment) -> int:
    return deployment.log("kdc").count("resync request from node")


@pytest.fixture
def deployment(tmp_path: Path):  # type: ignore[no-untyped-def]
    deployment = Deployment(tmp_path / "pair")
    yield deployment
    deployment.close()


def test_keys_come_back_after_the_key_folder_is_emptied_and_krs_run_starts_again(
    deployment: Deployment,
) -> None:
    metrics = free_port()
    deployment.write_config(metrics=f"127.0.0.1:{metrics}")
    deployment.start_kdc()
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(dist_id)
    folder = deployment.node_dir / "keys"
    expected = set(kdc_keys(deployment).values())
    assert folder_dnskeys(folder) == expected
    deployment.stop("krs")

    for path in folder.iterdir():
        path.unlink()

    # What the operator sees before krs run starts again.
    keys = krs(deployment, "keys")
    assert keys.returncode == 0, keys.stderr
    assert keys.stdout.count("NOT HELD") == 2
    assert f"that distribution {dist_id} installed" in keys.stdout
    assert "krs run asks the KDC to send the keys again" in keys.stdout
    held = json.loads(krs(deployment, "keys", "--json").stdout)
    assert [k["held"] for k in held] == [False, False]
    doctor = krs(deployment, "doctor")
    assert "warning sync" in " ".join(doctor.stdout.split())
    assert "does not hold key(s)" in doctor.stdout

    deployment.start_krs()
    wait_until(
        lambda: folder_dnskeys(folder) == expected,
        30,
        lambda: f"the keys back in {folder}:\n{deployment.all_logs()}",
    )
    assert resends(deployment) == 1
    assert f"zone {ZONE} out of sync (at start)" in deployment.log("krs")
    wait_until(
        lambda: http_get(metrics, "/healthz")[0] == 200,
        30,
        lambda: f"/healthz healthy again: {http_get(metrics, '/healthz')}",
    )
    assert "NOT HELD" not in krs(deployment, "keys").stdout
    # Only the operator's distribution and the one the KRS asked for.
    assert len({r["id"] for r in deployment.distributions()}) == 2


def test_healthz_is_unhealthy_while_the_kdc_does_not_answer_the_request(
    deployment: Deployment,
) -> None:
    metrics = free_port()
    deployment.write_config(metrics=f"127.0.0.1:{metrics}")
    deployment.start_kdc()
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(dist_id)
    deployment.stop("krs")
    deployment.stop("kdc")
    for path in (deployment.node_dir / "keys").iterdir():
        path.unlink()
    deployment.start_krs()
    wait_until(
        lambda: http_get(metrics, "/healthz")[0] == 503,
        20,
        lambda: f"/healthz unhealthy: {http_get(metrics, '/healthz')}",
    )
    _, body = http_get(metrics, "/healthz")
    detail = json.loads(body)
    assert ZONE in detail["out_of_sync"]
    assert any(p.startswith(f"zone {ZONE} out of sync") for p in detail["problems"])
    deployment.start_kdc()  # the KRS's retries reach it
    wait_until(
        lambda: http_get(metrics, "/healthz")[0] == 200,
        60,
        lambda: f"/healthz healthy again:\n{deployment.all_logs()}",
    )
    assert resends(deployment) == 1


def test_a_node_without_a_signing_key_says_what_the_kdc_must_run_and_asks_nothing(
    deployment: Deployment,
) -> None:
    metrics = free_port()
    deployment.write_config(metrics=f"127.0.0.1:{metrics}")
    deployment.start_kdc()
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(dist_id)
    deployment.stop("krs")
    for path in (deployment.node_dir / "keys").iterdir():
        path.unlink()
    keys = {k: v for k, v in deployment.config["keys"].items() if k != "signing"}
    deployment.write_config(keys=keys)
    deployment.start_krs()
    wait_until(
        lambda: "cannot ask the KDC" in deployment.log("krs"),
        20,
        lambda: f"the warning:\n{deployment.all_logs()}",
    )
    assert "krs-kdc distribute --node ns1.edge.example. --all-zones" in deployment.log("krs")
    status, body = http_get(metrics, "/healthz")
    assert status == 503 and ZONE in json.loads(body)["out_of_sync"]
    assert resends(deployment) == 0


def test_switching_to_another_key_folder_while_running_brings_the_keys_there(
    deployment: Deployment,
) -> None:
    deployment.start_kdc()
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(dist_id)
    other = deployment.node_dir / "other-keys"
    other.mkdir()
    deployment.write_config(adapter={"type": "directory", "settings": {"path": str(other)}})
    os.kill(deployment.processes["krs"].pid, signal.SIGHUP)
    expected = set(kdc_keys(deployment).values())
    wait_until(
        lambda: folder_dnskeys(other) == expected,
        30,
        lambda: f"the keys in {other}:\n{deployment.all_logs()}",
    )
    assert "after the adapter changed" in deployment.log("krs")


# --- the scenario on a real Knot ------------------------------------------------------


def served(host: str, port: int) -> tuple[set[int], set[int]]:
    """The DNSKEY tags Knot publishes for ZONE and the tags whose RRSIG over the SOA validates
    (dnspython only)."""
    zone = dns.name.from_text(ZONE)

    def get(rdtype: dns.rdatatype.RdataType):  # type: ignore[no-untyped-def]
        query = dns.message.make_query(zone, rdtype, want_dnssec=True)
        reply = dns.query.tcp(query, host, port=port, timeout=3)
        rrset = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, rdtype)
        sigs = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
        return rrset, sigs

    try:
        dnskey, _ = get(dns.rdatatype.DNSKEY)
        soa, soa_sigs = get(dns.rdatatype.SOA)
    except (OSError, dns.exception.DNSException):
        return set(), set()
    if dnskey is None:
        return set(), set()
    valid = set()
    for sig in soa_sigs or []:
        try:
            dns.dnssec.validate_rrsig(soa, sig, {zone: dnskey})
        except dns.exception.ValidationFailure:
            continue
        valid.add(sig.key_tag)
    return {dns.dnssec.key_id(k) for k in dnskey}, valid


@pytest.mark.skipif(server_binary("knotd") is None, reason="knotd is not installed")
def test_switching_to_the_knot_adapter_after_enrolling_makes_knot_serve_and_sign(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The issue: `krs enroll` ends with "next: krs run"; done at once, the keys go into the
    default folder and the KDC records success. krs.yaml is then switched to the knot adapter and
    reloaded: Knot had no keys (not signed, SERVFAIL); the KRS asks, the KDC sends them again,
    Knot serves and signs with them."""
    lab = KnotLab(tmp_path / "knot", [ZONE])
    lab.start()
    try:
        deployment.start_kdc()
        package = tmp_path / "ns2.enroll"
        address = f"127.0.0.1:{deployment.kdc_port}"
        deployment.kdc("enroll", "create", "--node", NEW, "--zones", ZONE, "--backend", "hpke",
                       "--kdc-address", address, "-o", str(package))  # fmt: skip
        node = tmp_path / "ns2"
        enrolled = subprocess.run(
            [str(BIN / "krs"), "enroll", str(package), "--dir", str(node), "--state-dir",
             str(node), "--notify", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        assert "krs run -c" in enrolled.stdout  # what it says to do next
        config = node / "krs.yaml"
        krs_run = deployment.start("krs-ns2", [str(BIN / "krs"), "run", "-c", str(config)])

        def confirmed() -> bool:
            mine = [d for d in deployment.distributions() if d["node_id"] == NEW]
            return bool(mine) and all(d["status"] == "confirmed" for d in mine)

        wait_until(confirmed, 30, lambda: f"{NEW} confirmed:\n{deployment.all_logs()}")
        tags = set(kdc_keys(deployment))
        assert {
            read_bind_key_pair(f)[0].key_tag for f in (node / "zone-keys").glob("*.private")
        } == tags
        assert served(lab.host, lab.port) == (set(), set())  # Knot has no keys: not signed

        settings = yaml.safe_load(config.read_text())
        settings["adapter"] = {
            "type": "knot",
            "settings": {**lab.adapter_settings(), "verify_timeout": 5},
        }
        tmp = config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(settings))
        os.replace(tmp, config)
        os.kill(krs_run.pid, signal.SIGHUP)
        wait_until(
            lambda: served(lab.host, lab.port)[0] == tags,
            60,
            lambda: f"Knot serving {tags}: {served(lab.host, lab.port)}\n{deployment.all_logs()}",
        )
        _, signers = served(lab.host, lab.port)
        assert signers and signers <= tags  # an RRSIG over the SOA validates with a KDC key
        assert resends(deployment) == 1
        log = deployment.log("krs-ns2")
        assert f"zone {ZONE} out of sync (after the adapter changed" in log
        assert "knotd does not hold key(s)" in log
        assert f"resync request from node {NEW}" in deployment.log("kdc")
        keys = subprocess.run(
            [str(BIN / "krs"), "keys", "-c", str(config)], capture_output=True, text=True
        )
        assert keys.returncode == 0 and "NOT HELD" not in keys.stdout, keys.stdout + keys.stderr
    finally:
        lab.stop()
