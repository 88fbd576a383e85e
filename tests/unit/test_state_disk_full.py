"""krs.db on a full disk (issue 20, finding 5), at the pipeline: a change that cannot be written
is one clear error (StateWriteError naming the database, "disk full"), nothing is recorded and
nothing is confirmed, and the distribution goes through once space is freed. krs.db is on a real
tmpfs (tests/fsutil.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krs_plugin.adapters.base import Verification, ZoneChange
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.config import load_config
from krs_plugin.dnssec import generate_key
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.sqlitedb import StateWriteError
from tests.fsutil import FullDisk, full_disk
from tests.unit.test_key_directory_full import ZONE, Node, make_node


@pytest.fixture
def full(tmp_path: Path) -> Iterator[tuple[Node, FullDisk]]:
    """The node of test_key_directory_full with its krs.db on a small disk of its own."""
    with make_node(tmp_path) as node, full_disk(tmp_path / "state", size=256 * 1024) as disk:
        raw = node.config.path.read_text().replace('"krs.db"', '"state/krs.db"')
        node.config.path.write_text(raw)
        node.config = load_config(node.config.path)
        node.disk.free()  # the key directory has room: only the state is short of it
        yield node, disk


def key_tags(node: Node) -> set[int]:
    adapter = DirectoryAdapter({"path": str(node.keys)})
    return {k.key_tag for k in adapter.current_keys(ZONE)}


def test_a_journal_that_cannot_be_written_stops_before_anything_is_installed(
    full: tuple[Node, FullDisk],
) -> None:
    node, disk = full
    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    pipeline = node.pipeline()
    disk.fill(free_pages=0)
    with pytest.raises(StateWriteError) as failed:
        pipeline.process(dist_id, records[0], records[1:])
    assert str(failed.value).startswith(f"state database {node.config.state}: disk full")
    assert str(failed.value).endswith("nothing was recorded")
    assert pipeline.store.write_error == str(failed.value)  # what /healthz shows
    assert key_tags(node) == {node.old.key_tag}
    assert pipeline.store.seen(dist_id) is None and pipeline.store.pending_confirmations() == 0

    disk.free()
    outcome = pipeline.process(dist_id, records[0], records[1:])
    assert outcome.outcome == "applied", outcome.error
    assert pipeline.store.write_error is None
    assert pipeline.store.pending_confirmations() == 1


class FillsStateAtVerify(DirectoryAdapter):
    """The disk fills up while the keys are being applied: the journal is written, the outcome
    cannot be."""

    disk: FullDisk

    def verify(self, change: ZoneChange) -> Verification:
        self.disk.fill(free_pages=0)
        return super().verify(change)


def test_keys_applied_but_not_recorded_are_not_confirmed_until_recorded(
    full: tuple[Node, FullDisk],
) -> None:
    node, disk = full
    new = generate_key(ZONE, 13, 256)
    dist_id, records = node.distribution(new)
    adapter = FillsStateAtVerify({"path": "keys"}, config_path=node.config.path)
    adapter.disk = disk
    pipeline = node.pipeline(adapter)
    with pytest.raises(StateWriteError, match="disk full"):
        pipeline.process(dist_id, records[0], records[1:])
    assert key_tags(node) == {node.old.key_tag, new.key_tag}  # the server has the new keys
    assert pipeline.store.seen(dist_id) is None
    assert pipeline.store.pending_confirmations() == 0  # never confirm what is not recorded
    assert [d for d, _ in pipeline.store.interrupted()] == [dist_id]

    # A restart while the disk is still full: the rollback is done, its record is not, and the
    # start stops with the same clear error instead of running without its state.
    restarted = node.pipeline()
    with pytest.raises(StateWriteError, match="disk full"):
        restarted.recover()
    assert key_tags(node) == {node.old.key_tag}

    disk.free()
    assert restarted.recover() == [dist_id]  # the same rollback, now recorded
    outcome = restarted.process(dist_id, records[0], records[1:])  # fetched again
    assert outcome.outcome == "applied", outcome.error
    assert key_tags(node) == {node.old.key_tag, new.key_tag}
    assert restarted.store.pending_confirmations() == 1 and restarted.store.interrupted() == []


def test_a_journal_row_left_by_a_full_disk_is_replaced_by_the_next_apply(
    full: tuple[Node, FullDisk],
) -> None:
    """Otherwise a restart would roll the zones back to before a later distribution."""
    node, _ = full
    store = ReceiverStore(node.config.state)
    store.begin_apply("6b000000", {ZONE.to_text(): "{}"})
    store.begin_apply("6b000001", {ZONE.to_text(): "{}"})
    assert [d for d, _ in store.interrupted()] == ["6b000001"]
    store.close()
