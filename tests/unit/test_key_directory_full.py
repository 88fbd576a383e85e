"""A full key directory (issue 20, finding 4): an operational failure to retry (``failed`` at
``apply``), never a refusal of the KDC's data, and nothing half written that blocks what follows.

The key directory is a real tmpfs of a few pages (tests/fsutil.py), filled to leave one page or
none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.name
import pytest

from krs_plugin.adapters.base import KeyPlan, PlannedKey, Verification, ZoneChange
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.config import Config
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key, write_bind_key_pair
from krs_plugin.dnssec.bindfiles import bind_private_text, bind_public_text
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import encode_payload, roll_key_entry
from krs_plugin.protocol import CHUNK
from krs_plugin.receiver.pipeline import Pipeline
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.unpack import NodeIdentity
from tests.fsutil import FullDisk, full_disk
from tests.nodefolder import write_node_folder

NODE = dns.name.from_text("ns1.edge.example.")
ZONE = dns.name.from_text("example.com.")
TIMING = KeyTiming(publish=1_700_000_000, activate=1_700_000_000)


@dataclass
class Node:
    config: Config
    keys: Path
    disk: FullDisk
    node: HpkeKey
    kdc: JoseKey
    old: DnssecKey

    def distribution(self, *keys: DnssecKey, retire: int | None = None) -> tuple[str, list[CHUNK]]:
        dist_id = f"{int(time.time() * 1000):x}"
        entries = [
            roll_key_entry(
                k,
                "ZSK",
                distribution_id=dist_id,
                old_key_tag=retire,
                retire_old_key=retire is not None,
                timing=TIMING,
            )
            for k in keys
        ]
        records = build_distribution(
            encode_payload(entries),
            NodeRecipient(NODE, "hpke", self.node.public_only()),
            self.kdc,
            dist_id,
            now=time.time(),
        )
        return dist_id, records

    def pipeline(self, adapter: DirectoryAdapter | None = None) -> Pipeline:
        adapter = adapter or DirectoryAdapter({"path": "keys"}, config_path=self.config.path)
        store = ReceiverStore(self.config.state)
        identity = NodeIdentity(NODE, hpke=self.node)
        return Pipeline(self.config, adapter, store, identity, self.kdc.public_only())

    def files(self) -> dict[str, bytes]:
        """The key directory, every name (the temporary ``.K…`` files too), filler aside."""
        return {p.name: p.read_bytes() for p in self.keys.iterdir() if p != self.disk.filler}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with make_node(tmp_path) as made:
        yield made


@contextmanager
def make_node(tmp_path: Path) -> Iterator[Node]:
    """A node (directory adapter, one zone with one key) whose key directory is a small tmpfs."""
    with full_disk(tmp_path / "keys", size=64 * 1024) as disk:
        folder = write_node_folder(tmp_path, [ZONE.to_text()], node_id=NODE.to_text())
        old = generate_key(ZONE, 13, 256)
        write_bind_key_pair(tmp_path / "keys", old, TIMING)
        yield Node(folder.config(), folder.keys, disk, folder.node_key, folder.kdc_key, old)


def queued_outcomes(pipeline: Pipeline) -> list[object]:
    """What the reports waiting for the KDC say: ``failed`` for a failure report (docs/protocol.md
    section 6), ``applied`` for a confirmation."""
    due = pipeline.store.due_confirmations(time.time() + 1)
    return [report.get("outcome", "applied") for _, report, _ in due]


def test_one_free_page_fails_at_apply_leaves_no_half_pair_and_applies_once_freed(
    node: Node,
) -> None:
    """With one page, the new key's .private fits and its .key does not: the distribution is
    ``failed`` at ``apply`` (retried), the zone is put back without the orphan .private, and it
    applies once space is freed."""
    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    before = node.files()
    node.disk.fill(free_pages=1)
    pipeline = node.pipeline()
    outcome = pipeline.process(dist_id, records[0], records[1:])
    assert (outcome.outcome, outcome.stage) == ("failed", "apply"), outcome.error
    assert "disk full" in (outcome.error or "")
    assert "rolled back: key directory restored" in (outcome.error or "")
    assert node.files() == before
    record = pipeline.store.seen(dist_id)
    assert record is not None and (record.outcome, record.stage) == ("failed", "apply")
    assert queued_outcomes(pipeline) == ["failed"]  # a failure report, no success (issue 21)

    node.disk.free()
    again = pipeline.process(dist_id, records[0], records[1:])
    assert again.outcome == "applied", again.error
    assert {k.key_tag for k in pipeline.adapter.current_keys(ZONE)} == {
        node.old.key_tag,
        new.key_tag,
    }


def test_no_free_page_fails_at_apply_and_the_rollback_needs_no_space(node: Node) -> None:
    """With no page at all the first file cannot be written, and the rollback, which has
    nothing to put back, does not fail for want of space to rewrite what did not change."""
    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    before = node.files()
    node.disk.fill(free_pages=0)
    outcome = node.pipeline().process(dist_id, records[0], records[1:])
    assert (outcome.outcome, outcome.stage) == ("failed", "apply"), outcome.error
    assert "disk full" in (outcome.error or "")
    assert "rollback failed" not in (outcome.error or "")
    assert node.files() == before


class FillsDiskAtVerify(DirectoryAdapter):
    """Another writer takes the last page while the apply runs: verify fails, and the rollback
    has to rewrite a retired key's files on a full disk."""

    disk: FullDisk

    def verify(self, change: ZoneChange) -> Verification:
        self.disk.fill(free_pages=0)
        return Verification(False, ("the server does not serve it yet",))


def test_a_full_disk_during_the_rollback_is_failed_at_apply_and_retried(node: Node) -> None:
    new = generate_key(ZONE, 13, 256)
    write_bind_key_pair(node.keys, new, TIMING)  # installed earlier; only the retire is new
    dist_id, records = node.distribution(new, retire=node.old.key_tag)
    node.disk.fill(free_pages=1)
    adapter = FillsDiskAtVerify({"path": "keys"}, config_path=node.config.path)
    adapter.disk = node.disk
    pipeline = node.pipeline(adapter)
    outcome = pipeline.process(dist_id, records[0], records[1:])
    assert (outcome.outcome, outcome.stage) == ("failed", "apply"), outcome.error
    assert "rollback failed" in (outcome.error or "") and "disk full" in (outcome.error or "")
    assert queued_outcomes(pipeline) == ["failed"]

    node.disk.free()
    retried = node.pipeline().process(dist_id, records[0], records[1:])
    assert retried.outcome == "applied", retried.error


def half_written(node: Node) -> tuple[DnssecKey, DnssecKey]:
    """What a full disk or a kill can leave: a .private without its .key, a .key without its
    .private, and a temporary file of a write that never finished."""
    orphan, public_only = generate_key(ZONE, 13, 256), generate_key(ZONE, 13, 256)
    (node.keys / f"{orphan.basename}.private").write_text(bind_private_text(orphan, TIMING))
    (node.keys / f"{public_only.basename}.key").write_text(bind_public_text(public_only, TIMING))
    (node.keys / f".{orphan.basename}.key.x1y2z3").write_text("")
    return orphan, public_only


def test_a_half_written_key_pair_is_not_installed_and_does_not_block_planning(
    node: Node,
) -> None:
    orphan, public_only = half_written(node)
    adapter = DirectoryAdapter({"path": "keys"}, config_path=node.config.path)
    assert [k.key_tag for k in adapter.current_keys(ZONE)] == [node.old.key_tag]

    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    outcome = node.pipeline(adapter).process(dist_id, records[0], records[1:])
    assert outcome.outcome == "applied", outcome.error
    # the apply removed what the KRS leaves half written; a .key alone may be the operator's
    names = set(node.files())
    assert f"{orphan.basename}.private" not in names
    assert not any(name.startswith(".") for name in names)
    assert f"{public_only.basename}.key" in names
    assert {k.key_tag for k in adapter.current_keys(ZONE)} == {node.old.key_tag, new.key_tag}


def test_the_same_key_half_written_is_completed_by_the_next_apply(node: Node) -> None:
    new = generate_key(ZONE, 13, 256)
    (node.keys / f"{new.basename}.private").write_text(bind_private_text(new, TIMING))
    dist_id, records = node.distribution(new)
    outcome = node.pipeline().process(dist_id, records[0], records[1:])
    assert outcome.outcome == "applied", outcome.error
    assert new.key_tag in {
        k.key_tag for k in DirectoryAdapter({"path": str(node.keys)}).current_keys(ZONE)
    }


def test_a_restore_removes_a_half_written_pair_even_from_its_snapshot(node: Node) -> None:
    """A snapshot taken while an orphan .private was there does not bring it back."""
    orphan, _ = half_written(node)
    adapter = DirectoryAdapter({"path": "keys"}, config_path=node.config.path)
    snapshot = adapter.snapshot(ZONE)
    new = generate_key(ZONE, 13, 256)
    adapter.apply(ZONE, KeyPlan(ZONE, (PlannedKey(new, "ZSK", TIMING),)))
    adapter.restore(ZONE, snapshot)
    assert f"{orphan.basename}.private" not in node.files()
    assert [k.key_tag for k in adapter.current_keys(ZONE)] == [node.old.key_tag]


def test_recovery_at_start_is_not_blocked_by_a_half_written_pair(node: Node) -> None:
    """`krs run` killed between a key's two files: at the next start the journal is rolled
    back and nothing refuses to start, and the distribution then applies."""
    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    pipeline = node.pipeline()
    adapter = pipeline.adapter
    pipeline.store.begin_apply(dist_id, {ZONE.to_text(): adapter.snapshot(ZONE)})
    (node.keys / f"{new.basename}.private").write_text(bind_private_text(new, TIMING))
    assert pipeline.recover() == [dist_id]
    assert set(node.files()) == {f"{node.old.basename}.key", f"{node.old.basename}.private"}
    outcome = pipeline.process(dist_id, records[0], records[1:])
    assert outcome.outcome == "applied", outcome.error
