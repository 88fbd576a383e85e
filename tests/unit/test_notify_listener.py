"""The KRS NOTIFY listener: source ACL, control-zone names, rate limit, one fetch per id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from krs_plugin.config import load_config
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.protocol import notify_name
from krs_plugin.receiver.service import Service
from krs_plugin.receiver.store import ReceiverStore

CZ = "kdc.example."


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    write_hpke_private(tmp_path / "node.key", HpkeKey.generate())
    write_jose_public(tmp_path / "kdc.pub", JoseKey.generate(), use="sig")
    (tmp_path / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": "ns1.edge.example.",
                "keys": {"hpke": "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": CZ,
                "control_servers": ["127.0.0.1:5354"],
                "notify": {"allowed_sources": ["192.0.2.0/24"], "rate_limit": 5},
                "adapter": {"type": "directory", "settings": {"path": "keys"}},
                "zones": ["example.com."],
                "state": "krs.db",
            }
        )
    )
    config = load_config(tmp_path / "krs.yaml")
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
    assert service.queue.qsize() == 1 and service.pending == {"6b037da1"}


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
