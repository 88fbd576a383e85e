"""The KRS NOTIFY listener: source ACL, control-zone names, the budgets that keep a flood from
starving real NOTIFYs (docs/operations.md, "Resource limits"), one fetch per id."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from krs_plugin.dnsio import echo_reply, parse_query
from krs_plugin.protocol import notify_name
from krs_plugin.receiver.fetcher import NotPublished
from krs_plugin.receiver.notify import NotifyBudget
from krs_plugin.receiver.service import Service
from krs_plugin.receiver.store import ReceiverStore
from tests.nodefolder import write_node_folder

CZ = "kdc.example."


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    notify = {"allowed_sources": ["192.0.2.0/24"], "rate_limit": 5}
    config = write_node_folder(
        tmp_path, ["example.com."], control_zone=CZ, extra={"notify": notify}
    ).config()
    store = ReceiverStore(config.state)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield Service(config, store, None, None, None)  # type: ignore[arg-type]
    store.close()
    loop.close()


def notify(name: str, opcode: dns.opcode.Opcode = dns.opcode.NOTIFY) -> bytes:
    message = dns.message.make_query(name, dns.rdatatype.SOA)
    message.set_opcode(opcode)
    return message.to_wire()


def rcode(wire: bytes | None) -> dns.rcode.Rcode:
    assert wire is not None
    return dns.message.from_wire(wire).rcode()


def test_accepts_notify_from_allowed_source_and_queues_it_once(service: Service) -> None:
    name = notify_name("6b037da1", CZ).to_text()
    assert rcode(service.handle_notify(notify(name), "192.0.2.1")) == dns.rcode.NOERROR
    assert rcode(service.handle_notify(notify(name), "192.0.2.1")) == dns.rcode.NOERROR
    assert service.queue.qsize() == 1 and set(service.pending) == {"6b037da1"}


def test_refuses_other_sources_and_other_opcodes(service: Service) -> None:
    name = notify_name("6b037da1", CZ).to_text()
    assert rcode(service.handle_notify(notify(name), "198.51.100.7")) == dns.rcode.REFUSED
    query = notify(name, dns.opcode.QUERY)
    assert rcode(service.handle_notify(query, "192.0.2.1")) == dns.rcode.REFUSED
    assert service.queue.qsize() == 0


def test_names_outside_the_control_zone_are_not_ours(service: Service) -> None:
    for name in ("6b037da1.other.example.", "x.6b037da1.kdc.example.", "NOTHEX.kdc.example."):
        assert rcode(service.handle_notify(notify(name), "192.0.2.1")) == dns.rcode.NOTAUTH
    assert service.queue.qsize() == 0


def test_flood_is_rate_limited_and_memory_is_bounded(service: Service) -> None:
    answers = [
        rcode(
            service.handle_notify(
                notify(notify_name(f"{0x6B037DA1 + i:x}", CZ).to_text()), "192.0.2.1"
            )
        )
        for i in range(200)
    ]
    accepted = answers.count(dns.rcode.NOERROR)
    assert 5 <= accepted <= 7  # the bucket holds 5, refilling at 5/s
    assert service.queue.qsize() == accepted
    assert service.counters["notify_limited"] == 200 - accepted


def test_garbage_is_dropped_silently(service: Service) -> None:
    assert service.handle_notify(b"\x00\x01garbage", "192.0.2.1") is None


def new_id(n: int) -> str:
    return f"{0x6B100000 + n:08x}"


def flood(service: Service, source: str, count: int = 200, *, udp: bool = True) -> list[int]:
    """``count`` NOTIFYs from ``source``, each for an id never seen; their rcodes."""
    return [
        rcode(service.handle_notify(notify(notify_name(new_id(i), CZ).to_text()), source, udp))
        for i in range(count)
    ]


def test_a_flood_from_one_source_leaves_other_sources_their_budget(service: Service) -> None:
    assert flood(service, "192.0.2.66").count(dns.rcode.REFUSED) >= 190
    real = notify_name("6b037da1", CZ).to_text()
    assert rcode(service.handle_notify(notify(real), "192.0.2.1")) == dns.rcode.NOERROR
    assert "6b037da1" in service.pending


def test_notifies_for_an_id_already_queued_cost_no_budget(service: Service) -> None:
    name = notify_name("6b037da1", CZ).to_text()
    answers = [rcode(service.handle_notify(notify(name), "192.0.2.1")) for _ in range(100)]
    assert answers == [dns.rcode.NOERROR] * 100  # the KDC's retries, or a replayed NOTIFY
    assert service.queue.qsize() == 1 and service.counters["notify_limited"] == 0
    accepted = flood(service, "192.0.2.1", 10).count(dns.rcode.NOERROR)
    assert accepted in (4, 5)  # 5 a second: the hundred repeats took one


def test_tcp_has_a_budget_of_its_own(service: Service) -> None:
    """A forged UDP flood from the KDC's own address does not use up what the KDC may send
    over TCP, where a source cannot be forged."""
    flood(service, "192.0.2.1")
    real = notify_name("6b037da1", CZ).to_text()
    assert rcode(service.handle_notify(notify(real), "192.0.2.1", udp=True)) == dns.rcode.REFUSED
    assert rcode(service.handle_notify(notify(real), "192.0.2.1", udp=False)) == dns.rcode.NOERROR


def test_all_sources_together_share_a_total(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged floods from many addresses: 4 x rate_limit a second in all (20 here). The clock
    stands still, so no budget refills while the 200 are answered (a busy machine refilled 3)."""
    monkeypatch.setattr("krs_plugin.receiver.notify.time.monotonic", lambda: 1000.0)
    service.budget = NotifyBudget(
        service.config.notify.rate_limit, service.config.notify.rate_limit_total
    )
    answers = [
        rcode(
            service.handle_notify(notify(notify_name(new_id(i), CZ).to_text()), f"192.0.2.{10 + i}")
        )
        for i in range(200)
    ]
    assert answers.count(dns.rcode.NOERROR) == 20


def test_the_sources_remembered_are_bounded() -> None:
    budget = NotifyBudget(5, 20, max_sources=100)
    for i in range(1000):
        budget.allow(f"10.0.{i // 256}.{i % 256}", tcp=False)
    assert len(budget.sources[False]) == 100 and not budget.sources[True]


def test_more_than_one_question_is_a_format_error(service: Service) -> None:
    message = dns.message.make_query(notify_name("6b037da1", CZ), dns.rdatatype.SOA)
    message.set_opcode(dns.opcode.NOTIFY)
    message.question = message.question * 100
    reply = dns.message.from_wire(service.handle_notify(message.to_wire(), "192.0.2.1") or b"")
    assert reply.rcode() == dns.rcode.FORMERR and not reply.question
    assert service.queue.qsize() == 0


def test_ids_the_control_zone_lists_go_before_ids_a_notify_named(service: Service) -> None:
    """Made-up ids that got within budget queue up; the real one, found by the poller (even when
    a NOTIFY already queued it behind them), is fetched next, and only once."""
    for i in range(5):
        assert service.enqueue(new_id(i))
    assert service.enqueue("6b037da1")  # the KDC's NOTIFY, behind them
    assert not service.enqueue("6b037da1", published=True)  # the poll: moves it to the front
    assert service.enqueue("6b037da2", published=True)
    order = []
    while not service.queue.empty():
        priority, _, dist_id = service.queue.get_nowait()
        if service.pending.get(dist_id) == priority:  # what the worker takes
            order.append(dist_id)
            del service.pending[dist_id]
    assert order == ["6b037da1", "6b037da2", *(new_id(i) for i in range(5))]


def test_a_full_queue_drops_notified_ids_never_published_ones(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("krs_plugin.receiver.service.MAX_QUEUE", 3)
    assert [service.enqueue(new_id(i)) for i in range(5)] == [True] * 3 + [False] * 2
    assert service.enqueue("6b037da1", published=True)
    assert service.poll_wake.is_set() is False  # 4 waiting: not busy yet


class Publisher:
    """The control zone as the poller and the worker see it: ``published`` ids, nothing to fetch
    (each fetch is recorded and answered "not published")."""

    kdc = "kdc.example."

    def __init__(self) -> None:
        self.published: list[str] = []
        self.fetched: list[str] = []
        self.polls = 0

    def pending_ids(self) -> list[str]:
        self.polls += 1
        return list(self.published)

    def fetch(self, dist_id: str) -> None:
        self.fetched.append(dist_id)
        raise NotPublished(f"{dist_id}: test double")


def test_a_flood_in_the_kdcs_name_does_not_hold_back_a_real_distribution(
    service: Service,
) -> None:
    """3,000 NOTIFYs a second forged from the KDC's address use up its budget, so the real
    NOTIFY is refused too; the refusal brings the poll forward and the distribution is fetched
    within about a second, not at the next poll (poll_interval 60 s)."""
    control = Publisher()
    service.fetcher = control  # type: ignore[assignment]
    service.pipeline = control  # type: ignore[assignment]

    async def scenario() -> float:
        tasks = [asyncio.create_task(service.worker()), asyncio.create_task(service.poll_loop())]
        while not control.polls:  # the first poll: nothing published yet
            await asyncio.sleep(0.01)
        control.published.append("6b037da1")
        real = notify(notify_name("6b037da1", CZ).to_text())
        started = time.monotonic()
        sent = 0
        try:
            while "6b037da1" not in control.fetched and time.monotonic() - started < 5:
                flood(service, "192.0.2.1", 30)  # about 3,000 a second
                sent += 30
                if sent == 30:
                    # Sent before the loop first yields: once the poller has run, brought
                    # forward by the refusals, it may have queued the id, which is then known
                    # and answered NOERROR without budget (a clean-clone CI run saw that).
                    refused = rcode(service.handle_notify(real, "192.0.2.1"))
                    assert refused == dns.rcode.REFUSED
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    took = asyncio.get_event_loop().run_until_complete(scenario())
    assert "6b037da1" in control.fetched, f"not fetched after {took:.1f} s"
    assert took < 3


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.REFUSED, dns.rcode.NOTAUTH])
@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("name", ["8000000a.kdc.example.", "8000000A.KdC.ExAmple."])
def test_the_answer_built_from_the_query_bytes_is_dnspythons(
    rcode: dns.rcode.Rcode, edns: bool, name: str
) -> None:
    """``echo_reply`` is the fast path of every NOTIFY answer: byte for byte what
    ``make_response`` would send (the question as sent, 0x20 case kept; EDNS echoed)."""
    query = dns.message.make_query(name, "SOA", use_edns=edns)
    query.set_opcode(dns.opcode.NOTIFY)
    wire = query.to_wire()
    expected = dns.message.make_response(parse_query(wire))
    expected.flags |= dns.flags.AA
    expected.set_rcode(rcode)
    assert echo_reply(parse_query(wire), wire, rcode) == expected.to_wire()
