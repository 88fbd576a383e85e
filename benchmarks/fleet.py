"""The fleet (issue 24, "Must show"): one ``krs-kdc distribute`` to many nodes, timed until every
node's confirmation is recorded at the KDC.

Run:  .venv/bin/python benchmarks/fleet.py [--part direct|secondaries|both] [--nodes N]
                                           [--runs R] [--quick] [--keep] [--source]

(a) ``--part direct`` (100 nodes, 10 runs): ``krs-kdc serve`` and one real ``krs run`` per node
    (directory adapter, ``poll_interval: 3600`` so only the NOTIFY starts a fetch), each with its
    own ports, keys and folders in a temporary directory, each added with ``krs-kdc node add``.
    Before each run (not timed) ``krs-kdc key generate`` makes a new ZSK and ``key remove
    --force`` withdraws the previous one, so every distribution is a ZSK roll (KSK and new ZSK
    sent, old ZSK deleted). The clock starts when the ``krs-kdc distribute`` process is started
    and stops when kdc.db shows every node's distribution ``confirmed`` (read every 5 ms). CPU
    from /proc/<pid>/stat (utime + stime) of ``krs-kdc serve`` and of every ``krs run`` around
    each run; RSS (VmRSS, VmHWM) from /proc/<pid>/status after the last run.
(b) ``--part secondaries`` (1,000 nodes, 3 runs): the KDC as hidden primary (``--also-notify``
    and ``--tsig-key``) of a Knot and an NSD secondary (lab/krs_lab/secondaries.py). The nodes
    are lightweight: UDP listeners in this process that answer the KDC's NOTIFY at once and
    then, as ``krs run`` does, fetch the distribution with krs_plugin's ``Fetcher`` from the
    secondaries (half the nodes ask Knot first, half NSD; at most 32 fetches at once, in
    threads), look for it again after 0.5 s, doubling, while no secondary has it yet (the
    NOTIFY can outrun the transfer), open it with ``unpack_distribution`` and ``parse_payload``
    with the node's own keys, and send the signed report with ``receiver.confirm.confirm`` to
    the KDC (again with its backoff until acknowledged). The nodes are added to kdc.db directly
    (1,000 ``node add`` processes would take minutes), the distribution with the CLI. Goal: all
    1,000 confirmed within 20 s.

``--quick``: 20 nodes and 3 runs for (a), 100 nodes and 1 run for (b). The processes keep their
compiled bytecode in a temporary cache, as an installed package does; ``--source`` compiles at
every start instead (PYTHONDONTWRITEBYTECODE, as set in this project's shells). A harness that
prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import dns.exception
import dns.message
import dns.name
import dns.opcode
from krs_harness import machine, percentile, proc_status

from krs_lab.nodekeys import write_node_keys
from krs_lab.secondaries import Secondary, TransferKey
from krs_plugin.config import Address, Config, FetchSettings
from krs_plugin.crypto import HpkeKey, JoseKey, load_jose_key
from krs_plugin.errors import KrsError
from krs_plugin.kdc.store import Store
from krs_plugin.payload import DeleteKey, RollKey, parse_payload
from krs_plugin.protocol import Limits, parse_notify_name
from krs_plugin.receiver.confirm import confirm, retry_delay
from krs_plugin.receiver.fetcher import Fetched, Fetcher, NotPublished
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution

BIN = Path(sys.executable).parent
CZ, ZONE = "kdc.example.", "example.com."
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIMEOUT = 180.0  # one run, at most
FETCH_THREADS = 32  # (b): fetches at once; NSD takes 100 TCP connections by default
NOT_YET_RETRY, NOT_YET_TRIES = 0.5, 6  # as krs run (receiver/service.py)


# --- processes and /proc --------------------------------------------------------------------


def cli(state: Path, *args: str) -> str:
    """One ``krs-kdc`` command on ``state``; its stdout, or RuntimeError with its stderr."""
    argv = [str(BIN / "krs-kdc"), "--state", str(state), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def inotify_instances(pid: int) -> int:
    """How many inotify instances ``pid`` holds (descriptors on anon_inode:inotify)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``text`` is in ``log``; RuntimeError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {text!r}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def unique_ports(count: int) -> list[int]:
    """``count`` distinct ports free for UDP and TCP on 127.0.0.1, below the kernel's ephemeral
    range: a port from ``free_port`` (an ephemeral one) can be taken by an outgoing connection
    before the process that is to listen on it starts, which a hundred processes did meet."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for port in random.Random().sample(
        range(max(1024, low - 12000), low), k=min(12000, low - 1024)
    ):
        if len(ports) == count:
            break
        if bindable(port):
            ports.append(port)
    return ports


def bindable(port: int) -> bool:
    """Whether 127.0.0.1:``port`` is free for both UDP and TCP now."""
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def confirmed_count(db: sqlite3.Connection, dist_id: str) -> int:
    row = db.execute(
        "SELECT COUNT(*) FROM distributions WHERE id = ? AND status = 'confirmed'", (dist_id,)
    ).fetchone()
    return int(row[0])


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to kdc.db: polling it must not take the write lock."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def start_kdc(state: Path, port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """``krs-kdc serve`` on 127.0.0.1:``port``, returned once it serves."""
    argv = [str(BIN / "krs-kdc"), "--state", str(state), "serve", "--listen", f"127.0.0.1:{port}"]
    with log.open("ab") as out:
        process = subprocess.Popen([*argv, *extra], stdout=out, stderr=subprocess.STDOUT)
    wait_for_line(log, "krs-kdc serving", process, 30)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def init_kdc(state: Path) -> None:
    """kdc.db with the control zone and example.com. with a KSK and a ZSK (algorithm 13)."""
    cli(state, "init", "--control-zone", CZ)
    cli(state, "zone", "add", ZONE)
    cli(state, "key", "generate", "--zone", ZONE, "--role", "KSK")
    cli(state, "key", "generate", "--zone", ZONE, "--role", "ZSK")


def roll_zsk(state: Path) -> None:
    """A new ZSK, the previous one withdrawn (``--force``: the new one is not distributed yet,
    which the guard would count against it), so the next distribution is a ZSK roll."""
    old = [
        k["key_tag"]
        for k in json.loads(cli(state, "--json", "key", "list", "--zone", ZONE))
        if k["role"] == "ZSK" and k["state"] != "removed"
    ]
    cli(state, "key", "generate", "--zone", ZONE, "--role", "ZSK")
    for tag in old:
        cli(state, "key", "remove", "--zone", ZONE, "--tag", str(tag), "--force")


@dataclass
class Run:
    """One timed distribution."""

    total: float  # distribute started -> all confirmed at the KDC
    command: float  # the distribute process, start to exit
    kdc_cpu: float  # seconds of CPU of krs-kdc serve during the run
    node_cpu: list[float] = field(default_factory=list)  # per node (krs run), seconds
    distribute_cpu: float = 0.0


def distribute_blocking(state: Path) -> tuple[str, float, float]:
    """``krs-kdc distribute``: (distribution id, wall seconds, CPU seconds of the process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = cli(state, "--json", "distribute", "--zone", ZONE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return str(json.loads(out)["distribution_id"]), wall, cpu


def wait_confirmed(
    db: sqlite3.Connection, dist_id: str, count: int, what: Callable[[], str]
) -> float:
    """perf_counter when ``count`` nodes have ``dist_id`` confirmed (polled every 5 ms)."""
    deadline = time.perf_counter() + TIMEOUT
    while confirmed_count(db, dist_id) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{dist_id}: {confirmed_count(db, dist_id)}/{count}: {what()}")
        time.sleep(0.005)
    return time.perf_counter()


# --- (a) real krs run processes ---------------------------------------------------------------


@dataclass
class Node:
    """One ``krs run`` and its folder."""

    name: str
    folder: Path
    port: int
    options: list[str] = field(default_factory=list)  # node add's key options
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "krs.log"

    def config(self, kdc_port: int, verification_key: Path) -> dict[str, Any]:
        keys = {"hpke": str(self.folder / "node.key"), "signing": str(self.folder / "signing.key")}
        return {
            "node_id": self.name,
            "keys": keys,
            "kdc": {"verification_key": str(verification_key)},
            "control_zone": CZ,
            "control_servers": [f"127.0.0.1:{kdc_port}"],
            "notify": {"listen": [f"127.0.0.1:{self.port}"], "allowed_sources": ["127.0.0.0/8"]},
            "adapter": {"type": "directory", "settings": {"path": str(self.folder / "keys")}},
            "zones": [ZONE],
            "state": str(self.folder / "krs.db"),
            "poll_interval": 3600,
        }  # fmt: skip


class DirectFleet:
    """``krs-kdc serve`` and ``count`` ``krs run`` processes under ``root``."""

    def __init__(self, root: Path, count: int) -> None:
        self.root, self.state = root, root / "kdc"
        self.kdc_port, *ports = unique_ports(count + 1)
        self.nodes = [
            Node(f"n{i:04d}.fleet.example.", root / "nodes" / f"n{i:04d}", port)
            for i, port in enumerate(ports)
        ]
        self.kdc: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        """kdc.db, then every node: keys, krs.yaml, and ``krs-kdc node add`` (two at a time)."""
        init_kdc(self.state)
        for node in self.nodes:
            (node.folder / "keys").mkdir(parents=True)
            node.options = write_node_keys(node.folder, "hpke")
            (node.folder / "krs.yaml").write_text(
                json.dumps(node.config(self.kdc_port, self.state / "keys" / "kdc.signing.pubkey"))
            )
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(self._add, self.nodes))

    def _add(self, node: Node) -> None:
        address = f"127.0.0.1:{node.port}"
        cli(
            self.state, "node", "add", node.name, "--notify", address, *node.options, "--zone", ZONE
        )

    def start(self) -> None:
        self.kdc = start_kdc(self.state, self.kdc_port, self.root / "kdc.log", [])
        for node in self.nodes:
            with node.log.open("ab") as out:
                node.process = subprocess.Popen(
                    [str(BIN / "krs"), "run", "-c", str(node.folder / "krs.yaml")],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
        for node in self.nodes:
            assert node.process is not None
            wait_for_line(node.log, "listening for NOTIFY", node.process, 300)

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]

    def run(self, db: sqlite3.Connection) -> Run:
        assert self.kdc is not None
        kdc_before = cpu_seconds(self.kdc.pid)
        nodes_before = [cpu_seconds(pid) for pid in self.pids()]
        started = time.perf_counter()
        dist_id, wall, cpu = distribute_blocking(self.state)
        done = wait_confirmed(db, dist_id, len(self.nodes), self.stragglers)
        time.sleep(0.2)  # what the nodes do right after their confirmation counts too
        return Run(
            total=done - started,
            command=wall,
            kdc_cpu=cpu_seconds(self.kdc.pid) - kdc_before,
            node_cpu=[cpu_seconds(p) - b for p, b in zip(self.pids(), nodes_before, strict=True)],
            distribute_cpu=cpu,
        )

    def stragglers(self) -> str:
        return "see the logs under " + str(self.root)

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                stop(node.process)
        if self.kdc is not None:
            stop(self.kdc)


def measure_direct(root: Path, count: int, runs: int) -> None:
    fleet = DirectFleet(root, count)
    try:
        began = time.monotonic()
        fleet.setup()
        print(
            f"  (a) set up {count} nodes with krs-kdc node add in {time.monotonic() - began:.0f} s"
        )
        began = time.monotonic()
        fleet.start()
        print(f"  (a) {count} krs run started in {time.monotonic() - began:.0f} s")
        db = read_only(fleet.state / "kdc.db")
        fleet.run(db)  # warm-up: the first apply of every node, not counted
        results = []
        for done in range(runs):
            roll_zsk(fleet.state)
            time.sleep(1.0)  # the KDC and the nodes idle again
            results.append(fleet.run(db))
            progress(f"(a) run {done + 1}/{runs}: {results[-1].total:.2f} s")
        report_direct(fleet, results)
    finally:
        fleet.close()


def report_direct(fleet: DirectFleet, results: list[Run]) -> None:
    count = len(fleet.nodes)
    assert fleet.kdc is not None
    kdc = proc_status(fleet.kdc.pid)
    rss = [proc_status(pid)["VmRSS"] / 1024 for pid in fleet.pids()]
    node_cpu = [c * 1000 for r in results for c in r.node_cpu]
    warned = sum(
        "inotify is not available" in n.log.read_text(errors="replace") for n in fleet.nodes
    )
    instances = [inotify_instances(pid) for pid in fleet.pids()]
    errors = sum("Traceback" in n.log.read_text(errors="replace") for n in fleet.nodes)
    print(f"\n(a) one krs-kdc distribute to {count} krs run processes, {len(results)} runs (s):")
    row("distribute started -> all confirmed", [r.total for r in results])
    row("the distribute process (start to exit)", [r.command for r in results])
    row("its exit -> all confirmed", [r.total - r.command for r in results])
    print(
        f"  KDC CPU per node per run:  {ms(statistics_mean([r.kdc_cpu / count for r in results]))}"
    )
    print(f"  krs run CPU per run:       p50 {percentile(node_cpu, 50):.1f} ms, "
          f"p95 {percentile(node_cpu, 95):.1f} ms, max {max(node_cpu):.1f} ms, "
          f"mean {statistics_mean(node_cpu):.1f} ms (10 ms ticks)")  # fmt: skip
    print(
        f"  distribute CPU per run:    {ms(statistics_mean([r.distribute_cpu for r in results]))}"
    )
    print(f"  KDC RSS: {kdc['VmRSS'] / 1024:.1f} MB (peak {kdc['VmHWM'] / 1024:.1f} MB)")
    print(f"  krs run RSS: p50 {percentile(rss, 50):.1f} MB, max {max(rss):.1f} MB, "
          f"all {sum(rss):.0f} MB")  # fmt: skip
    print(f"  inotify: {warned} of {count} krs run warned and fell back; instances held: "
          f"{sum(instances)} ({min(instances)}-{max(instances)} per process); "
          f"fs.inotify.max_user_instances = {sysctl('max_user_instances')}")  # fmt: skip
    print(f"  krs run logs with a traceback: {errors}")


# --- (b) lightweight nodes behind two secondaries ----------------------------------------------


@dataclass
class LightNode:
    """A node in this process: its keys, what it has done, and its NOTIFY socket."""

    name: dns.name.Name
    hpke: HpkeKey
    signer: JoseKey
    fetcher: Fetcher
    transport: asyncio.DatagramTransport | None = None
    seen: set[str] = field(default_factory=set)


class NotifyListener(asyncio.DatagramProtocol):
    """One node's NOTIFY socket: NOERROR at once, then the distribution is handled."""

    def __init__(self, swarm: Swarm, node: LightNode) -> None:
        self.swarm, self.node = swarm, node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.node.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
            dist_id = parse_notify_name(query.question[0].name, CZ)
        except (dns.exception.DNSException, KrsError, IndexError):
            return
        if query.opcode() != dns.opcode.NOTIFY or self.node.transport is None:
            return
        self.node.transport.sendto(dns.message.make_response(query).to_wire(), addr)
        if dist_id not in self.node.seen:
            self.node.seen.add(dist_id)
            self.swarm.spawn(self.node, dist_id)


class Swarm:
    """``count`` lightweight nodes fetching from ``servers`` and confirming to ``kdc``."""

    def __init__(self, count: int, servers: list[Address], kdc: Address, verifier: JoseKey) -> None:
        self.kdc, self.verifier = kdc, verifier
        self.pool = concurrent.futures.ThreadPoolExecutor(FETCH_THREADS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.problems: list[str] = []
        self.late = 0  # fetches that found no secondary with it yet, and looked again
        self.nodes = []
        for i in range(count):
            name = dns.name.from_text(f"n{i:04d}.fleet.example.")
            order = servers[i % 2 :] + servers[: i % 2]  # half ask Knot first, half NSD
            fetcher = Fetcher(order, dns.name.from_text(CZ), name, FetchSettings(), Limits())
            self.nodes.append(LightNode(name, HpkeKey.generate(), JoseKey.generate(), fetcher))

    async def listen(self) -> list[str]:
        """Every node's NOTIFY socket on 127.0.0.1; their addresses, in node order."""
        loop = asyncio.get_running_loop()
        addresses = []
        for node in self.nodes:
            transport, _ = await loop.create_datagram_endpoint(
                lambda node=node: NotifyListener(self, node), local_addr=("127.0.0.1", 0)
            )
            addresses.append(f"127.0.0.1:{transport.get_extra_info('sockname')[1]}")
        return addresses

    def spawn(self, node: LightNode, dist_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.handle(node, dist_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, node: LightNode, dist_id: str) -> None:
        """Fetch, open, confirm: what ``krs run`` does, the apply left out."""
        try:
            fetched = await self.fetch(node, dist_id)
            report = self.open(node, dist_id, fetched)
            await self.confirm(node, dist_id, report)
        except Exception as exc:  # counted and shown; the run then times out
            self.problems.append(f"{node.name} {dist_id}: {exc}")

    async def fetch(self, node: LightNode, dist_id: str) -> Fetched:
        loop = asyncio.get_running_loop()
        for tries in range(NOT_YET_TRIES + 1):
            try:
                return await loop.run_in_executor(self.pool, node.fetcher.fetch, dist_id)
            except NotPublished:
                if tries == NOT_YET_TRIES:
                    raise
                self.late += 1
                await asyncio.sleep(NOT_YET_RETRY * 2**tries)
        raise AssertionError("unreachable")

    def open(self, node: LightNode, dist_id: str, fetched: Fetched) -> dict[str, object]:
        """The envelope opened with the node's key, the payload read, tdns's report made."""
        now = time.time()
        identity = NodeIdentity(node.name, hpke=node.hpke)
        opened = unpack_distribution(
            dist_id, fetched.manifest, fetched.chunks, identity, self.verifier, now=now
        )
        payload = parse_payload(opened.plaintext, now=now, expected_distribution_id=dist_id)
        keys = [
            {"zone_name": e.zone.to_text(), "key_id": str(e.key_tag)}
            for e in payload.entries
            if isinstance(e, RollKey | DeleteKey)
        ]
        return {"node_id": node.name.to_text(), "successful_keys": keys}

    async def confirm(self, node: LightNode, dist_id: str, report: dict[str, object]) -> None:
        """``receiver.confirm.confirm`` until the KDC acknowledges, with its backoff."""
        config = SimpleNamespace(node_id=node.name, control_zone=CZ, kdc_servers=(self.kdc,))
        attempts = 0
        while not await confirm(dist_id, report, cast(Config, config), node.signer):
            attempts += 1
            await asyncio.sleep(retry_delay(attempts))

    def register(self, state: Path, addresses: list[str]) -> None:
        """Every node in kdc.db, serving example.com. (what ``node add`` records)."""
        store = Store(state / "kdc.db")
        try:
            for node, address in zip(self.nodes, addresses, strict=True):
                store.add_node(
                    node.name.to_text(), notify_address=address, backend="hpke",
                    hpke_pubkey=node.hpke.public_hex, jose_pubkey=None,
                    signing_pubkey=json.dumps(node.signer.public_jwk), zones=[ZONE],
                )  # fmt: skip
        finally:
            store.close()


@dataclass
class Hidden:
    """The KDC as hidden primary of two secondaries, and the swarm behind them."""

    root: Path
    count: int
    kinds: tuple[str, ...] = ("knot", "nsd")
    kdc: subprocess.Popen[bytes] | None = None
    secondaries: list[Secondary] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.root / "kdc"

    def start_servers(self) -> None:
        key = TransferKey.generate()
        key_file = key.write(self.root / "transfer.key")
        kdc_port, *ports = unique_ports(1 + len(self.kinds))
        self.kdc_port = kdc_port
        for kind, port in zip(self.kinds, ports, strict=True):
            secondary = Secondary(kind, self.root / kind, CZ, ("127.0.0.1", kdc_port), key)
            secondary.port = port
            self.secondaries.append(secondary)
        extra = ["--tsig-key", str(key_file)]
        for secondary in self.secondaries:
            extra += ["--also-notify", secondary.address]
        self.kdc = start_kdc(self.state, kdc_port, self.root / "kdc.log", extra)
        for secondary in self.secondaries:
            secondary.start()

    def close(self) -> None:
        for secondary in self.secondaries:
            with contextlib.suppress(Exception):
                secondary.stop()
        if self.kdc is not None:
            stop(self.kdc)


async def distribute_async(state: Path) -> tuple[str, float]:
    """``krs-kdc distribute`` without blocking the loop the nodes run on."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(BIN / "krs-kdc"), "--state", str(state), "--json", "distribute", "--zone", ZONE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"distribute: {err.decode().strip()}")
    return str(json.loads(out)["distribution_id"]), time.perf_counter() - started


async def run_hidden(hidden: Hidden, swarm: Swarm, db: sqlite3.Connection) -> Run:
    assert hidden.kdc is not None
    kdc_before, own_before = cpu_seconds(hidden.kdc.pid), time.process_time()
    started = time.perf_counter()
    dist_id, wall = await distribute_async(hidden.state)
    deadline = started + TIMEOUT
    while confirmed_count(db, dist_id) < hidden.count:
        if time.perf_counter() > deadline or swarm.problems:
            raise RuntimeError(
                f"{dist_id}: {confirmed_count(db, dist_id)}/{hidden.count} confirmed; "
                f"{swarm.problems[:3]}; logs under {hidden.root}"
            )
        await asyncio.sleep(0.02)
    done = time.perf_counter()
    return Run(
        total=done - started,
        command=wall,
        kdc_cpu=cpu_seconds(hidden.kdc.pid) - kdc_before,
        node_cpu=[time.process_time() - own_before],  # the whole swarm (this process)
    )


async def measure_hidden_async(root: Path, count: int, runs: int) -> None:
    hidden = Hidden(root, count)
    init_kdc(hidden.state)
    verifier = load_jose_key(hidden.state / "keys" / "kdc.signing.pubkey")
    try:
        hidden.start_servers()
        servers = [Address("127.0.0.1", s.port) for s in hidden.secondaries]
        swarm = Swarm(count, servers, Address("127.0.0.1", hidden.kdc_port), verifier)
        swarm.register(hidden.state, await swarm.listen())
        db = read_only(hidden.state / "kdc.db")
        await run_hidden(hidden, swarm, db)  # warm-up, not counted
        results = []
        for done in range(runs):
            await asyncio.to_thread(roll_zsk, hidden.state)
            await asyncio.sleep(1.0)
            late = swarm.late
            results.append(await run_hidden(hidden, swarm, db))
            progress(f"(b) run {done + 1}/{runs}: {results[-1].total:.2f} s "
                     f"({swarm.late - late} fetches looked again)")  # fmt: skip
        report_hidden(hidden, results)
    finally:
        hidden.close()


def report_hidden(hidden: Hidden, results: list[Run]) -> None:
    assert hidden.kdc is not None
    kdc = proc_status(hidden.kdc.pid)
    count = hidden.count
    kinds = " and ".join(hidden.kinds)
    print(f"\n(b) one krs-kdc distribute to {count} lightweight nodes through {kinds}, "
          f"{len(results)} runs (s; goal 20 s):")  # fmt: skip
    row("distribute started -> all confirmed", [r.total for r in results])
    row("the distribute process (start to exit)", [r.command for r in results])
    print(
        f"  KDC CPU per node per run:  {ms(statistics_mean([r.kdc_cpu / count for r in results]))}"
    )
    swarm_cpu = statistics_mean([r.node_cpu[0] / count for r in results])
    print(f"  the nodes (this process) CPU per node per run: {ms(swarm_cpu)}")
    print(f"  KDC RSS: {kdc['VmRSS'] / 1024:.1f} MB (peak {kdc['VmHWM'] / 1024:.1f} MB)")


def measure_hidden(root: Path, count: int, runs: int) -> None:
    asyncio.run(measure_hidden_async(root, count, runs))


# --- output -------------------------------------------------------------------------------------


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def row(label: str, values: list[float]) -> None:
    print(
        f"  {label:40} p50 {percentile(values, 50):6.2f}  p95 {percentile(values, 95):6.2f}  "
        f"min {min(values):6.2f}  max {max(values):6.2f}"
    )


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def sysctl(name: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "?"


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for one part; with ``keep`` it stays, logs and all, for a look."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        print(f"  working directory (kept): {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--part", choices=("direct", "secondaries", "both"), default="both")
    parser.add_argument("--nodes", type=int, help="nodes (default 100 direct, 1000 secondaries)")
    parser.add_argument("--runs", type=int, help="timed runs (default 10 direct, 3 secondaries)")
    parser.add_argument("--quick", action="store_true", help="20 / 100 nodes, 3 / 1 runs")
    parser.add_argument("--keep", action="store_true", help="keep the logs and state afterwards")
    parser.add_argument(
        "--source", action="store_true", help="no bytecode cache: compile at every start"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with contextlib.ExitStack() as stack:
        if not args.source:
            bytecode_cache(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        return measure(args)


def bytecode_cache(directory: Path) -> None:
    """The processes started keep their compiled modules in ``directory``, as an installed
    package has them (pip compiles at install): with PYTHONDONTWRITEBYTECODE set (as in this
    project's shells) and the editable checkout, every ``krs-kdc distribute`` compiled its
    modules again, about 0.2 s of CPU (docs/benchmarks.md, "Fleet")."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(directory)
    print(f"  bytecode cached in {directory} (--source: compile at every start)")


def measure(args: argparse.Namespace) -> int:
    if args.part in ("direct", "both"):
        count = args.nodes or (20 if args.quick else 100)
        with workdir("krs-bench-fleet-", args.keep) as root:
            measure_direct(root, count, args.runs or (3 if args.quick else 10))
    if args.part in ("secondaries", "both"):
        count = args.nodes or (100 if args.quick else 1000)
        with workdir("krs-bench-hidden-", args.keep) as root:
            measure_hidden(root, count, args.runs or (1 if args.quick else 3))
    print("percentiles are nearest-rank over the runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
