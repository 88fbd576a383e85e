"""A distribution is all or nothing: a crash mid-apply or a failing second zone leaves the old
key set, never a mix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dns.name
import pytest

from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.dnssec import generate_key, read_bind_key_pair, write_bind_key_pair
from krs_plugin.errors import AdapterError
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import encode_payload, roll_key_entry
from krs_plugin.receiver.pipeline import Pipeline
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.unpack import NodeIdentity
from tests.nodefolder import write_node_folder

NODE = dns.name.from_text("ns1.edge.example.")
ZONES = ("a.example.", "b.example.")


class Killed(BaseException):
    """Stands for SIGKILL: not an error the pipeline may catch."""


class CrashingAdapter(DirectoryAdapter):
    def __init__(self, *args: Any, crash_on: str, how: type[BaseException], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.crash_on, self.how = crash_on, how

    def write_key(self, change: Any, planned: Any) -> bool:
        if change.zone.to_text() == self.crash_on:
            # half of the work done, then the process dies (or the step fails); a hook of the
            # one apply algorithm, so that a batch of zones and one zone at a time both meet it
            write_bind_key_pair(self.path, planned.key, planned.timing)
            raise self.how("boom")
        return bool(super().write_key(change, planned))


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    folder = write_node_folder(tmp_path, ZONES, node_id=NODE.to_text())
    config, node, kdc = folder.config(), folder.node_key, folder.kdc_key
    old = {z: generate_key(z, 13, 256) for z in ZONES}
    for key in old.values():
        write_bind_key_pair(tmp_path / "keys", key)
    new = [generate_key(z, 15, 256) for z in ZONES]
    dist_id = f"{int(time.time()):x}"
    cleartext = encode_payload([roll_key_entry(k, "ZSK", distribution_id=dist_id) for k in new])
    records = build_distribution(
        cleartext, NodeRecipient(NODE, "hpke", node.public_only()), kdc, dist_id, now=time.time()
    )
    return config, node, kdc, dist_id, records


def key_files(config) -> set[tuple[str, int]]:  # type: ignore[no-untyped-def]
    folder = config.path.parent / "keys"
    return {
        (k.zone.to_text(), k.key_tag)
        for k in (read_bind_key_pair(p)[0] for p in folder.glob("*.private"))
    }


def pipeline(config, node, kdc, adapter) -> Pipeline:  # type: ignore[no-untyped-def]
    store = ReceiverStore(config.state)
    return Pipeline(config, adapter, store, NodeIdentity(NODE, hpke=node), kdc.public_only())


def test_failing_second_zone_rolls_back_the_first(setup) -> None:  # type: ignore[no-untyped-def]
    config, node, kdc, dist_id, records = setup
    before = key_files(config)
    adapter = CrashingAdapter(
        {"path": "keys"}, config_path=config.path, crash_on="b.example.", how=AdapterError
    )
    outcome = pipeline(config, node, kdc, adapter).process(dist_id, records[0], tuple(records[1:]))
    assert outcome.outcome == "failed" and outcome.stage == "apply"
    assert key_files(config) == before


def test_restart_after_a_kill_mid_apply_restores_the_old_keys(setup) -> None:  # type: ignore[no-untyped-def]
    config, node, kdc, dist_id, records = setup
    before = key_files(config)
    adapter = CrashingAdapter(
        {"path": "keys"}, config_path=config.path, crash_on="b.example.", how=Killed
    )
    with pytest.raises(Killed):
        pipeline(config, node, kdc, adapter).process(dist_id, records[0], tuple(records[1:]))
    assert key_files(config) != before  # the kill left a mix on disk

    restarted = pipeline(
        config, node, kdc, DirectoryAdapter({"path": "keys"}, config_path=config.path)
    )
    assert restarted.recover() == [dist_id]
    assert key_files(config) == before
    assert restarted.store.seen(dist_id).outcome == "failed"  # type: ignore[union-attr]

    # Fetched again (the service re-queues it), it now completes: the new set, entirely.
    outcome = restarted.process(dist_id, records[0], tuple(records[1:]))
    assert outcome.outcome == "applied"
    assert {z for z, _ in key_files(config)} == set(ZONES)
    assert len(key_files(config)) == 4  # old keys stay until the KDC removes them


def test_a_second_process_waits_for_the_apply_in_progress(setup) -> None:  # type: ignore[no-untyped-def]
    # krs fetch typed beside krs run: one apply at a time, or the second's journal row would
    # stand for the first's and a crash would roll back to the wrong keys.
    import fcntl
    import os
    import subprocess
    import sys
    import threading

    config, node, kdc, dist_id, records = setup
    lock = f"{config.state}.lock"
    hold = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(  # another process in the middle of an apply
        [sys.executable, "-c", hold, lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    outcomes = []

    def apply() -> None:  # krs fetch: its own process, here its own thread and connection
        adapter = DirectoryAdapter({"path": "keys"}, config_path=config.path)
        own = pipeline(config, node, kdc, adapter)
        outcomes.append(own.process(dist_id, records[0], tuple(records[1:])))

    worker = threading.Thread(target=apply)
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and outcomes == []  # waiting for the lock
    assert ReceiverStore(config.state).seen(dist_id) is None
    holder.communicate("")  # the other apply ends
    worker.join(10)
    assert [o.outcome for o in outcomes] == ["applied"]
    assert oct(os.stat(lock).st_mode & 0o777) == "0o600"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the apply
    finally:
        os.close(fd)
