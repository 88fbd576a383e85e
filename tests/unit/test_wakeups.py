"""Nothing waits on a timer between ``krs-kdc distribute`` and the KDC hearing the nodes' answers
(issue 24, item 2): distribute wakes ``serve`` (kdc/wake.py), a NOTIFY that ends while others
wait for a place lets the next one go at once, and ``krs run`` sends a report as soon as its
outcome is recorded. Each test sets the periodic tick to 30 s, so it fails without its wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from krs_lab.ports import free_port
from krs_plugin.config import load_config
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.server import ControlZone, KdcServer, ServeOptions, serve
from krs_plugin.kdc.store import Store
from krs_plugin.kdc.wake import listen_addresses, wake_message
from krs_plugin.receiver import service as service_module
from krs_plugin.receiver.service import Service
from krs_plugin.receiver.store import ReceiverStore
from tests.loopthread import LoopThread

CZ = "kdc.example."
ZONE = "example.com."
LONG_TICK = 30.0  # the fallback never fires within a test
PROMPT = 0.2  # the bound: a wake-up acts within 0.2 s
KRS_KDC = str(Path(sys.executable).parent / "krs-kdc")


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def kdc_state(folder: Path, notify_addresses: list[str]) -> None:
    """kdc.db and the KDC's keys: one zone with a CSK, one HPKE node per address."""
    create_identity(folder / "keys")
    store = Store(folder / "kdc.db")
    store.set_meta("control_zone", CZ)
    store.add_zone(ZONE)
    key = generate_key(ZONE, 13, 257)
    store.add_key(
        ZONE, key_tag=key.key_tag, role="CSK", algorithm=13, flags=257,
        private_pem=key.to_pkcs8_pem(),
    )  # fmt: skip
    for n, address in enumerate(notify_addresses):
        store.add_node(
            f"n{n}.edge.example.", notify_address=address, backend="hpke",
            hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None, signing_pubkey=None,
            zones=[ZONE],
        )  # fmt: skip
    store.close()


def test_distribute_wakes_serve_which_notifies_the_node_at_once(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    """``krs-kdc distribute`` (a process of its own) -> NOTIFY at the node within 0.2 s of the
    command's end, with serve's tick at 30 s: only the wake-up can have sent it."""
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.bind(("127.0.0.1", 0))
    node.settimeout(10)
    kdc_state(tmp_path, [f"127.0.0.1:{node.getsockname()[1]}"])
    store = loop_thread.call(lambda: Store(tmp_path / "kdc.db"))
    options = ServeOptions(listen=(("127.0.0.1", free_port()),), tick=LONG_TICK)
    running = asyncio.run_coroutine_threadsafe(serve(store, CZ, options), loop_thread.loop)
    reader = Store(tmp_path / "kdc.db")
    try:
        deadline = time.monotonic() + 10
        while not listen_addresses(reader):  # serve listens and recorded where
            assert time.monotonic() < deadline and not running.done()
            time.sleep(0.02)
        time.sleep(0.1)  # serve's first round is over: the next one is 30 s away
        subprocess.run(
            [KRS_KDC, "--state", str(tmp_path), "distribute", "--zone", ZONE],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        returned = time.monotonic()
        wire, _ = node.recvfrom(4096)
        arrived = time.monotonic()
        assert dns.message.from_wire(wire).opcode() == dns.opcode.NOTIFY
        assert arrived - returned < PROMPT, f"NOTIFY {arrived - returned:.3f} s after distribute"
    finally:
        running.cancel()
        node.close()
        reader.close()
        with contextlib.suppress(Exception):
            running.result(5)
        loop_thread.call(store.close)


def make_server(tmp_path: Path, nodes: int, cap: int) -> KdcServer:
    """A server over ``nodes`` pending distributions, at most ``cap`` NOTIFYs in flight."""
    kdc_state(tmp_path, ["127.0.0.1:9"] * nodes)
    store = Store(tmp_path / "kdc.db")
    distribute_zone(store, create_identity(tmp_path / "keys2"), ZONE, now=time.time())
    options = ServeOptions(listen=(), tick=LONG_TICK, max_notify_in_flight=cap)
    return KdcServer(store, ControlZone(store, CZ), options)


def test_a_notify_ending_lets_the_next_go_without_the_tick(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    """Ten nodes, three NOTIFYs in flight at most, each answered in 10 ms: all ten are sent
    within 0.2 s, not three per 30 s tick."""
    server = loop_thread.call(lambda: make_server(tmp_path, 10, 3))
    started: list[float] = []

    async def answered(dist_id: str, node_id: str) -> None:
        started.append(time.monotonic())
        await asyncio.sleep(0.01)
        server.store.mark_notify_acked(dist_id, node_id, now=time.time())  # the node answered

    server._notify = answered  # type: ignore[method-assign]

    async def rounds() -> float:
        begun = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.notify_loop(), 0.5)
        return begun

    begun = loop_thread.run(rounds())
    assert len(started) == 10
    assert max(started) - begun < PROMPT
    loop_thread.call(server.store.close)


def test_only_local_sources_wake_serve(tmp_path: Path, loop_thread: LoopThread) -> None:
    """A wake-up runs a round; only this host may ask for one (loopback or serve's own
    address), so a remote sender cannot keep serve's loop busy."""
    server = loop_thread.call(lambda: make_server(tmp_path, 1, 3))
    wire = wake_message(CZ).to_wire()
    remote = server.handle(wire, "192.0.2.1", udp=True)
    assert isinstance(remote, bytes)
    assert dns.message.from_wire(remote).rcode() == dns.rcode.REFUSED
    assert not server.wakeup.event.is_set()
    local = server.handle(wire, "127.0.0.1", udp=True)
    assert isinstance(local, bytes)
    assert dns.message.from_wire(local).rcode() == dns.rcode.NOERROR
    assert server.wakeup.event.is_set()
    loop_thread.call(server.store.close)


@pytest.fixture
def krs_service(tmp_path: Path) -> Iterator[Service]:
    write_hpke_private(tmp_path / "node.key", HpkeKey.generate())
    write_jose_public(tmp_path / "kdc.pub", JoseKey.generate(), use="sig")
    (tmp_path / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": "ns1.edge.example.",
                "keys": {"hpke": "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": CZ,
                "control_servers": ["127.0.0.1:9"],
                "adapter": {"type": "directory", "settings": {"path": "keys"}},
                "zones": [ZONE],
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


def test_krs_sends_the_report_as_soon_as_the_outcome_is_recorded(
    krs_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker records an outcome with its report; the report reaches ``confirm`` within
    0.2 s, with the confirmation loop's tick at 30 s."""
    service = krs_service
    recorded: list[float] = []
    sent: list[tuple[str, float]] = []

    async def process(dist_id: str) -> str:
        service.store.record_outcome(
            dist_id, "kdc", int(dist_id, 16), "rejected", stage="wire", error="test",
            report={"node_id": "ns1.edge.example.", "outcome": "rejected"},
        )  # fmt: skip
        recorded.append(time.monotonic())
        return "rejected"

    async def confirm(dist_id: str, report: object, config: object, signer: object) -> bool:
        sent.append((dist_id, time.monotonic()))
        return True

    monkeypatch.setattr(service, "process", process)
    monkeypatch.setattr(service_module, "confirm", confirm)

    async def scenario() -> None:
        tasks = [
            asyncio.create_task(service.worker()),
            asyncio.create_task(service.confirm_loop(tick=LONG_TICK)),
        ]
        await asyncio.sleep(0.05)  # the loop's first look found nothing due
        service.enqueue("6b037da1")
        deadline = time.monotonic() + 1
        while not sent and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.get_event_loop().run_until_complete(scenario())
    assert [dist_id for dist_id, _ in sent] == ["6b037da1"]
    assert sent[0][1] - recorded[0] < PROMPT


def test_a_confirmation_reads_only_the_row_of_the_node_it_names(
    tmp_path: Path, loop_thread: LoopThread
) -> None:
    """Each confirmation read every target's row of its distribution, so a fleet of 1,000
    cost 1,000 x 1,000 rows (35 ms a confirmation, the KDC 30 s behind): one row now."""
    server = loop_thread.call(lambda: make_server(tmp_path, 5, 3))
    (dist_id,) = {row.id for row in loop_thread.call(server.store.distributions)}
    rows = loop_thread.call(lambda: server.zone._rows(dist_id, {"node_id": "N3.edge.example"}))
    assert [row.node_id for row in rows] == ["n3.edge.example."]
    assert len(loop_thread.call(lambda: server.zone._rows(dist_id, {}))) == 5  # tdns: by address
    unknown = loop_thread.call(lambda: server.zone._rows(dist_id, {"node_id": "other.example."}))
    assert len(unknown) == 5  # not a target: "no matching node", as before
    loop_thread.call(server.store.close)
