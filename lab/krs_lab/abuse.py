"""Malformed DNS messages and rude clients, for the listener fuzz targets
(tests/unit/test_listener_fuzz.py) and the abuse harness (benchmarks/listener_abuse.py).

Every message is a seeded mutation of a valid one, so a run with the same seed sends the same
bytes, and a failure names the seed and the message number that found it. Over TCP the client
also lies about lengths, stops half-way and sends several messages at once. Loopback only.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence


def _flip_bits(rng: random.Random, wire: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        if wire:
            wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
    return wire


def _random_bytes(rng: random.Random, wire: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        if wire:
            wire[rng.randrange(len(wire))] = rng.randrange(256)
    return wire


def _truncate(rng: random.Random, wire: bytearray) -> bytearray:
    return wire[: rng.randrange(len(wire))] if wire else wire


def _extend(rng: random.Random, wire: bytearray) -> bytearray:
    return wire + rng.randbytes(rng.randint(1, 64))


def _counts(rng: random.Random, wire: bytearray) -> bytearray:
    """Section counts that lie: small, large or all ones."""
    if len(wire) >= 12:
        slot = 4 + 2 * rng.randrange(4)
        value = rng.choice((0, 1, 2, rng.randrange(256), rng.randrange(65536), 0xFFFF))
        wire[slot : slot + 2] = struct.pack("!H", value)
    return wire


def _header(rng: random.Random, wire: bytearray) -> bytearray:
    """Another opcode, QR, TC, RD, Z or rcode bits."""
    if len(wire) >= 4:
        wire[2] = rng.randrange(256)
        wire[3] = rng.randrange(256)
    return wire


def _splice(rng: random.Random, wire: bytearray) -> bytearray:
    if len(wire) < 2:
        return wire
    start = rng.randrange(len(wire))
    piece = wire[start : start + rng.randint(1, 40)]
    at = rng.randrange(len(wire))
    return wire[:at] + piece + wire[at:]


def _noise(rng: random.Random, wire: bytearray) -> bytearray:
    return bytearray(rng.randbytes(rng.choice((0, 1, 11, 12, rng.randrange(700)))))


def _pointer(rng: random.Random, wire: bytearray) -> bytearray:
    """A compression pointer somewhere past the header, to itself, forward or backward."""
    if len(wire) > 14:
        at = rng.randrange(12, len(wire) - 1)
        target = rng.choice((at, 12, rng.randrange(len(wire) + 64)))
        wire[at : at + 2] = struct.pack("!H", 0xC000 | (target & 0x3FFF))
    return wire


def _questions(rng: random.Random, wire: bytearray) -> bytearray:
    """The question repeated up to 120 times (a 623-byte query with 100 questions was one)."""
    if len(wire) <= 12:
        return wire
    end = wire.find(b"\x00", 12)
    if end < 0 or end + 5 > len(wire):
        return wire
    question = wire[12 : end + 5]
    count = rng.choice((0, 2, 100, rng.randint(2, 120)))
    return wire[:4] + struct.pack("!HHHH", count, 0, 0, 0) + question * count


def _label(rng: random.Random, wire: bytearray) -> bytearray:
    """A label length past the end of the name, or one of the two reserved label types."""
    if len(wire) > 12:
        wire[12 + rng.randrange(min(40, len(wire) - 12))] = rng.choice((63, 64, 0x40, 0x80, 255))
    return wire


def _edns(rng: random.Random, wire: bytearray) -> bytearray:
    """An OPT record with odd sizes and options appended (ARCOUNT raised to count it)."""
    if len(wire) < 12:
        return wire
    options = rng.randbytes(rng.randrange(80))
    opt = b"\x00" + struct.pack(
        "!HHIH", 41, rng.randrange(65536), rng.getrandbits(32), len(options)
    )
    (arcount,) = struct.unpack("!H", wire[10:12])
    wire[10:12] = struct.pack("!H", (arcount + 1) & 0xFFFF)
    return wire + opt + options


MUTATIONS: tuple[Callable[[random.Random, bytearray], bytearray], ...] = (
    _flip_bits, _random_bytes, _truncate, _extend, _counts, _header, _splice, _noise, _pointer,
    _questions, _label, _edns,
)  # fmt: skip


def mutate(rng: random.Random, wire: bytes) -> bytes:
    """One to three mutations of ``wire``."""
    out = bytearray(wire)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        out = rng.choice(MUTATIONS)(rng, out)
    return bytes(out[:65535])


def malformed(rng: random.Random, seeds: Sequence[bytes], count: int) -> Iterator[bytes]:
    """``count`` mutations of messages drawn from ``seeds``."""
    for _ in range(count):
        yield mutate(rng, rng.choice(seeds))


def send_udp(port: int, wires: Sequence[bytes], host: str = "127.0.0.1") -> int:
    """Send ``wires`` as datagrams, paced so loopback does not drop most of them; read and
    discard what comes back. Returns the number of answers seen."""
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n, wire in enumerate(wires):
            sock.sendto(wire, (host, port))
            if n % 25 == 24:
                time.sleep(0.002)
            answers += _drain(sock)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            got = _drain(sock)
            answers += got
            if not got:
                time.sleep(0.01)
    return answers


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return n
        n += 1


def send_tcp(
    rng: random.Random,
    port: int,
    wires: Sequence[bytes],
    per_connection: int = 8,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
) -> None:
    """Send ``wires`` over TCP, ``per_connection`` to a connection, each length-prefixed (the
    prefix sometimes a lie, the last message sometimes cut short), all at once or one by one;
    then read until the server closes or ``timeout``."""
    for start in range(0, len(wires), per_connection):
        batch = wires[start : start + per_connection]
        stream = bytearray()
        for wire in batch:
            length = len(wire)
            style = rng.randrange(20)
            if style == 0:
                length = rng.randrange(65536)  # more or less than follows
            stream += struct.pack("!H", length) + wire
        if rng.randrange(10) == 0:
            stream = stream[: rng.randrange(len(stream) + 1)]  # the client gives up mid-message
        with socket.create_connection((host, port), timeout=timeout) as sock:
            try:
                if rng.randrange(2):
                    sock.sendall(stream)
                else:
                    for at in range(0, len(stream), 97):
                        sock.sendall(stream[at : at + 97])
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65535):
                    pass
            except OSError:
                pass  # the server closed first (it may, after a message it does not answer)


class IdleConnections:
    """``count`` TCP connections to ``port`` that never send a whole message, kept open: every
    ``interval`` seconds those the server closed are opened again (an attacker holding a
    listener's descriptors, as in issue 20, finding 7). Connections are opened without waiting
    (the kernel retries a SYN the server's full backlog dropped), so ``count`` are always open or
    on their way. A thread of its own until ``close``."""

    def __init__(
        self, port: int, count: int, host: str = "127.0.0.1", interval: float = 0.5
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.interval = interval
        self.opened = 0
        self.closed_by_server = 0
        self.failed = 0  # connects refused or reset before they were established
        self.sockets: list[socket.socket] = []
        self.connecting: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            alive = []
            for sock in self.sockets:
                try:
                    gone = sock.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self.closed_by_server += 1
                    sock.close()
                else:
                    alive.append(sock)
            alive += self._established()
            while len(alive) + len(self.connecting) < self.count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex(self.address)
                self.connecting.append(sock)
            self.sockets = alive
            self._stop.wait(self.interval)

    def _established(self) -> list[socket.socket]:
        """The connections whose handshake completed since the last look."""
        poll = select.poll()
        by_fd = {sock.fileno(): sock for sock in self.connecting}
        for fd in by_fd:
            poll.register(fd, select.POLLOUT)
        done = []
        for fd, _ in poll.poll(0):
            sock = by_fd[fd]
            self.connecting.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.failed += 1
                sock.close()
            else:
                # Half a length prefix: never a complete message, but a connection the server's
                # full backlog dropped (SYN cookies) is established on its side too.
                with contextlib.suppress(OSError):
                    sock.send(b"\x00")
                self.opened += 1
                done.append(sock)
        return done

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets + self.connecting:
            sock.close()
