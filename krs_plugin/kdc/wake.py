"""Waking ``krs-kdc serve`` at once when another process changed kdc.db (issue 24).

``krs-kdc distribute`` is a process of its own: it writes the distribution into kdc.db and
exits, and ``serve`` used to see it only at its next look for pending distributions (every
``ServeOptions.tick``, 0.5 s), a wait every distribution paid. Now ``serve`` records where it
listens in kdc.db (meta ``serve_listen``) and ``distribute`` sends it, once committed, a NOTIFY
for the control-zone apex (QTYPE SOA, RFC 1996's form) over UDP from this host. ``serve`` takes
such a NOTIFY only from a local address (loopback, or an address it listens on), answers
NOERROR and runs its NOTIFY round at once. The tick stays as the fallback: a wake-up that is
lost (``serve`` not running, restarted on another port, the datagram dropped) only costs what
every distribution cost before.

Why a NOTIFY and not inotify on kdc.db's WAL: every write ``serve`` makes itself (each NOTIFY
recorded, each confirmation) changes the WAL too, so it would wake itself; a checkpoint
truncates the file under the watch; and each watch costs an inotify instance, of which a user
has ``fs.inotify.max_user_instances``. A NOTIFY says exactly "look now", costs one datagram, and
works wherever the CLI can reach ``serve``'s listener (docs/kdc.md, "Serve").
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype

from krs_plugin.kdc.store import Store

log = logging.getLogger(__name__)

LISTEN_META = "serve_listen"  # kdc.db meta: JSON list of [host, port] serve is bound to
WAKE_TIMEOUT = 0.25  # how long distribute waits for serve's answer (it never fails for it)
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def record_listen(store: Store, bound: Iterable[tuple[str, int]]) -> None:
    """Note in kdc.db where ``serve`` listens, so other commands can wake it. A kdc.db that
    takes no write (a full disk) does not stop ``serve``: the commands then wait for its tick."""
    try:
        store.set_meta(LISTEN_META, json.dumps([[host, port] for host, port in bound]))
    except Exception as exc:  # StateWriteError, sqlite3.Error: serving matters more
        log.warning("where serve listens is not recorded (wake-ups off, the tick remains): %s", exc)


def forget_listen(store: Store) -> None:
    """``serve`` stopped: no one to wake (best effort; a stale address only costs a datagram)."""
    with contextlib.suppress(Exception):
        store.set_meta(LISTEN_META, "[]")


def listen_addresses(store: Store) -> list[tuple[str, int]]:
    """Where ``serve`` said it listens, wildcard addresses turned into loopback."""
    text = store.get_meta(LISTEN_META)
    try:
        items = json.loads(text) if text else []
        return [(_ANY.get(str(host), str(host)), int(port)) for host, port in items]
    except (ValueError, TypeError):
        return []


def wake_message(origin: dns.name.Name | str) -> dns.message.Message:
    """A NOTIFY for the control-zone apex: "the zone changed, look now"."""
    message = dns.message.make_query(origin, dns.rdatatype.SOA)
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
    return message


def wake_serve(store: Store, timeout: float = WAKE_TIMEOUT) -> bool:
    """Tell a running ``serve`` that kdc.db changed; True when it answered. Never raises: the
    change is committed already and ``serve``'s tick finds it anyway."""
    origin = store.get_meta("control_zone")
    addresses = listen_addresses(store)
    if origin is None or not addresses:
        return False
    host, port = addresses[0]  # one listener is enough: they share one loop
    wire = wake_message(origin).to_wire()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.send(wire)
            reply = dns.message.from_wire(sock.recv(4096))
    except (OSError, dns.exception.DNSException) as exc:
        log.debug("no wake-up answer from serve at %s port %d: %s", host, port, exc)
        return False
    return reply.id == int.from_bytes(wire[:2], "big")


def is_wake(query: dns.message.Message, origin: dns.name.Name) -> bool:
    """A NOTIFY for the control-zone apex (what ``wake_serve`` sends)."""
    return (
        query.opcode() == dns.opcode.NOTIFY
        and len(query.question) == 1
        and query.question[0].name == origin
        and query.question[0].rdtype == dns.rdatatype.SOA
    )


def is_local(source: str, bound: Iterable[tuple[str, int]]) -> bool:
    """Whether ``source`` is this host: loopback, or an address ``serve`` listens on. Only
    those may wake it, so a remote sender cannot make it run rounds back to back."""
    try:
        if ipaddress.ip_address(source.split("%")[0]).is_loopback:
            return True
    except ValueError:
        return False
    return any(source == host for host, _ in bound)


class Wakeup:
    """What ``serve``'s NOTIFY round waits on: its tick, or a wake-up, whichever comes first.
    A wake-up during a round is kept, so the next wait returns at once and nothing is missed."""

    def __init__(self) -> None:
        import asyncio  # serve's alone: every distribute imports this module to wake serve

        self.event = asyncio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait(self, timeout: float) -> bool:
        """Until woken or ``timeout`` seconds; True when woken."""
        import asyncio

        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self.event.clear()
        return True
