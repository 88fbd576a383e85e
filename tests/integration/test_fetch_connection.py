"""A fetch asks for the manifest and every chunk over one TCP connection per server, and still
delivers from a server that closes each connection after one answer (docs/protocol.md, section 3,
"Transport"). Runs ``krs run``'s worker against in-process control-zone servers
(tests/integration/controlserver.py)."""

from __future__ import annotations

import time
from pathlib import Path

import dns.message
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


def test_an_answer_that_comes_after_the_timeout_is_never_read_as_the_next_querys(
    node: Node,
) -> None:
    # The first chunk's answer comes 3 s late on the connection the manifest came over; the fetch
    # times out after 1 s and asks again. Its connection must be closed at the timeout: kept,
    # the late answer would be read as the retry's, found not to answer it, and the
    # distribution refused as a bad answer.
    dist_id = new_id()
    table = published(node, dist_id)
    first_chunk = node.names(dist_id, 4)[1]
    late = [first_chunk]  # late once only
    with control_servers(table) as (server,):
        on_time = server.answer

        def answer(query: dns.message.Message, what: object) -> bytes | None:
            if query.question[0].name in late:
                late.clear()
                time.sleep(3)
            return on_time(query, what)

        server.answer = answer  # type: ignore[method-assign]
        settings = {"timeout": 1, "retries": 3, "backoff": 0.01}
        done = Worker(node.configure([server.address], fetch=settings), dist_id)
    assert done.recorded == ("applied", "done")
    # Asked again on a new connection (more often only if a retry timed out under load).
    assert server.questions.count(first_chunk) >= 2
    assert server.connections >= 2
