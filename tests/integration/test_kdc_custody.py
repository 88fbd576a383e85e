"""The KDC's key custody through the real krs-kdc: the signing key and the KEK in a SoftHSM2
token, a legacy kdc.db migrated in place; kdc.db and exports hold none of the private keys the
test knows (searched as PEM, DER and raw private bytes), and distributions still open and verify
on the node's side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krs_lab import softhsm
from krs_lab.deployment import Deployment
from krs_plugin.crypto import HpkeKey, load_jose_key, write_hpke_public
from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    generate_key,
    read_bind_key_pair,
    write_bind_key_pair,
)
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.keygen import store_key
from krs_plugin.kdc.store import Store
from tests import keysearch
from tests.keysearch import assert_nowhere, private_forms

KDC = str(Path(sys.executable).parent / "krs-kdc")
CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."


OUTPUT: list[str] = []  # every command's stdout and stderr: searched for private keys too


def kdc(state: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> object:
    result = subprocess.run(
        [KDC, "--state", str(state), "--json", *args],
        capture_output=True, text=True, timeout=120, env=env or dict(os.environ),
    )  # fmt: skip
    OUTPUT.append(result.stdout + result.stderr)
    if not ok:
        assert result.returncode != 0, result.stdout
        return result.stderr
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


def received(state: Path, node: HpkeKey, dist_id: str) -> list[DnssecKey]:
    """What the node gets: the keys of the distribution, checked and opened as a node does."""
    return keysearch.received(state, NODE, node, dist_id)


def state_files(state: Path) -> dict[str, bytes]:
    """kdc.db and its -wal (every byte SQLite keeps)."""
    return {p.name: p.read_bytes() for p in state.glob("kdc.db*") if p.is_file()}


@pytest.fixture
def node(tmp_path: Path) -> HpkeKey:
    key = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", key)
    return key


def add_node(state: Path, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    kdc(state, "node", "add", NODE, "--notify", "127.0.0.1:9", "--hpke-pubkey",
        str(tmp_path / "node.pub"), "--zone", ZONE, env=env)  # fmt: skip


@pytest.mark.skipif(softhsm.available() is not None, reason=str(softhsm.available()))
def test_keys_in_softhsm_distribution_verifies_and_nothing_private_in_kdc_db_or_export(
    tmp_path: Path, node: HpkeKey
) -> None:
    hsm = softhsm.SoftHsm(tmp_path / "softhsm")
    env = hsm.env
    state = tmp_path / "state"
    token = ["--pkcs11-module", hsm.module, "--token", hsm.label, "--pin-file", str(hsm.pin_file)]
    init = kdc(state, "init", "--control-zone", CZ, "--custody", "pkcs11", *token, env=env)
    assert isinstance(init, dict) and init["custody"] == "pkcs11"
    assert not (state / "keys" / "kdc.signing.privatekey").exists()
    other = kdc(tmp_path / "other", "init", "--control-zone", CZ, "--custody", "pkcs11", *token,
                env=env, ok=False)  # fmt: skip
    assert "already holds krs-kdc-kek and krs-kdc-signing" in str(other)  # not another KDC's keys
    kdc(state, "zone", "add", ZONE, env=env)
    # a key the test made itself (imported), and one the KDC makes
    imported = generate_key(ZONE, 13, 257)
    (tmp_path / "import").mkdir()
    write_bind_key_pair(tmp_path / "import", imported, KeyTiming())
    kdc(state, "key", "import", str(next((tmp_path / "import").glob("*.private"))), env=env)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "ZSK", env=env)
    add_node(state, tmp_path, env)
    dist = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(dist, dict)

    keys = received(state, node, dist["distribution_id"])
    assert {k.key_tag for k in keys} >= {imported.key_tag} and len(keys) == 2
    export = subprocess.run(
        [KDC, "--state", str(state), "export"], capture_output=True, timeout=60, env=env,
        check=True,
    ).stdout  # fmt: skip
    listing = subprocess.run(
        [KDC, "--state", str(state), "--json", "key", "list"], capture_output=True, timeout=60,
        env=env, check=True,
    ).stdout  # fmt: skip
    outputs = "\n".join(OUTPUT).encode()
    assert_nowhere(
        keys, {**state_files(state), "export": export, "key list": listing, "output": outputs}
    )

    status = kdc(state, "custody", "status", env=env)
    assert isinstance(status, dict)
    assert status["ok"] and status["keys_sealed"] == 2 and status["keys_plain"] == 0
    assert status["signing_key_extractable"] is False and status["signing_key_sensitive"]

    # the signing key's value cannot be read out of the token
    probe = (
        "import pkcs11, sys\n"
        f"lib = pkcs11.lib({hsm.module!r})\n"
        f"s = lib.get_token(token_label={hsm.label!r}).open(user_pin={hsm.pin!r})\n"
        "k = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label='krs-kdc-signing')\n"
        "try:\n    k[pkcs11.Attribute.VALUE]\nexcept pkcs11.exceptions.AttributeSensitive:\n"
        "    print('sensitive'); sys.exit(0)\n"
        "print('readable'); sys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert result.stdout.strip() == "sensitive", result.stderr

    # a wrong PIN: a clear error, and nothing changed
    before = state_files(state)["kdc.db"]
    error = kdc(state, "distribute", "--zone", ZONE, env={**env, "KRS_KDC_PIN": "0000"}, ok=False)
    assert "the PIN ($KRS_KDC_PIN) is wrong" in str(error)
    assert len(kdc(state, "distribution", "list", env=env)) == 1  # type: ignore[arg-type]
    assert state_files(state)["kdc.db"] == before


def make_legacy_kdc(state: Path) -> list[DnssecKey]:
    """A kdc.db as a KDC from before custody left it: no custody setting, keys in the clear."""
    create_identity(state / "keys")
    store = Store(state / "kdc.db")
    store.set_meta("control_zone", CZ)
    store.add_zone(ZONE)
    keys = [generate_key(ZONE, 13, 257), generate_key(ZONE, 15, 256)]
    for key, role in zip(keys, ("KSK", "ZSK"), strict=True):
        store_key(store, ZONE, key, role, now=int(time.time()), publish_at=int(time.time()))
    store.close()
    return keys


def test_legacy_kdc_db_migrated_to_a_kek_file_keeps_no_plaintext_and_distributes(
    tmp_path: Path, node: HpkeKey
) -> None:
    state = tmp_path / "state"
    keys = make_legacy_kdc(state)
    add_node(state, tmp_path)
    first = kdc(state, "distribute", "--zone", ZONE)
    assert isinstance(first, dict)
    before = state_files(state)
    assert any(private_forms(keys[0])["PEM"] in data for data in before.values())  # the problem

    result = kdc(state, "custody", "migrate", "--to", "file")
    assert isinstance(result, dict) and result["sealed"] == 2 and result["to"] == "file"
    wal = state / "kdc.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed: no old page left there
    assert_nowhere(keys, state_files(state))
    assert (state / "keys" / "kdc.kek").stat().st_mode & 0o777 == 0o600

    again = kdc(state, "custody", "migrate", "--to", "file")
    assert isinstance(again, dict) and again["unchanged"] and again["sealed"] == 0
    other = kdc(state, "custody", "migrate", "--to", "file", "--kek-file", str(tmp_path / "k"),
                ok=False)  # fmt: skip
    assert "is a KEK rotation: krs-kdc custody rotate-kek" in str(other)

    dist = kdc(state, "distribute", "--zone", ZONE)
    assert isinstance(dist, dict)
    got = received(state, node, dist["distribution_id"])
    assert {k.key_tag for k in got} == {k.key_tag for k in keys}
    assert {k.key_material for k in got} == {k.key_material for k in keys}
    assert_nowhere(keys, state_files(state))
    ds = kdc(state, "zone", "ds", ZONE)
    assert isinstance(ds, dict) and ds["keys"][0]["key_tag"] == keys[0].key_tag


@pytest.mark.skipif(softhsm.available() is not None, reason=str(softhsm.available()))
def test_legacy_kdc_db_migrated_into_a_token_keeps_its_signing_key(
    tmp_path: Path, node: HpkeKey
) -> None:
    hsm = softhsm.SoftHsm(tmp_path / "softhsm")
    env = hsm.env
    state = tmp_path / "state"
    keys = make_legacy_kdc(state)
    add_node(state, tmp_path, env)
    signing_file = state / "keys" / "kdc.signing.privatekey"
    thumbprint = load_jose_key(signing_file).thumbprint
    options = ["--pkcs11-module", hsm.module, "--token", hsm.label, "--pin-file",
               str(hsm.pin_file)]  # fmt: skip
    result = kdc(state, "custody", "migrate", "--to", "pkcs11", *options, env=env)
    assert isinstance(result, dict) and result["sealed"] == 2
    assert not signing_file.exists()  # overwritten and removed once in the token
    assert_nowhere(keys, state_files(state))
    again = kdc(state, "custody", "migrate", "--to", "pkcs11", *options, env=env)
    assert isinstance(again, dict) and again["unchanged"]
    error = kdc(state, "custody", "migrate", "--to", "file", env=env, ok=False)
    assert "cannot leave it" in str(error) and "identity roll --to-file" in str(error)

    dist = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(dist, dict)
    got = received(state, node, dist["distribution_id"])  # verified with the same public key
    assert {k.key_tag for k in got} == {k.key_tag for k in keys}
    status = kdc(state, "custody", "status", env=env)
    assert isinstance(status, dict) and status["signing_key"] == thumbprint and status["ok"]
    verify = subprocess.run([KDC, "--state", str(state), "audit", "verify"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.skipif(softhsm.available() is not None, reason=str(softhsm.available()))
def test_serve_and_krs_run_with_the_kdc_keys_in_softhsm_log_no_private_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's whole path (krs-kdc serve, krs run) with KRS_LAB_CUSTODY=pkcs11: the node
    installs what the token-signed distribution carries; neither log nor kdc.db holds it."""
    for name in ("SOFTHSM2_CONF", "KRS_KDC_PIN"):
        monkeypatch.setenv(name, "")  # set by the lab below; put back after the test
    monkeypatch.setenv(softhsm.LAB_CUSTODY, "pkcs11")
    deployment = Deployment(tmp_path / "lab")
    try:
        status = json.loads(deployment.kdc("--json", "custody", "status"))
        assert status["custody"] == "pkcs11" and status["ok"]
        assert not (deployment.state / "keys" / "kdc.signing.privatekey").exists()
        deployment.start_kdc()
        deployment.start_krs()
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id)
        installed = [
            read_bind_key_pair(p)[0] for p in (deployment.node_dir / "keys").glob("*.private")
        ]
        assert len(installed) == 2
        logs = {p.name: p.read_bytes() for p in deployment.logs.iterdir()}
        assert_nowhere(installed, {**state_files(deployment.state), **logs})
    finally:
        deployment.close()
