"""`krs run` and `krs-kdc serve` on a full disk (issue 20, findings 4 and 5): a small tmpfs under
the key directory or a state directory, filled to leave one page or none. Real processes on
loopback."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import ZONE, Deployment, http_get, wait_until
from netutil import free_port

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


def key_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


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
        # Not confirmed as a success: reported as a failure, with the stage (issue 21, item 2).
        wait_until(
            lambda: kdc_status(deployment, dist_id) == "failed",
            30,
            lambda: f"{dist_id} failed at the KDC:\n{deployment.all_logs()}",
        )
        (row,) = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
        assert row["stage"] == "apply" and "disk full" in row["error"]
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


def health(port: int) -> tuple[int, dict[str, object]]:
    status, body = http_get(port, "/healthz")
    return status, json.loads(body)


def test_full_state_directory_of_the_krs_records_nothing_confirms_nothing_and_recovers(
    deployment: Deployment,
) -> None:
    """krs.db on a full disk: one clear error naming the database, /healthz unhealthy, no
    confirmation of what could not be recorded; once space is freed, the distribution is
    processed again, recorded and confirmed without a restart."""
    state = deployment.node_dir / "state"
    with full_disk(state, size=256 * 1024) as disk:
        port = free_port()
        deployment.write_config(state=str(state / "krs.db"), metrics=f"127.0.0.1:{port}")
        deployment.start_kdc()
        deployment.start_krs()
        keys = key_files(deployment.node_dir / "keys")
        disk.fill(free_pages=0)
        dist_id = deployment.distribute("--zone", ZONE)
        wait_until(
            lambda: "its outcome is not recorded" in deployment.log("krs"),
            30,
            lambda: f"the state write failure reported:\n{deployment.all_logs()}",
        )
        log = deployment.log("krs")
        assert f"state database {state / 'krs.db'}: disk full" in log
        assert "Traceback" not in log
        code, body = health(port)
        assert code == 503 and any("disk full" in str(p) for p in body["problems"])  # type: ignore[attr-defined]
        assert key_files(deployment.node_dir / "keys") == keys  # the journal first: not written
        assert kdc_status(deployment, dist_id) == "pending"

        disk.free()
        deployment.wait_confirmed(dist_id, timeout=60)  # tried again by itself: 5 s, 10 s, ...
        assert status_of(deployment, dist_id) == ("applied", "done")
        assert health(port)[0] == 200
        deployment.stop("krs")


def test_full_state_directory_of_the_kdc_answers_servfail_and_loses_no_confirmation(
    deployment: Deployment,
) -> None:
    """kdc.db on a full disk: the confirmation it cannot record is answered SERVFAIL, so the
    node sends it again, and is recorded once space is freed; the log has one line per kind of
    failure, no traceback."""
    state = deployment.state
    saved = deployment.root / "kdc-saved"
    state.rename(saved)
    with full_disk(state, size=1024 * 1024) as disk:
        for item in saved.iterdir():  # the KDC's state, moved onto the small disk
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, state / item.name)
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.start_kdc()
        disk.fill(free_pages=0)
        deployment.start_krs()  # polls at start, applies, confirms
        wait_until(
            lambda: "confirmation not recorded, answered SERVFAIL" in deployment.log("kdc"),
            30,
            lambda: f"the confirmation refused:\n{deployment.all_logs()}",
        )
        time.sleep(8)  # the node sends it again (1 s, 2 s, 4 s): no new line, no traceback
        kdc_log = deployment.log("kdc")
        assert "disk full" in kdc_log and "Traceback" not in kdc_log
        assert kdc_log.count("confirmation not recorded") == 1
        assert "refused by" in deployment.log("krs")  # SERVFAIL seen: the node tries again
        assert kdc_status(deployment, dist_id) == "pending"

        disk.free()
        deployment.wait_confirmed(dist_id, timeout=60)
        assert "confirmations are recorded again" in deployment.log("kdc")
        deployment.stop("krs")
        deployment.stop("kdc")
