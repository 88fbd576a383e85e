"""``krs-kdc custody rotate-kek`` through the real krs-kdc (docs/security.md, "Rotating the KEK"):
every key sealed again under a new KEK (a file, or an object in a SoftHSM2 token), the old KEK
gone and opening nothing, kdc.db and its WAL without a plaintext key, a real ``krs run``
installing the next distribution; and the process killed between the steps leaves a KDC that
opens every key, whose next rotation clears what the crash left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krs_lab import softhsm
from krs_lab.deployment import Deployment, wait_until
from krs_lab.process import LabError
from krs_plugin.crypto import HpkeKey, load_jose_key, write_hpke_public
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.kdc import custody as cu
from krs_plugin.kdc.store import Store
from tests.integration.test_kdc_custody import CZ, KDC, NODE, ZONE, add_node, kdc, state_files
from tests.keysearch import assert_nowhere, received

NO_HSM = softhsm.available()


def token_keks(env: dict[str, str], module: str, token: str, pin: str) -> set[str]:
    """The labels of the token's secret keys, read by a process of its own."""
    probe = (
        "import pkcs11, json\n"
        f"s = pkcs11.lib({module!r}).get_token(token_label={token!r}).open(user_pin={pin!r})\n"
        "objs = s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY})\n"
        "print(json.dumps(sorted(o.label for o in objs)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout  # fmt: skip
    return set(json.loads(out))


def rows_opening_under(state: Path, kek: bytes) -> int:
    """How many of kdc.db's sealed keys the file KEK ``kek`` opens."""
    store = Store(state / "kdc.db")
    try:
        settings = cu.CustodySettings("file", kek_file="unused")
        custody = cu.FileCustody(settings, state, source="old KEK", _kek=AESGCM(kek))
        opened = 0
        for (key_id,) in store.db.execute("SELECT id FROM keys").fetchall():
            row = store.key_by_id(int(key_id))
            aad = cu.key_aad(row.zone, row.key_tag, row.algorithm, row.role)
            try:
                custody.open(row.sealed or b"", aad, what="probe")
                opened += 1
            except cu.CustodyError:
                pass
        return opened
    finally:
        store.close()


def installed(deployment: Deployment) -> set[tuple[int, bytes]]:
    keys = [read_bind_key_pair(p)[0] for p in (deployment.node_dir / "keys").glob("*.private")]
    return {(k.key_tag, k.key_material) for k in keys}


@pytest.mark.parametrize("custody", ["file", "pkcs11"])
def test_rotate_kek_old_kek_gone_and_krs_run_installs_the_next_distribution(
    custody: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if custody == "pkcs11" and NO_HSM is not None:
        pytest.skip(NO_HSM)
    for name in ("SOFTHSM2_CONF", "KRS_KDC_PIN"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # the lab sets them; put back after
    monkeypatch.setenv(softhsm.LAB_CUSTODY, custody)
    deployment = Deployment(tmp_path / "lab")
    state = deployment.state
    try:
        deployment.start_kdc()
        deployment.start_krs()
        first = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(first)
        keys_before = installed(deployment)
        assert len(keys_before) == 2
        before = json.loads(deployment.kdc("--json", "custody", "status"))
        old_file = state / "keys" / "kdc.kek"
        old_kek = old_file.read_bytes() if custody == "file" else b""
        running = subprocess.run(
            [KDC, "--state", str(state), "custody", "rotate-kek"], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert running.returncode != 0 and "krs-kdc serve is running" in running.stderr
        assert (state / "keys" / "kdc.kek").exists() or custody == "pkcs11"
        deployment.stop("kdc")  # it keeps the KEK open; rotate-kek empties the WAL

        result = json.loads(deployment.kdc("--json", "custody", "rotate-kek"))
        assert result["sealed"] == 2 and result["custody"] == custody
        assert result["from"] != result["to"]
        status = json.loads(deployment.kdc("--json", "custody", "status"))
        assert status["ok"] and status["keys_sealed"] == 2 and status["keys_plain"] == 0
        if custody == "file":
            assert not old_file.exists()  # shredded once kdc.db was committed
            new_file = Path(result["kek"])
            assert new_file.parent == old_file.parent and new_file.stat().st_mode & 0o777 == 0o600
            assert status["kek"] == f"KEK file {new_file}"
            assert rows_opening_under(state, bytes.fromhex(old_kek.decode().strip())) == 0
            assert rows_opening_under(state, bytes.fromhex(new_file.read_text().strip())) == 2
        else:
            env = dict(os.environ)
            labels = token_keks(env, before["module"], before["token"], env["KRS_KDC_PIN"])
            assert before["kek_label"] not in labels  # destroyed in the token
            assert status["kek_label"] == result["kek"] and result["kek"] in labels
            assert status["kek_extractable"] is False and status["kek_sensitive"] is True
        wal = state / "kdc.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0
        trail = deployment.kdc("--json", "audit", "list")
        entry = [e for e in json.loads(trail) if e["kind"] == "custody.rotate_kek"]
        assert len(entry) == 1, trail
        assert result["from"] in trail and result["to"] in trail
        if old_kek:
            assert old_kek.strip().decode() not in trail
        subprocess.run([KDC, "--state", str(state), "audit", "verify"], check=True,
                       capture_output=True, timeout=60)  # fmt: skip

        deployment.start_kdc()
        second = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(second)  # krs run verified, opened and installed it
        keys_after = installed(deployment)
        assert keys_after == keys_before
        installed_keys = [
            read_bind_key_pair(p)[0] for p in (deployment.node_dir / "keys").glob("*.private")
        ]
        deployment.stop("kdc")
        assert_nowhere(installed_keys, state_files(state))
    finally:
        deployment.close()


CRASHES = [("file", "kek_written"), ("file", "kek_committed"), ("pkcs11", "kek_written"),
           ("pkcs11", "kek_committed")]  # fmt: skip


@pytest.mark.parametrize(("custody", "failpoint"), CRASHES)
def test_rotate_kek_killed_between_steps_leaves_a_kdc_that_opens_every_key(
    custody: str, failpoint: str, tmp_path: Path
) -> None:
    if custody == "pkcs11" and NO_HSM is not None:
        pytest.skip(NO_HSM)
    env = dict(os.environ)
    options: list[str] = []
    hsm = None
    if custody == "pkcs11":
        hsm = softhsm.SoftHsm(tmp_path / "softhsm")
        env = hsm.env
        options = ["--custody", "pkcs11", "--pkcs11-module", hsm.module, "--token", hsm.label,
                   "--pin-file", str(hsm.pin_file)]  # fmt: skip
    state = tmp_path / "state"
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    kdc(state, "init", "--control-zone", CZ, *options, env=env)
    kdc(state, "zone", "add", ZONE, env=env)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "KSK", env=env)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "ZSK", env=env)
    add_node(state, tmp_path, env)
    dist = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(dist, dict)
    keys = received(state, NODE, node, dist["distribution_id"])
    wanted = {(k.key_tag, k.key_material) for k in keys}

    def keks() -> set[str]:
        if hsm is None:
            return {p.name for p in (state / "keys").glob("*.kek")}
        return token_keks(env, hsm.module, hsm.label, hsm.pin)

    killed = subprocess.run(
        [KDC, "--state", str(state), "--json", "custody", "rotate-kek"],
        env={**env, "KRS_FAILPOINT": failpoint}, capture_output=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert len(keks()) == 2  # the old KEK and the new one both exist at the crash

    status = kdc(state, "custody", "status", env=env)
    assert isinstance(status, dict) and status["ok"], status
    assert status["kek_rotation_unfinished"]  # said, until the next rotate-kek clears it
    again = kdc(state, "distribute", "--zone", ZONE, env=env)  # opens every key
    assert isinstance(again, dict)
    got = received(state, NODE, node, again["distribution_id"])
    assert {(k.key_tag, k.key_material) for k in got} == wanted

    result = kdc(state, "custody", "rotate-kek", env=env)  # finishes, then rotates
    assert isinstance(result, dict) and result["sealed"] == 2
    assert len(result["cleaned_before"]) == 1, result
    assert len(keks()) == 1  # only the KEK kdc.db names is left
    done = kdc(state, "custody", "status", env=env)
    assert isinstance(done, dict) and done["kek_rotation_unfinished"] is None
    last = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(last, dict)
    got = received(state, NODE, node, last["distribution_id"])
    assert {(k.key_tag, k.key_material) for k in got} == wanted
    assert_nowhere(keys, state_files(state))


def test_leaving_the_token_roll_to_a_file_key_then_migrate_and_krs_run_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pkcs11 -> file (docs/security.md, "Leaving a token"): migrate first refuses, naming the
    roll; ``identity roll --to-file`` replaces the token's signing key with a file key while the
    node keeps working; then ``custody migrate --to file`` seals the keys under a KEK file, and
    ``krs-kdc serve`` without any access to the token sends a distribution ``krs run`` installs."""
    if NO_HSM is not None:
        pytest.skip(NO_HSM)
    for name in ("SOFTHSM2_CONF", "KRS_KDC_PIN"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv(softhsm.LAB_CUSTODY, "pkcs11")
    lab = Deployment(tmp_path / "lab")
    state = lab.state
    try:
        before = json.loads(lab.kdc("--json", "custody", "status"))
        shutil.copy(state / "keys" / "kdc.signing.pubkey", lab.node_dir / "kdc.pub")
        lab.config["kdc"] = {"verification_key": str(lab.node_dir / "kdc.pub")}
        lab.start_kdc(serve_args=["--resend-after", "2"])
        lab.start_krs()
        first = lab.distribute("--zone", ZONE)
        lab.wait_confirmed(first)
        keys_before = installed(lab)

        refused = subprocess.run(
            [KDC, "--state", str(state), "custody", "migrate", "--to", "file"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0 and "identity roll --to-file" in refused.stderr
        assert json.loads(lab.kdc("--json", "custody", "status"))["custody"] == "pkcs11"

        started = json.loads(lab.kdc("--json", "identity", "roll", "--to-file"))
        assert started["custody"] == "file"

        def idle() -> bool:
            try:
                return json.loads(lab.kdc("--json", "identity", "status"))["phase"] == "idle"
            except LabError:  # read while serve's switch moves kdc.signing.pubkey: ask again
                return False

        wait_until(idle, 120, lab.all_logs)
        signing = state / "keys" / "kdc.signing.privatekey"
        assert load_jose_key(signing).thumbprint == started["next"]
        assert signing.stat().st_mode & 0o777 == 0o600
        env = dict(os.environ)
        probe = (
            "import pkcs11, json\n"
            f"s = pkcs11.lib({before['module']!r}).get_token(token_label={before['token']!r})"
            f".open(user_pin={env['KRS_KDC_PIN']!r})\n"
            "objs = s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})\n"
            "print(json.dumps(sorted(o.label for o in objs)))\n"
        )
        labels = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                env=env, timeout=60, check=True).stdout  # fmt: skip
        assert before["signing_label"] not in json.loads(labels)  # destroyed by the retire
        lab.stop("kdc")

        moved = json.loads(lab.kdc("--json", "custody", "migrate", "--to", "file"))
        assert moved["from"] == "pkcs11" and moved["to"] == "file" and moved["sealed"] == 2
        assert before["kek_label"] in moved["kept_kek"]
        # from here on the KDC never needs the token: no PIN, no SoftHSM2 configuration
        monkeypatch.delenv("KRS_KDC_PIN")
        monkeypatch.setenv("SOFTHSM2_CONF", str(tmp_path / "absent.conf"))
        status = json.loads(lab.kdc("--json", "custody", "status"))
        assert status["custody"] == "file" and status["ok"] and status["keys_sealed"] == 2
        lab.start_kdc(serve_args=["--resend-after", "2"])
        after = lab.distribute("--zone", ZONE)
        lab.wait_confirmed(after, 60)  # krs run verified it with the file key, installed it
        assert installed(lab) == keys_before
        lab.stop("kdc")
        lab.kdc("audit", "verify")
        keys = [read_bind_key_pair(p)[0] for p in (lab.node_dir / "keys").glob("*.private")]
        assert_nowhere(keys, state_files(state))
    finally:
        lab.close()


def test_rotate_kek_from_a_systemd_credential_needs_the_new_kek_file_and_the_credential_after(
    tmp_path: Path,
) -> None:
    """The KEK in the credential kdc-kek: rotate-kek refuses without --new-kek-file; with it,
    kdc.db is sealed under the new file, the KDC refuses the old credential (named as the wrong
    KEK) and works once the credential holds the new KEK (docs/security.md)."""
    state = tmp_path / "state"
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    kdc(state, "init", "--control-zone", CZ)
    kdc(state, "zone", "add", ZONE)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "CSK")
    add_node(state, tmp_path)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    os.replace(state / "keys" / "kdc.kek", credentials / "kdc-kek")
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    first = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(first, dict)
    wanted = {(k.key_tag, k.key_material) for k in
              received(state, NODE, node, first["distribution_id"])}  # fmt: skip
    before = state_files(state)["kdc.db"]

    refused = kdc(state, "custody", "rotate-kek", env=env, ok=False)
    assert "give the new KEK as --new-kek-file" in str(refused)
    assert state_files(state)["kdc.db"] == before

    new = tmp_path / "kek.new"
    result = kdc(state, "custody", "rotate-kek", "--new-kek-file", str(new), env=env)
    assert isinstance(result, dict) and result["credential"] and result["sealed"] == 1
    assert new.stat().st_mode & 0o777 == 0o600
    stale = kdc(state, "distribute", "--zone", ZONE, env=env, ok=False)
    assert "is not the one kdc.db's keys are sealed with" in str(stale)
    os.replace(new, credentials / "kdc-kek")  # what systemd-creds encrypt and a restart do
    again = kdc(state, "distribute", "--zone", ZONE, env=env)
    assert isinstance(again, dict)
    got = received(state, NODE, node, again["distribution_id"])
    assert {(k.key_tag, k.key_material) for k in got} == wanted


def test_backups_before_and_after_a_rotation_restore_with_their_own_kek_copy(
    tmp_path: Path,
) -> None:
    """A backup carries no KEK file, old or new; one taken after rotate-kek restores with the new
    KEK's copy (installed where kdc.db names it), one taken before with the old copy, and
    not with the other (docs/kdc.md, "Backup and restore")."""
    live = tmp_path / "live"
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    kdc(live, "init", "--control-zone", CZ)
    kdc(live, "zone", "add", ZONE)
    kdc(live, "key", "generate", "--zone", ZONE, "--role", "CSK")
    add_node(live, tmp_path)
    offline = tmp_path / "offline"
    offline.mkdir()
    private = offline / "backup.privatekey"
    kdc(live, "backup", "key", "generate", "--private", str(private), "--public",
        str(live / "keys" / "backup.pubkey"))  # fmt: skip
    old_copy = offline / "old.kek"
    shutil.copy(live / "keys" / "kdc.kek", old_copy)
    kdc(live, "backup", "--output", str(tmp_path / "before.krsbackup"))

    result = kdc(live, "custody", "rotate-kek")
    assert isinstance(result, dict)
    new_kek = Path(result["kek"])
    assert new_kek.name.endswith(".kek") and new_kek.parent == live / "keys"
    new_copy = offline / "new.kek"
    shutil.copy(new_kek, new_copy)
    kdc(live, "backup", "--output", str(tmp_path / "after.krsbackup"))

    for name, copy, other in (("after", new_copy, old_copy), ("before", old_copy, new_copy)):
        archive = str(tmp_path / f"{name}.krsbackup")
        wrong = kdc(tmp_path / f"wrong-{name}", "restore", archive, "--key", str(private),
                    "--kek-file", str(other), ok=False)  # fmt: skip
        assert "is not the one kdc.db's keys are sealed with" in str(wrong)
        target = tmp_path / f"restored-{name}"
        kdc(target, "restore", archive, "--key", str(private), "--kek-file", str(copy))
        status = kdc(target, "custody", "status")
        assert isinstance(status, dict) and status["ok"], status
        dist = kdc(target, "distribute", "--zone", ZONE)
        assert isinstance(dist, dict)
        assert len(received(target, NODE, node, dist["distribution_id"])) == 1


def test_rotate_kek_during_a_signing_key_roll_and_the_roll_finishes(
    tmp_path: Path,
) -> None:
    """A roll under way does not hold a KEK rotation (its keys are signing keys, never sealed
    under the KEK: docs/security.md); the roll then switches and retires, and the keys open."""
    state = tmp_path / "state"
    node = HpkeKey.generate()
    write_hpke_public(tmp_path / "node.pub", node)
    kdc(state, "init", "--control-zone", CZ)
    kdc(state, "zone", "add", ZONE)
    kdc(state, "key", "generate", "--zone", ZONE, "--role", "CSK")
    kdc(state, "identity", "roll")  # no node yet: nothing holds its steps
    result = kdc(state, "custody", "rotate-kek")
    assert isinstance(result, dict) and result["sealed"] == 1
    kdc(state, "identity", "roll", "--continue")
    kdc(state, "identity", "roll", "--continue")
    status = kdc(state, "identity", "status")
    assert isinstance(status, dict) and status["phase"] == "idle"
    add_node(state, tmp_path)
    dist = kdc(state, "distribute", "--zone", ZONE)
    assert isinstance(dist, dict)
    assert len(received(state, NODE, node, dist["distribution_id"])) == 1
    assert kdc(state, "custody", "status")["ok"]  # type: ignore[index]
