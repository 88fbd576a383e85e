"""Issue 20, finding 2: a malformed or inconsistent answer from a control-zone server is refused at
the stage that found it (``wire``, ``integrity``) and recorded ``rejected``, after the other
configured servers were tried; only servers that are down (unreachable, timing out, an error
rcode) are ``failed``/``fetch`` and tried again. Every message names the server (host:port).

Each case runs the worker of ``krs run`` (``Service.process``: fetcher, pipeline, state store,
metrics) against in-process control-zone servers on 127.0.0.x (tests/integration/controlserver.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dns.name
import dns.rcode
import pytest
from controlserver import (
    NODATA,
    NODATA_SOA,
    SILENT,
    Answer,
    Message,
    Node,
    Raw,
    Rcode,
    Worker,
    control_servers,
    dead_address,
    new_id,
)

from krs_plugin import cli
from krs_plugin.protocol import CHUNK, make_chunk

Table = dict[dns.name.Name, Answer]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


# --- bad answers: (what to do to the good table, stage, what the message says) -------------------


def manifest_rdata_garbage(names: list[dns.name.Name], table: Table) -> None:
    table[names[0]] = Raw(b"\x01\x00\x40abcdefgh")  # HMACLen 64, 8 bytes left


def chunk_rdata_garbage(names: list[dns.name.Name], table: Table) -> None:
    table[names[2]] = Raw(b"\x01\x00\x00\x00\x02\x00\x04\x00\x09abc")  # DataLength 9, 3 left


def chunk_total_disagrees(names: list[dns.name.Name], table: Table) -> None:
    chunk = chunk_at(table, names[2])
    table[names[2]] = chunk.replace(total=chunk.total + 3)


def chunk_sequence_disagrees(names: list[dns.name.Name], table: Table) -> None:
    table[names[2]] = chunk_at(table, names[3])


def chunk_over_its_size(names: list[dns.name.Name], table: Table) -> None:
    chunk = chunk_at(table, names[1])
    table[names[1]] = chunk.replace(data=chunk.data + b"A" * 100)


def manifest_of_65535_chunks(names: list[dns.name.Name], table: Table) -> None:
    manifest = chunk_at(table, names[0])
    document = json.loads(manifest.data)
    document["chunk_count"] = 65535
    data = json.dumps(document, separators=(",", ":")).encode()
    table[names[0]] = make_chunk(0, 65535, data, hmac=manifest.hmac)


def manifest_total_disagrees(names: list[dns.name.Name], table: Table) -> None:
    manifest = chunk_at(table, names[0])
    table[names[0]] = manifest.replace(total=manifest.total + 1)


def manifest_not_json(names: list[dns.name.Name], table: Table) -> None:
    manifest = chunk_at(table, names[0])
    table[names[0]] = manifest.replace(data=b"<html>503</html>")


def no_chunk_in_the_answer(names: list[dns.name.Name], table: Table) -> None:
    table[names[1]] = NODATA


def message_does_not_parse(names: list[dns.name.Name], table: Table) -> None:
    table[names[0]] = Message(b"\x00\x01 not a DNS message")


def chunk_at(table: Table, name: dns.name.Name) -> CHUNK:
    record = table[name]
    assert isinstance(record, CHUNK)
    return record


BAD_ANSWERS: dict[str, tuple[Callable[[list[dns.name.Name], Table], None], str, str]] = {
    "manifest RDATA that does not parse": (
        manifest_rdata_garbage,
        "wire",
        "manifest: {server} sent a bad answer: CHUNK HMACLen 64 exceeds the 2 bytes left",
    ),
    "chunk RDATA that does not parse": (
        chunk_rdata_garbage,
        "wire",
        "chunk 2 of 4: {server} sent a bad answer: CHUNK DataLength 9 does not match",
    ),
    "chunk Total disagrees with the manifest": (
        chunk_total_disagrees,
        "integrity",
        "chunk 2 of 4: {server} sent a bad answer: chunk 2 says total 7, manifest announces 4",
    ),
    "chunk Sequence disagrees with the name asked": (
        chunk_sequence_disagrees,
        "integrity",
        "chunk 2 of 4: {server} sent a bad answer: asked for chunk 2, got 3",
    ),
    "chunk larger than the manifest's chunk_size": (
        chunk_over_its_size,
        "wire",
        "chunk 1 of 4: {server} sent a bad answer: chunk 1 of 4 is 500 bytes, larger than "
        "chunk_size 400",
    ),
    "manifest announcing 65535 chunks": (
        manifest_of_65535_chunks,
        "wire",
        "manifest: {server} sent a bad answer: manifest announces 65535 chunks, more than the "
        "limit of 4096",
    ),
    "manifest Total disagrees with its chunk_count": (
        manifest_total_disagrees,
        "integrity",
        "manifest: {server} sent a bad answer: chunk_count 4 differs from the record's total 5",
    ),
    "manifest that is not JSON": (
        manifest_not_json,
        "wire",
        "manifest: {server} sent a bad answer: manifest is not valid JSON",
    ),
    "no CHUNK record in the answer": (
        no_chunk_in_the_answer,
        "wire",
        "chunk 1 of 4: {server} sent a bad answer: no single CHUNK record for",
    ),
    "a message that does not parse": (
        message_does_not_parse,
        "wire",
        "manifest: {server} sent a bad answer: the message does not parse",
    ),
}


def published(node: Node, dist_id: str) -> tuple[list[dns.name.Name], Table]:
    """The distribution's names and a good server's table: a manifest and 4 chunks."""
    records = node.distribution(dist_id)
    assert len(records) == 5  # the cases above name chunks 1..4
    return node.names(dist_id, 4), node.table(dist_id, records)


def bad_table(node: Node, dist_id: str, case: str, good: Table | None = None) -> Table:
    """What a server that answers badly in the way of ``case`` serves (``good`` altered)."""
    names = node.names(dist_id, 4)
    table = dict(good) if good is not None else published(node, dist_id)[1]
    BAD_ANSWERS[case][0](names, table)
    return table


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_a_bad_answer_is_refused_at_its_stage_naming_the_server(node: Node, case: str) -> None:
    _, stage, message = BAD_ANSWERS[case]
    dist_id = new_id()
    before = node.key_directory()
    with control_servers(bad_table(node, dist_id, case)) as (server,):
        done = Worker(node.configure([server.address]), dist_id)
    assert done.recorded == ("rejected", stage), done.error
    assert message.format(server=server.address) in done.error
    assert "no control-zone server answered" not in done.error
    assert not done.queued_again  # refused: the poller does not fetch it again
    assert node.key_directory() == before
    assert done.metric(f'krs_distributions_total{{outcome="rejected",stage="{stage}"}}') == 1
    assert done.metric('krs_fetches_total{result="rejected"}') == 1
    assert done.metric('krs_fetches_total{result="failed"}') == 0


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_a_good_server_after_a_bad_one_delivers_the_distribution(node: Node, case: str) -> None:
    dist_id = new_id()
    _, good = published(node, dist_id)
    with control_servers(bad_table(node, dist_id, case, good), good) as (first, second):
        done = Worker(node.configure([first.address, second.address]), dist_id)
    assert done.recorded == ("applied", "done")
    assert first.questions and second.questions  # the bad server was asked first


def test_when_every_server_answers_badly_the_first_refusal_names_each_server(
    node: Node,
) -> None:
    dist_id = new_id()
    _, good = published(node, dist_id)
    tables = [bad_table(node, dist_id, case, good) for case in BAD_ANSWERS]
    with control_servers(tables[2], tables[1]) as (total, garbage):
        done = Worker(node.configure([total.address, garbage.address]), dist_id)
    assert done.recorded == ("rejected", "integrity")
    assert done.error.startswith(
        f"distribution {dist_id} for ns1.edge.example.: chunk 2 of 4: {total.address} sent a "
        "bad answer: chunk 2 says total 7, manifest announces 4 "
        f"(and {garbage.address}: CHUNK DataLength 9 does not match"
    ), done.error


def test_a_bad_answer_and_an_unreachable_server_is_a_refusal_naming_both(node: Node) -> None:
    dist_id = new_id()
    dead = dead_address()
    with control_servers(bad_table(node, dist_id, "manifest announcing 65535 chunks")) as (bad,):
        done = Worker(node.configure([dead, bad.address]), dist_id)
    assert done.recorded == ("rejected", "wire")
    assert f"{bad.address} sent a bad answer: manifest announces 65535 chunks" in done.error
    assert f"unreachable: {dead}: " in done.error


def test_servers_down_or_silent_are_a_failure_tried_again(node: Node) -> None:
    dist_id = new_id()
    names, _ = published(node, dist_id)
    dead = dead_address()
    with control_servers({names[0]: SILENT}) as (silent,):
        done = Worker(node.configure([dead, silent.address]), dist_id)
    assert done.recorded == ("failed", "fetch")
    assert "no control-zone server answered after 2 attempts each" in done.error
    assert dead in done.error and silent.address in done.error
    assert done.queued_again  # the poller fetches it again
    assert done.metric('krs_distributions_total{outcome="failed",stage="fetch"}') == 1
    assert done.metric('krs_fetches_total{result="failed"}') == 1


def test_an_error_rcode_is_a_server_down_and_the_next_one_is_asked(node: Node) -> None:
    dist_id = new_id()
    names, good = published(node, dist_id)
    with control_servers({names[0]: Rcode(dns.rcode.SERVFAIL)}, good) as (failing, working):
        done = Worker(node.configure([failing.address, working.address]), dist_id)
        assert done.recorded == ("applied", "done")
        second = new_id(1)
        failing.table[node.names(second, 0)[0]] = Rcode(dns.rcode.SERVFAIL)
        alone = Worker(node.configure([failing.address]), second)
    assert alone.recorded == ("failed", "fetch")
    assert f"{failing.address}: answered SERVFAIL" in alone.error


def test_not_published_on_one_server_and_a_bad_answer_on_another_is_not_published(
    node: Node,
) -> None:
    dist_id = new_id()
    with control_servers({}, bad_table(node, dist_id, "manifest that is not JSON")) as servers:
        done = Worker(node.configure([s.address for s in servers]), dist_id)
    assert done.row is None  # as for any id nothing is published under: not recorded
    assert done.metric('krs_fetches_total{result="not_published"}') == 1


def test_an_authoritative_nodata_is_not_published_yet(node: Node) -> None:
    """The manifest's name an empty non-terminal (a primary given the chunks by UPDATE and not
    the manifest yet, docs/scale.md): not published, not a bad answer; the next server that has
    it delivers it. Without the SOA an empty answer stays a bad answer (BAD_ANSWERS)."""
    dist_id = new_id()
    names, good = published(node, dist_id)
    with control_servers({**good, names[0]: NODATA_SOA}, good) as (behind, ready):
        done = Worker(node.configure([behind.address, ready.address]), dist_id)
        assert done.recorded == ("applied", "done")
        assert behind.questions
        second = new_id(1)
        names, good = published(node, second)
        behind.table.update({**good, names[0]: NODATA_SOA})
        alone = Worker(node.configure([behind.address]), second)
    assert alone.row is None  # not published (yet): not recorded, looked for again
    assert alone.metric('krs_fetches_total{result="not_published"}') == 1


def test_krs_fetch_records_a_bad_answer_as_the_worker_does(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    dist_id = new_id()
    case = "chunk Total disagrees with the manifest"
    with control_servers(bad_table(node, dist_id, case)) as (server,):
        node.configure([server.address])
        code = cli.main(["fetch", dist_id, "-c", str(node.config_path)])
    assert code == 1
    out = capsys.readouterr().out
    assert f"distribution {dist_id}: rejected (integrity)" in out
    assert f"{server.address} sent a bad answer: chunk 2 says total 7" in out
    assert cli.main(["status", "-c", str(node.config_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["id"], row["outcome"], row["stage"]) == (dist_id, "rejected", "integrity")


def test_a_server_is_asked_each_record_once_when_its_answer_is_bad(node: Node) -> None:
    # A bad answer is not a network error: the same server is not asked again for it.
    dist_id = new_id()
    with control_servers(bad_table(node, dist_id, "chunk RDATA that does not parse")) as (bad,):
        Worker(node.configure([bad.address]), dist_id)
    assert len(bad.questions) == 3  # the manifest, chunk 1, chunk 2 (once)
