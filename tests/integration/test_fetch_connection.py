"""A fetch asks for the manifest and every chunk over one TCP connection per server, and still
delivers from a server that closes each connection after one answer (docs/protocol.md, section 3,
"Transport"). Runs ``krs run``'s worker against in-process control-zone servers
(tests/integration/controlserver.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from controlserver import Node, Worker, control_servers, new_id


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


def published(node: Node, dist_id: str) -> dict:  # type: ignore[type-arg]
    records = node.distribution(dist_id)
    assert len(records) == 5  # a manifest and 4 chunks
    return node.table(dist_id, records)


def test_the_manifest_and_every_chunk_come_over_one_connection(node: Node) -> None:
    dist_id = new_id()
    with control_servers(published(node, dist_id)) as (server,):
        done = Worker(node.configure([server.address]), dist_id)
    assert done.recorded == ("applied", "done")
    assert len(server.questions) == 5
    assert server.connections == 1


def test_a_server_closing_each_connection_after_one_answer_still_delivers(node: Node) -> None:
    # A closed connection is replaced at once, without counting as the server being down.
    dist_id = new_id()
    with control_servers(published(node, dist_id)) as (server,):
        server.answers_per_connection = 1
        done = Worker(node.configure([server.address]), dist_id)
    assert done.recorded == ("applied", "done")
    assert len(server.questions) == 5  # each record asked once
    assert server.connections == 5
    assert done.metric('krs_fetches_total{result="failed"}') == 0
