"""Every row of docs/operations.md's error table ("Errors and what to do"), produced: the stage
and the outcome recorded in the state database (what ``krs status`` shows) are the row's, and the
message recorded is the row's example (``...`` any text, a number any number, ``X`` any name).

The table is read from the docs: a row without a case here, or a case for a row that is gone,
fails. Fetch-time rows go through ``krs run``'s worker against in-process control-zone servers on
127.0.0.x (tests/integration/controlserver.py), the others through the pipeline that ``krs fetch``
and ``krs run`` share, with the directory adapter. Each case checks that nothing was installed
when the distribution was refused or failed.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from controlserver import (
    Node,
    Raw,
    Worker,
    control_servers,
    dead_address,
    new_id,
)

from krs_plugin import cli
from krs_plugin.adapters.base import Problem
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, seal_envelope
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.payload import RollKey, encode_payload
from krs_plugin.protocol import CHUNK, make_chunk
from krs_plugin.receiver.pipeline import Outcome
from tests.doctable import Row, error_table, example_pattern


@dataclass(frozen=True)
class Recorded:
    outcome: str
    stage: str | None
    error: str


def recorded(node: Node, dist_id: str) -> Recorded:
    row = node.recorded(dist_id)
    assert row is not None, f"{dist_id}: nothing recorded"
    return Recorded(row.outcome, row.stage, row.error or "")


def outcome_of(stage: str) -> str:
    """The rule of the docs, above the table: failed at fetch and apply, rejected otherwise."""
    return "failed" if stage in ("fetch", "apply") else "rejected"


def worker(node: Node, dist_id: str, table: dict[Any, Any]) -> Recorded:
    with control_servers(table) as (server,):
        done = Worker(node.configure([server.address]), dist_id)
    stage = done.row.stage if done.row else None
    metric = f'krs_distributions_total{{outcome="{outcome_of(stage or "")}",stage="{stage}"}}'
    assert done.metric(metric) == 1
    return recorded(node, dist_id)


def published(node: Node, dist_id: str) -> tuple[list[Any], dict[Any, Any], list[CHUNK]]:
    records = node.distribution(dist_id)
    return node.names(dist_id, len(records) - 1), node.table(dist_id, records), records


# --- fetch ------------------------------------------------------------------------------------


def servers_down(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    done = Worker(node.configure([dead_address(), dead_address()]), dist_id)
    assert done.queued_again  # failed: the poller fetches it again
    return [recorded(node, dist_id)]


def not_published(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    with control_servers({}) as (server,):
        config = node.configure([server.address])
        assert Worker(config, dist_id).row is None  # krs run: logged and counted, no row
        assert cli.main(["fetch", dist_id, "-c", str(node.config_path)]) == 1
    return [recorded(node, dist_id)]


def chunk_rdata_garbage(node: Node, tmp_path: Path, mp: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    names, table, _ = published(node, dist_id)
    table[names[2]] = Raw(b"\x01\x00\x00\x00\x02\x00\x04\x00\x09abc")
    return [worker(node, dist_id, table)]


def chunk_total_disagrees(node: Node, tmp_path: Path, mp: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    names, table, records = published(node, dist_id)
    table[names[2]] = records[2].replace(total=7)
    return [worker(node, dist_id, table)]


def hmac_mismatch(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    names, table, records = published(node, dist_id)
    table[names[0]] = records[0].replace(hmac=bytes(32))
    return [worker(node, dist_id, table)]


def chunks_missing(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    records = node.distribution(dist_id)
    assert len(records) == 5
    node.process(dist_id, records[:2])  # the manifest and chunk 1 of 4
    return [recorded(node, dist_id)]


def too_many_chunks(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    names, table, records = published(node, dist_id)
    document = json.loads(records[0].data)
    document["chunk_count"] = 9000
    data = json.dumps(document, separators=(",", ":")).encode()
    table[names[0]] = make_chunk(0, 9000, data, hmac=records[0].hmac)
    return [worker(node, dist_id, table)]


# --- policy -----------------------------------------------------------------------------------


def stale_or_future(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    stale, future = new_id(), new_id(1)
    now = time.time()
    node.process(stale, node.distribution(stale, now=now), now=now + 400)
    node.process(future, node.distribution(future, now=now), now=now - 100)
    return [recorded(node, stale), recorded(node, future)]


def replay_or_older(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    older, newer = new_id(-10), new_id()
    older_records, newer_records = node.distribution(older), node.distribution(newer)
    assert node.process(newer, newer_records).outcome == "applied"
    before = node.key_directory()
    replayed = node.process(newer, newer_records)
    node.process(older, older_records)
    assert node.key_directory() == before
    # A replay keeps the row of the distribution it replays: applied. What it was refused as
    # shows in the outcome (the log line and the metrics of krs run).
    assert recorded(node, newer).outcome == "applied"
    return [of(replayed), recorded(node, older)]


def of(outcome: Outcome) -> Recorded:
    return Recorded(outcome.outcome, outcome.stage, outcome.error or "")


def zone_not_served(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    node.process(dist_id, node.distribution(dist_id, entries=node.entries(dist_id, "other.")))
    return [recorded(node, dist_id)]


def other_node(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    node.process(dist_id, node.distribution(dist_id, node_id="ns2.edge.example."))
    return [recorded(node, dist_id)]


# --- signature, decryption, payload -----------------------------------------------------------


def unsigned(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    transport = seal_envelope(
        encode_payload(node.entries(dist_id)),
        backend="hpke",
        recipient=node.key.public_only(),
        signer=None,
    )
    node.process(dist_id, node.wrap(dist_id, transport))
    return [recorded(node, dist_id)]


def other_signer(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    node.process(dist_id, node.distribution(dist_id, signer=JoseKey.generate()))
    return [recorded(node, dist_id)]


def sealed_to_another_key(node: Node, tmp_path: Path, mp: pytest.MonkeyPatch) -> list[Recorded]:
    results = []
    for backend in ("hpke", "jose"):
        other = Node(tmp_path / backend, backend)
        before = other.key_directory()
        stranger = HpkeKey.generate() if backend == "hpke" else JoseKey.generate()
        dist_id = new_id()
        transport = seal_envelope(
            encode_payload(other.entries(dist_id)),
            backend=backend,
            recipient=stranger.public_only(),
            signer=other.kdc,
        )
        # The manifest HMAC is keyed with the node's public key, which anyone may know.
        other.process(dist_id, other.wrap(dist_id, transport))
        results.append(recorded(other, dist_id))
        assert other.key_directory() == before
    return results


def key_id_mismatch(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    first, second = node.entries(dist_id) + node.entries(dist_id)
    assert isinstance(second, RollKey)
    wrong = dataclasses.replace(second, key_tag=(second.key_tag + 1) % 65536)
    node.process(dist_id, node.distribution(dist_id, entries=[first, wrong]))
    return [recorded(node, dist_id)]


# --- apply ------------------------------------------------------------------------------------


def write_key_fails(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    adapter = DirectoryAdapter({"path": "keys"}, config_path=node.config_path)

    def fail(change: object, planned: object) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(adapter, "write_key", fail)
    node.process(dist_id, node.distribution(dist_id), adapter=adapter)
    return [recorded(node, dist_id)]


def adapter_refuses(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    adapter = DirectoryAdapter({"path": "keys"}, config_path=node.config_path)
    refusal = Problem("named does not answer on its control channel", "start named")
    monkeypatch.setattr(adapter, "check", lambda: [refusal])
    node.process(dist_id, node.distribution(dist_id), adapter=adapter)
    return [recorded(node, dist_id)]


def interrupted(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    pipeline = node.pipeline()
    try:
        zone = next(iter(node.config.zones))
        pipeline.store.begin_apply(dist_id, {zone.to_text(): pipeline.adapter.snapshot(zone)})
        pipeline.store.record_outcome(dist_id, pipeline.kdc, int(dist_id, 16), "failed")
        assert pipeline.recover() == [dist_id]  # what krs run does first, after a kill
    finally:
        pipeline.store.close()
    return [recorded(node, dist_id)]


def disk_full(node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    dist_id = new_id()
    replace = os.replace
    failed: list[str] = []

    def full(source: str, target: str | Path) -> None:
        if str(target).endswith(".key") and not failed:
            failed.append(str(target))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    monkeypatch.setattr(os, "replace", full)  # what krs_plugin/files.py renames with
    node.process(dist_id, node.distribution(dist_id))
    assert failed
    return [recorded(node, dist_id)]


def sealed_for_another_backend(
    node: Node, tmp_path: Path, mp: pytest.MonkeyPatch
) -> list[Recorded]:
    """The KDC lists the (hpke) node as hpke-pq: refused before anything is opened."""
    dist_id = new_id()
    recipient = NodeRecipient(node.node_id, "hpke-pq", HybridKey.generate().public_only())
    records = build_distribution(
        encode_payload(node.entries(dist_id)), recipient, node.kdc, dist_id, now=time.time(),
        chunk_size=400, inline_max=0,
    )  # fmt: skip
    node.process(dist_id, records)
    return [recorded(node, dist_id)]


Produce = Callable[[Node, Path, pytest.MonkeyPatch], list[Recorded]]

CASES: dict[str, tuple[Produce, str | None]] = {
    "fetch: no control-zone server answered after 3 attempts each": (servers_down, None),
    "fetch: not published (... does not exist)": (not_published, None),
    "wire: chunk 2 of 4: 192.0.2.1:5354 sent a bad answer: CHUNK DataLength 9 does not match the "
    "3 bytes left in RDATA": (chunk_rdata_garbage, None),
    "integrity: chunk 2 of 4: 192.0.2.1:5354 sent a bad answer: chunk 2 says total 7, manifest "
    "announces 4": (chunk_total_disagrees, None),
    "integrity: manifest HMAC mismatch": (hmac_mismatch, None),
    "integrity: 3 of 5 chunks missing (2, 4, 5)": (chunks_missing, None),
    "wire: manifest announces 9000 chunks, more than the limit of 4096": (too_many_chunks, None),
    "policy: stale manifest, prepared 400s ago": (stale_or_future, None),
    "policy: was already applied (replay)": (replay_or_older, None),
    "policy: zone(s) not served by this node": (zone_not_served, None),
    "policy: addressed to node X, not to this node": (other_node, None),
    "signature: not signed by the KDC ... signatures are required": (unsigned, None),
    "signature: KDC signature does not verify with any KDC key this node trusts (...): the "
    "KDC's signing key has changed ...": (other_signer, None),
    "decryption: HPKE open failed with X25519 key ...": (sealed_to_another_key, None),
    "decryption: sealed with 'hpke-pq' but this node has no such key (its keys: hpke)": (
        sealed_for_another_backend,
        None,
    ),
    "payload: entry 2 (roll_key): field 'key_id' is 4664, but the DNSKEY in 'public_key' for "
    "example.com. has key tag 4665": (key_id_mismatch, None),
    "apply: directory, zone example.com.: step 'write key 12345' failed: ...; rolled back: key "
    "directory restored": (write_key_fails, None),
    # The example is bind9's; any adapter that refuses a plan says it the same way.
    "apply: bind9, zone example.com.: ...; nothing was changed": (
        adapter_refuses,
        r"\w+, zone example\.com\.: .+; nothing was changed",
    ),
    "apply: interrupted while applying; rolled back to the previous keys": (interrupted, None),
    "apply: ... .key: cannot write file: disk full (No space left on device); rolled back: key "
    "directory restored": (disk_full, None),
}


@pytest.mark.parametrize("row", error_table(), ids=lambda row: row.key[:60])
def test_each_row_is_produced_and_recorded_with_its_stage_and_outcome(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert row.key in CASES, f"no case produces this row of docs/operations.md: {row.key}"
    produce, pattern = CASES[row.key]
    node = Node(tmp_path / "node")
    before = node.key_directory()
    results = produce(node, tmp_path, monkeypatch)
    assert len(results) == len(row.examples)
    for example, got in zip(row.examples, results, strict=True):
        assert (got.outcome, got.stage) == (outcome_of(row.stage), row.stage), got.error
        wanted = re.compile(pattern) if pattern else example_pattern(example)
        assert wanted.search(got.error), f"{example!r} is not in {got.error!r}"
    if row.key != "policy: was already applied (replay)":  # that one applies a distribution first
        assert node.key_directory() == before


def test_every_case_is_a_row_of_the_table() -> None:
    assert set(CASES) - {row.key for row in error_table()} == set()
