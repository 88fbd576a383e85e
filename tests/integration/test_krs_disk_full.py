"""`krs run` and `krs-kdc serve` on a full disk (issue 20, findings 4 and 5): a small tmpfs under
the key directory or a state directory, filled to leave one page or none. Real processes on
loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import ZONE, Deployment, wait_until

from krs_plugin.dnssec import generate_key
from krs_plugin.dnssec.bindfiles import bind_private_text
from tests.fsutil import full_disk

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.close()


def status_of(deployment: Deployment, dist_id: str) -> tuple[str, str] | None:
    for row in deployment.status():
        if row["id"] == dist_id:
            return row["outcome"], row["stage"]
    return None


def kdc_status(deployment: Deployment, dist_id: str) -> str:
    return next(r["status"] for r in deployment.distributions() if r["id"] == dist_id)


def test_full_key_directory_is_failed_at_apply_and_applies_after_a_restart_once_freed(
    deployment: Deployment,
) -> None:
    keys = deployment.node_dir / "keys"
    with full_disk(keys, size=64 * 1024) as disk:
        deployment.start_kdc()
        deployment.start_krs()
        disk.fill(free_pages=1)
        dist_id = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: status_of(deployment, dist_id) is not None,
            30,
            lambda: f"{dist_id} recorded:\n{deployment.all_logs()}",
        )
        assert status_of(deployment, dist_id) == ("failed", "apply")
        assert "disk full" in deployment.log("krs")
        assert [p.name for p in keys.iterdir() if p != disk.filler] == []  # nothing half written
        assert kdc_status(deployment, dist_id) == "pending"  # not confirmed as a success
        deployment.stop("krs")

        # What a kill between a key's two files leaves must not stop the next start either.
        orphan = generate_key(ZONE, 13, 256)
        (keys / f"{orphan.basename}.private").write_text(bind_private_text(orphan))
        disk.free()
        deployment.start_krs("krs-restarted")  # no hand work: it starts, polls, applies
        deployment.wait_confirmed(dist_id, timeout=60)
        assert status_of(deployment, dist_id) == ("applied", "done")
        assert not (keys / f"{orphan.basename}.private").exists()
        deployment.stop("krs-restarted")  # before the tmpfs goes
