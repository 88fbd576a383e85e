"""The hpke-pq backend with real processes (docs/protocol.md section 4): `krs-kdc serve` and
`krs run` nodes of each backend, one distribution reaching all three; the KDC-side rows of the
scenario table on one real BIND with a hybrid node (and the same rows with a classic one); a
node whose key is of another backend than the KDC lists refusing, by stage, changing nothing;
and the live demo with a hybrid node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonkit import BIN, ZONE, Deployment, wait_until
from netutil import free_port

from krs_lab.bind9 import Bind9Lab, policy_text
from krs_lab.nodekeys import write_node_keys
from krs_plugin.dnssec import read_bind_key_pair
from tests.adapters.servers import Served

pytestmark = pytest.mark.integration

BACKENDS = ("hpke", "jose", "hpke-pq")


def kdc_keys(deployment: Deployment, zone: str = ZONE) -> dict[int, dict[str, Any]]:
    keys = json.loads(deployment.kdc("--json", "key", "list", "--zone", zone))
    return {int(k["key_tag"]): k for k in keys}


def folder_tags(folder: Path) -> set[int]:
    """The key tags of the complete key pairs in a directory adapter's folder."""
    files = sorted(folder.glob("*.private"))
    return {read_bind_key_pair(f)[0].key_tag for f in files if f.with_suffix(".key").exists()}


def rows_of(deployment: Deployment, dist_id: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
    return {r["node_id"]: r for r in rows}


def add_node(deployment: Deployment, node_id: str, backend: str) -> Path:
    """Another node beside the deployment's own: its keys, `node add`, its krs.yaml, `krs run`."""
    folder = deployment.root / node_id.rstrip(".")
    (folder / "keys").mkdir(parents=True)
    notify = free_port()
    options = write_node_keys(folder, backend)
    deployment.kdc("node", "add", node_id, "--notify", f"127.0.0.1:{notify}", *options,
                   "--zone", ZONE)  # fmt: skip
    config = {
        **deployment.config,
        "node_id": node_id,
        "keys": {backend: str(folder / "node.key"), "signing": str(folder / "signing.key")},
        "notify": {"listen": [f"127.0.0.1:{notify}"], "allowed_sources": ["127.0.0.0/8"]},
        "adapter": {"type": "directory", "settings": {"path": str(folder / "keys")}},
        "state": str(folder / "krs.db"),
    }
    (folder / "krs.yaml").write_text(json.dumps(config))
    log = deployment.logs / f"{node_id}.log"
    deployment.start(node_id, [str(BIN / "krs"), "run", "-c", str(folder / "krs.yaml")])
    wait_until(
        lambda: log.exists() and "listening for NOTIFY" in log.read_text(),
        30,
        lambda: f"krs run of {node_id}:\n{deployment.all_logs()}",
    )
    return folder / "keys"


def test_mixed_kdc_one_distribution_reaches_hpke_jose_and_hybrid_nodes(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "hpke")
    deployment.write_config()
    try:
        deployment.start_kdc()
        deployment.start_krs()
        folders = {
            "ns1.edge.example.": deployment.node_dir / "keys",
            "ns2.edge.example.": add_node(deployment, "ns2.edge.example.", "jose"),
            "ns3.edge.example.": add_node(deployment, "ns3.edge.example.", "hpke-pq"),
        }
        listed = {
            n["id"]: n["backend"] for n in json.loads(deployment.kdc("--json", "node", "list"))
        }
        assert listed == dict(zip(folders, BACKENDS, strict=True))

        dist_id = deployment.distribute("--zone", ZONE)  # one distribution, one command
        wait_until(
            lambda: {r["status"] for r in rows_of(deployment, dist_id).values()} == {"confirmed"},
            60,
            lambda: f"{dist_id} confirmed by all three:\n{deployment.all_logs()}",
        )
        assert set(rows_of(deployment, dist_id)) == set(folders)
        expected = set(kdc_keys(deployment))
        for node_id, folder in folders.items():
            assert folder_tags(folder) == expected, node_id
        # Each node opened it with its own backend: the hybrid node's log names hpke-pq.
        assert "hpke-pq" in json.dumps(
            json.loads(deployment.kdc("--json", "node", "show", "ns3.edge.example."))
        )
    finally:
        deployment.close()


# --- the scenario table's KDC-side rows, on one real server -------------------------------------


BIND_ALGORITHMS = {13: "ecdsap256sha256", 15: "ed25519", 16: "ed448"}
"""dnssec-policy's names of the algorithms these rows use (BIND 9.20 takes only keys its policy
lists: docs/servers/bind9.md; 9.18 ignores the policy)."""


@pytest.fixture
def bind9(request: pytest.FixtureRequest) -> Iterator[Bind9Lab]:
    # Not tmp_path: named may drop privileges and must reach its directory (0700 root there).
    root = Path(tempfile.mkdtemp(prefix="krs-hybrid-bind9-"))
    os.chmod(root, 0o755)
    callspec = getattr(request.node, "callspec", None)
    algorithm = BIND_ALGORITHMS[callspec.params.get("algorithm", 13) if callspec else 13]
    lab = Bind9Lab(root / "bind9", [ZONE], policy_keys=(("ksk", algorithm), ("zsk", algorithm)))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def distribute_and_wait(deployment: Deployment) -> None:
    dist_id = deployment.distribute("--zone", ZONE)
    deployment.wait_confirmed(dist_id, timeout=60)


def generate(deployment: Deployment, role: str, algorithm: int = 13) -> int:
    out = deployment.kdc(
        "--json", "key", "generate", "--zone", ZONE, "--role", role, "--algorithm", str(algorithm)
    )
    return int(json.loads(out)["key_tag"])


@pytest.mark.parametrize("backend", ["hpke-pq", "hpke"])
@pytest.mark.parametrize("algorithm", [13, 15])
def test_scenario_rows_on_bind_through_the_kdc_and_a_node_of_each_hpke_backend(
    tmp_path: Path, bind9: Bind9Lab, backend: str, algorithm: int
) -> None:
    adapter = {"type": "bind9", "settings": bind9.adapter_settings()}
    deployment = Deployment(
        tmp_path / "d", backend, zones=(ZONE,), adapter=adapter, generate_keys=False
    )
    deployment.write_config()
    try:
        deployment.start_kdc()
        deployment.start_krs()

        # Row: a KSK and a ZSK split the signing.
        ksk, zsk = generate(deployment, "KSK", algorithm), generate(deployment, "ZSK", algorithm)
        distribute_and_wait(deployment)
        served = Served(bind9.host, bind9.port, ZONE)
        assert served.tags == {ksk, zsk}
        assert served.dnskey_signers == {ksk}
        assert served.soa_signers == {zsk}

        # Row: re-sending the same keys changes nothing.
        distribute_and_wait(deployment)
        again = Served(bind9.host, bind9.port, ZONE)
        assert (again.tags, again.dnskey_signers, again.soa_signers) == ({ksk, zsk}, {ksk}, {zsk})

        # Row: ZSK rollover, the new ZSK signs, the retired one stays published, then goes.
        new_zsk = generate(deployment, "ZSK", algorithm)
        distribute_and_wait(deployment)
        both = Served(bind9.host, bind9.port, ZONE)
        assert (both.tags, both.soa_signers) == ({ksk, zsk, new_zsk}, {zsk, new_zsk})
        deployment.kdc("key", "retire", "--zone", ZONE, "--tag", str(zsk))
        distribute_and_wait(deployment)
        rolled = Served(bind9.host, bind9.port, ZONE)
        assert rolled.tags == {ksk, zsk, new_zsk}
        assert rolled.soa_signers == {new_zsk}
        deployment.kdc("key", "remove", "--zone", ZONE, "--tag", str(zsk), "--force")
        distribute_and_wait(deployment)
        done = Served(bind9.host, bind9.port, ZONE)
        assert done.tags == {ksk, new_zsk}
        assert (done.dnskey_signers, done.soa_signers) == ({ksk}, {new_zsk})
        node = json.loads(deployment.kdc("--json", "node", "show", "ns1.edge.example."))
        assert node["backend"] == backend
    finally:
        deployment.close()


OTHER = "example.net."


def test_scenario_rows_csk_and_two_zones_in_one_distribution_to_a_hybrid_node_on_bind(
    tmp_path: Path,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="krs-hybrid-bind9-"))
    os.chmod(root, 0o755)
    lab = Bind9Lab(root / "bind9", [ZONE, OTHER], policy_keys=(("csk", BIND_ALGORITHMS[13]),))
    if lab.uses_policy:  # 9.20: Ed448 under a policy of its own (9.18 knows no manual-mode)
        lab.zone_policies = {OTHER: "krs-ed448"}
        lab.extra_config = policy_text("krs-ed448", (("ksk", "ed448"), ("zsk", "ed448")))
    lab.start()
    adapter = {"type": "bind9", "settings": lab.adapter_settings()}
    deployment = Deployment(
        tmp_path / "d", "hpke-pq", zones=(ZONE, OTHER), adapter=adapter, generate_keys=False
    )
    deployment.write_config()
    try:
        deployment.start_kdc()
        deployment.start_krs()
        # Row: a CSK signs everything (example.com.); row: KSK and ZSK of another algorithm
        # (Ed448) split the signing (example.net.); row: two zones at once, one distribution.
        out = deployment.kdc("--json", "key", "generate", "--zone", ZONE, "--role", "CSK")
        csk = int(json.loads(out)["key_tag"])
        tags = {}
        for role in ("KSK", "ZSK"):
            out = deployment.kdc(
                "--json", "key", "generate", "--zone", OTHER, "--role", role, "--algorithm", "16"
            )
            tags[role] = int(json.loads(out)["key_tag"])
        dist_id = deployment.distribute("--node", "ns1.edge.example.", "--all-zones")
        deployment.wait_confirmed(dist_id, timeout=60)
        com = Served(lab.host, lab.port, ZONE)
        assert (com.tags, com.dnskey_signers, com.soa_signers) == ({csk}, {csk}, {csk})
        net = Served(lab.host, lab.port, OTHER)
        assert net.tags == set(tags.values())
        assert (net.dnskey_signers, net.soa_signers) == ({tags["KSK"]}, {tags["ZSK"]})
    finally:
        deployment.close()
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- bad input: the node's key is not of the backend the KDC seals with -------------------------


@pytest.mark.parametrize(("listed", "held"), [("hpke-pq", "hpke"), ("hpke", "hpke-pq")])
def test_a_distribution_for_another_backend_than_the_node_key_fails_at_decryption_changing_nothing(
    tmp_path: Path, listed: str, held: str
) -> None:
    deployment = Deployment(tmp_path, listed)
    other = tmp_path / "other"
    other.mkdir()
    write_node_keys(other, held)  # the node's krs.yaml names a key of the other backend
    deployment.write_config(
        keys={held: str(other / "node.key"), "signing": str(deployment.node_dir / "signing.key")}
    )
    try:
        deployment.start_kdc()
        deployment.start_krs()
        dist_id = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: rows_of(deployment, dist_id)["ns1.edge.example."]["status"] == "failed",
            60,
            lambda: f"{dist_id} failed:\n{deployment.all_logs()}",
        )
        row = rows_of(deployment, dist_id)["ns1.edge.example."]
        assert row["stage"] == "decryption"
        assert f"sealed with '{listed}' but this node has no such key" in row["error"]
        assert f"its keys: {held}" in row["error"]
        # Nothing changed on the node: no key installed, the keys on disk untouched.
        assert folder_tags(deployment.node_dir / "keys") == set()
        assert [(s["outcome"], s["stage"]) for s in deployment.status()] == [
            ("rejected", "decryption")
        ]
    finally:
        deployment.close()


# --- the live demo --------------------------------------------------------------------------------


def test_live_demo_with_a_hybrid_node_installs_into_bind_and_validates() -> None:
    result = subprocess.run(
        [str(BIN / "krs-demo"), "--backend", "hpke-pq"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node ns1.edge.example. (hpke-pq)" in result.stdout
    assert "VALID" in result.stdout and "NOT VALID" not in result.stdout
