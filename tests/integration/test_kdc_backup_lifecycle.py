"""docs/kdc.md, "Backup and restore": a KDC backed up in the middle of a ZSK rollover (``krs-kdc
serve`` running its policy with a real ``krs run``), restored into a new state directory, and the
restored ``serve`` finishes that rollover with the node: the same new ZSK becomes active and the
old one is removed, no other key is made."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import ZONE, Deployment, wait_until

pytestmark = pytest.mark.integration

# Seconds instead of hours (as test_kdc_metrics.py): each step takes seconds.
FAST = (
    "--dnskey-ttl", "2", "--max-zone-ttl", "3", "--negative-ttl", "2",
    "--signatures-validity", "6", "--signatures-refresh", "4", "--publish-safety", "3",
    "--retire-safety", "1", "--parent-ds-ttl", "2", "--parent-propagation-delay", "1",
    "--propagation-margin", "0", "--zsk-lifetime", "0",
)  # fmt: skip


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "d", generate_keys=False)
    yield deployment
    deployment.close()


def keys(deployment: Deployment) -> dict[int, tuple[str, str]]:
    """Each key's tag: (role, state)."""
    rows = json.loads(deployment.kdc("--json", "key", "list", "--zone", ZONE))
    return {int(r["key_tag"]): (str(r["role"]), str(r["state"])) for r in rows}


def test_a_kdc_restored_mid_rollover_finishes_the_rollover_with_the_node(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.kdc("policy", "add", "fast", *FAST)
    deployment.kdc("zone", "set", ZONE, "--policy", "fast")
    offline = tmp_path / "offline"
    offline.mkdir()
    private = offline / "kdc-backup.privatekey"
    deployment.kdc("backup", "key", "generate", "--private", str(private),
                   "--public", str(deployment.state / "keys" / "backup.pubkey"))  # fmt: skip
    deployment.start_kdc()
    deployment.start_krs()

    def states() -> list[tuple[str, str]]:
        return sorted(keys(deployment).values())

    def phase() -> str:
        (view,) = json.loads(deployment.kdc("--json", "status"))["zones"]
        return str(view["phase"])

    # The engine makes the zone's first keys; the node installs and confirms them.
    wait_until(lambda: phase() == "idle", 90, deployment.all_logs)
    assert states() == [("KSK", "active"), ("ZSK", "active")]
    (old_zsk,) = [t for t, (role, _) in keys(deployment).items() if role == "ZSK"]
    deployment.kdc("rollover", "--zone", ZONE, "--role", "ZSK")
    wait_until(
        lambda: ("ZSK", "published") in states(), 60, lambda: f"step 1:\n{deployment.all_logs()}"
    )
    (new_zsk,) = [t for t, (r, s) in keys(deployment).items() if (r, s) == ("ZSK", "published")]

    # The backup, taken while serve runs the rollover; then the old host is gone.
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    made = json.loads(deployment.kdc("--json", "backup", "--output", str(backups)))
    deployment.stop("kdc")

    # The new host: its KEK copy in place (custody file), then restore.
    restored = tmp_path / "new-host" / "kdc"
    (restored / "keys").mkdir(parents=True, mode=0o700)
    kek = deployment.state / "keys" / "kdc.kek"
    if kek.exists():  # KRS_LAB_CUSTODY=pkcs11: the token is the new host's as well
        shutil.copy2(kek, restored / "keys" / "kdc.kek")
    old_state = deployment.state
    deployment.state = restored
    result = json.loads(deployment.kdc("--json", "restore", made["file"], "--key", str(private)))
    assert result["backup_id"] == made["backup_id"]
    at_backup = keys(deployment)  # the keys as the backup has them (serve went on meanwhile)
    # mid-rollover: the old ZSK not yet removed, the new one not yet signing alone
    assert at_backup[old_zsk] in (("ZSK", "active"), ("ZSK", "retired")), at_backup
    assert at_backup[new_zsk] in (("ZSK", "published"), ("ZSK", "active")), at_backup
    for gone in [old_state / "kdc.db", *(old_state / "keys").glob("*.private*")]:
        gone.unlink()  # nothing secret of the old host is used from here on
    (old_state / "keys" / "kdc.kek").unlink(missing_ok=True)

    # The restored serve takes over on the same address and the rollover ends: the ZSK
    # published at the backup is active, the old one removed, and no other key was made.
    deployment.start_kdc(name="kdc-restored")
    wait_until(
        lambda: keys(deployment).get(old_zsk, ("", ""))[1] == "removed",
        120,
        lambda: f"the rollover to end after the restore:\n{deployment.all_logs()}",
    )
    final = keys(deployment)
    assert final[new_zsk] == ("ZSK", "active"), final
    assert sorted(final) == sorted(at_backup), final
    assert sorted(v for t, v in final.items() if t not in (old_zsk, new_zsk)) == [("KSK", "active")]
    history = json.loads(deployment.kdc("--json", "audit", "list"))
    kinds = [e["kind"] for e in history]
    restore_at = kinds.index("backup.restore")
    assert any(e["kind"] == "key.state" for e in history[restore_at:]), kinds
    assert json.loads(deployment.kdc("--json", "audit", "verify"))["ok"]
