"""Many DNS questions to one server over one TCP connection, pipelined (RFC 7766 6.2.1.1).

Verifying a distribution for 10,000 zones asks two to four questions a zone. Asked one TCP
connection each (``dns.query.tcp``), that is 20,000 to 40,000 connections and as many round
trips; here they go ``WINDOW`` at a time down one connection and the answers are matched by
message id, in whatever order the server sends them (BIND answers pipelined queries out of
order), over ``CONNECTIONS`` connections side by side for a large batch. A connection the server
closes midway (a limit on queries per connection) is opened
again for the questions still unanswered; a question still unanswered after ``ATTEMPTS``
connections is reported as such, never guessed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import dns.exception
import dns.message
import dns.name
import dns.rdatatype

WINDOW = 200
"""Questions in flight at once: enough to keep the server busy, few enough that neither side's
socket buffers fill while the other is not reading (200 answers of a signed DNSKEY RRset are
about 100 KB)."""
ATTEMPTS = 3
CONNECTIONS = 2
"""Connections used side by side for a large batch: servers answer each TCP connection in
order, one thread each (PowerDNS signs every answer as it goes), so a second one lets a
two-core server use both cores."""

Question = tuple[dns.name.Name, dns.rdatatype.RdataType]
T = TypeVar("T")


class NoAnswer(ConnectionError):
    """The server did not answer this question (connection refused, closed, timed out)."""


def query_many(
    questions: Sequence[Question], host: str, port: int, timeout: float = 3.0
) -> list[dns.message.Message | NoAnswer]:
    """The server's reply to each question (DO set, RD clear: authoritative questions), in the
    order asked, read as far as its answer section (``answer_part``); a NoAnswer in the place
    of each one it did not answer."""
    return query_many_reduced(questions, host, port, _whole, timeout)


def _whole(reply: dns.message.Message, question: Question) -> dns.message.Message:
    return reply


def query_many_reduced(
    questions: Sequence[Question],
    host: str,
    port: int,
    reduce: Callable[[dns.message.Message, Question], T],
    timeout: float = 3.0,
) -> list[T | NoAnswer]:
    """``query_many``, each reply handed to ``reduce`` as it arrives and only what that returns
    kept: a dnspython message of a signed answer is a few kilobytes, and a batch asks thousands
    of questions (``reduce`` runs in the connection's thread)."""
    replies: list[T | NoAnswer | None] = [None] * len(questions)
    failures = ["not asked"]
    for _ in range(ATTEMPTS):
        pending = [i for i, reply in enumerate(replies) if reply is None]
        if not pending:
            break
        count = CONNECTIONS if len(pending) >= CONNECTIONS * WINDOW else 1
        shares = [pending[n::count] for n in range(count)]
        threads = [
            threading.Thread(
                target=_ask_noting,
                args=(questions, share, replies, host, port, timeout, failures, reduce),
            )
            for share in shares[1:]
        ]
        for thread in threads:
            thread.start()
        _ask_noting(questions, shares[0], replies, host, port, timeout, failures, reduce)
        for thread in threads:
            thread.join()
    failure = failures[-1]
    return [
        reply if reply is not None else NoAnswer(f"no answer from {host} port {port}: {failure}")
        for reply in replies
    ]


def _ask_noting(
    questions: Sequence[Question],
    pending: list[int],
    replies: list[T | NoAnswer | None],
    host: str,
    port: int,
    timeout: float,
    failures: list[str],
    reduce: Callable[[dns.message.Message, Question], T],
) -> None:
    """``_ask``, a failure noted in ``failures`` (the questions it left unanswered are asked
    again on a new connection)."""
    try:
        _ask(questions, pending, replies, host, port, timeout, reduce)
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        failures.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _ask(
    questions: Sequence[Question],
    pending: list[int],
    replies: list[T | NoAnswer | None],
    host: str,
    port: int,
    timeout: float,
    reduce: Callable[[dns.message.Message, Question], T],
) -> None:
    """One connection: ``pending`` asked window by window; each answer stored as it comes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        for start in range(0, len(pending), WINDOW):
            window = pending[start : start + WINDOW]
            by_id: dict[int, int] = {}
            wire = bytearray()
            names: dict[dns.name.Name, bytes] = {}
            for n, index in enumerate(window):
                name, rdtype = questions[index]
                if name not in names:
                    names[name] = name.to_wire() or b""
                data = query_wire(n, names[name], rdtype)  # id n: unique within the window
                by_id[n] = index
                wire += struct.pack("!H", len(data)) + data
            sock.sendall(wire)
            deadline = time.monotonic() + timeout
            while by_id:
                reply = _read_message(sock, deadline)
                index = by_id.get(reply.id, -1)
                if index < 0 or not _answers(reply, questions[index]):
                    continue  # not one of ours (or a duplicate): skip it
                del by_id[reply.id]
                replies[index] = reduce(reply, questions[index])


OPT_DO = struct.pack("!BHHIH", 0, 41, 1232, 0x8000, 0)
"""The EDNS0 OPT record of every query: root owner, UDP size 1232, DO set, no options."""


def query_wire(query_id: int, qname: bytes, rdtype: int) -> bytes:
    """A query in wire format, built directly (dnspython's make_query and to_wire took half the
    time of 40,000 questions): RD clear, one question of class IN, and the OPT record with DO
    set, as ``dns.message.make_query(name, rdtype, want_dnssec=True)`` with flags 0 makes."""
    header = struct.pack("!HHHHHH", query_id, 0, 1, 0, 0, 1)
    return header + qname + struct.pack("!HH", rdtype, 1) + OPT_DO


def _answers(reply: dns.message.Message, question: Question) -> bool:
    if len(reply.question) != 1:
        return False
    asked = reply.question[0]
    return asked.name == question[0] and asked.rdtype == question[1]


def _read_message(sock: socket.socket, deadline: float) -> dns.message.Message:
    (length,) = struct.unpack("!H", _read_exactly(sock, 2, deadline))
    return answer_part(_read_exactly(sock, length, deadline))


def answer_part(wire: bytes) -> dns.message.Message:
    """A reply's header, question and answer section; its authority and additional sections
    are left unread. Every look of a batch reads the answer alone, and the authority section
    of a signed NODATA answer (the SOA, the NSEC and their RRSIGs: every CDS and CDNSKEY
    question of a zone that serves none) was most of what dnspython parsed."""
    if len(wire) < 12:
        return dns.message.from_wire(wire)  # dnspython says what is wrong with it
    return dns.message.from_wire(wire[:8] + bytes(4) + wire[12:], ignore_trailing=True)


def _read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout("no answer in time")
        sock.settimeout(left)
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return bytes(data)
