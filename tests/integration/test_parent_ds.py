"""Seeing and pushing the child's DS against a real parent (issue 23): the lab parent
(krs_lab/parent.py: Knot signing lab.example. and taking TSIG UPDATEs, an NSD secondary held
back), a forging/refusing authoritative server run here on loopback, and Unbound for discovery.

What it shows: a DS pushed by UPDATE is seen validated on the primary and not on the held-back
secondary until it is released; a forged DS, a forged "no DS" or a wrong trust anchor are
errors for that address only, never a DS set; refusing, non-authoritative and closed addresses
are named; a wrong TSIG secret changes nothing; the hook gets the lines and its failure is
reported; the parent's servers are found through a validating resolver.
"""

from __future__ import annotations

import socketserver
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.DS
import pytest

from krs_lab.multisigner import MultiSigner, UnboundLab
from krs_lab.parent import CHILD, PARENT, LabParent
from krs_lab.ports import free_port
from krs_lab.process import server_binary
from krs_plugin.kdc.dspush import PushConfig, push_ds
from krs_plugin.kdc.parent import ParentConfig, ds_step_state, ds_tuples, largest_ttl, observe

pytestmark = pytest.mark.skipif(
    any(server_binary(b) is None for b in ("knotd", "nsd")),
    reason="needs knotd and nsd (./run setup)",
)

NEW = f"{CHILD} IN DS 12345 13 2 {'ab' * 32}"
OLD = f"{CHILD} IN DS 54321 13 2 {'cd' * 32}"


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabParent]:
    lab = LabParent(tmp_path_factory.mktemp("parent"))
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def config(parent: LabParent, *agents: str) -> ParentConfig:
    return ParentConfig(agents=agents or parent.addresses, trust_anchor=parent.trust_anchor)


def push(parent: LabParent, *lines: str, secret_file: Path | None = None) -> str:
    done = push_ds(
        CHILD,
        lines,
        PushConfig(update=parent.primary, tsig_file=str(secret_file or parent.tsig_file)),
        ttl=120,
    )
    return ("ok: " if done.ok else "failed: ") + done.detail


def rdata(line: str) -> str:
    return line.split(" DS ")[1]


# --- an authoritative server that lies ---------------------------------------------------


class FakeAuthority:
    """A TCP DNS server on 127.0.0.1 that answers ``change(query, real answer)``: the real
    answer comes from ``upstream`` (the lab's primary), so DNSKEY queries stay genuine."""

    def __init__(
        self, upstream: str, change: Callable[[dns.message.Message], dns.message.Message | None]
    ) -> None:
        host, port = upstream.rsplit(":", 1)
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                (length,) = struct.unpack("!H", self.request.recv(2))
                wire = b""
                while len(wire) < length:
                    wire += self.request.recv(length - len(wire))
                query = dns.message.from_wire(wire)
                if query.question[0].rdtype == dns.rdatatype.DS:
                    real = dns.query.tcp(query, host, port=int(port), timeout=3)
                    answer = fake.change(real) or real
                else:
                    answer = dns.query.tcp(query, host, port=int(port), timeout=3)
                out = answer.to_wire()
                self.request.sendall(struct.pack("!H", len(out)) + out)

        self.change = change
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def forge_digest(reply: dns.message.Message) -> None:
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.DS:
            records = list(rrset)
            rrset.clear()
            for r in records:
                assert isinstance(r, dns.rdtypes.ANY.DS.DS)
                digest = bytes([r.digest[0] ^ 1]) + r.digest[1:]
                rrset.add(r.replace(digest=digest))


def drop_answer(reply: dns.message.Message) -> None:
    """A forged "the DS is gone": NOERROR, no DS, no NSEC proof."""
    reply.answer = []
    reply.authority = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]


def strip_signatures(reply: dns.message.Message) -> None:
    reply.answer = [r for r in reply.answer if r.rdtype != dns.rdatatype.RRSIG]


def refuse(reply: dns.message.Message) -> dns.message.Message:
    reply.set_rcode(dns.rcode.REFUSED)
    reply.answer, reply.authority = [], []
    return reply


def not_authoritative(reply: dns.message.Message) -> None:
    reply.flags &= ~dns.flags.AA


@pytest.fixture
def fake(parent: LabParent) -> Iterator[Callable[..., FakeAuthority]]:
    made: list[FakeAuthority] = []

    def make(change: Callable[[dns.message.Message], dns.message.Message | None]) -> FakeAuthority:
        made.append(FakeAuthority(parent.primary, change))
        return made[-1]

    yield make
    for server in made:
        server.close()


# --- the tests ---------------------------------------------------------------------------


def test_push_is_seen_on_the_primary_and_on_the_secondary_only_once_released(
    parent: LabParent,
) -> None:
    assert push(parent, OLD) == f"ok: UPDATE to {parent.primary} NOERROR (1 DS)"
    parent.release()
    view = observe(CHILD, config(parent))
    assert view.parent == PARENT and view.error is None
    assert [a.ds for a in view.addresses] == [frozenset(ds_tuples([OLD]))] * 2
    assert [a.ttl for a in view.addresses] == [120, 120]

    assert push(parent, NEW, OLD) == f"ok: UPDATE to {parent.primary} NOERROR (2 DS)"
    parent.wait_signed_ds(parent.primary, {rdata(NEW), rdata(OLD)})
    assert push(parent, NEW) == f"ok: UPDATE to {parent.primary} NOERROR (1 DS)"
    parent.wait_signed_ds(parent.primary, {rdata(NEW)})
    view = observe(CHILD, config(parent))
    primary, secondary = view.addresses
    assert primary.ds == frozenset(ds_tuples([NEW])) and primary.error is None
    assert secondary.ds == frozenset(ds_tuples([OLD])) and secondary.error is None
    seen, gone, why = ds_step_state(view, ds_tuples([NEW]), ds_tuples([OLD]))
    assert (seen, gone) == (False, False)
    assert why == (
        f"new DS 12345/13/2 not yet at {parent.secondary}; "
        f"old DS 54321/13/2 still at {parent.secondary}"
    )

    parent.release()
    view = observe(CHILD, config(parent))
    assert ds_step_state(view, ds_tuples([NEW]), ds_tuples([OLD]))[:2] == (True, True)
    assert largest_ttl(view) == 120


def test_absence_is_validated_by_nsec(parent: LabParent) -> None:
    """No DS at a delegation (NODATA, an NSEC at the child) and a name that does not exist
    (NXDOMAIN, NSECs covering it and the wildcard) are validated absences."""
    view = observe(f"nosuch.{PARENT}", config(parent))
    assert [(a.ds, a.error) for a in view.addresses] == [(frozenset(), None)] * 2
    assert push(parent, NEW).startswith("ok")
    parent.release()
    view = observe(CHILD, config(parent, parent.primary))
    assert view.addresses[0].ds == frozenset(ds_tuples([NEW]))


@pytest.mark.parametrize("denial", ["nsec3", "nsec3-opt-out"])
def test_absence_is_validated_by_nsec3(tmp_path: Path, denial: str) -> None:
    """The same with NSEC3: a matching NSEC3 at the delegation, or (opt-out: the insecure
    delegation has none) the closest encloser proof with an opt-out NSEC3 covering the next
    closer name; NXDOMAIN by the closest encloser proof and a covered wildcard."""
    lab = LabParent(tmp_path / "parent", denial=denial)
    try:
        lab.start()
        for zone in (CHILD, f"nosuch.{PARENT}", f"deeper.nosuch.{PARENT}"):
            view = observe(zone, config(lab))
            assert [(a.ds, a.error) for a in view.addresses] == [(frozenset(), None)] * 2, zone
        assert push(lab, NEW).startswith("ok")
        lab.wait_signed_ds(lab.primary, {rdata(NEW)})
        view = observe(CHILD, config(lab, lab.primary))
        assert view.addresses[0].ds == frozenset(ds_tuples([NEW]))
    finally:
        lab.close()


def test_forged_answers_and_a_wrong_anchor_are_bogus_for_that_address_only(
    parent: LabParent, fake: Callable[..., FakeAuthority]
) -> None:
    assert push(parent, NEW).startswith("ok")
    parent.release()
    parent.wait_signed_ds(parent.primary, {rdata(NEW)})
    forged, gone = fake(forge_digest), fake(drop_answer)
    view = observe(CHILD, config(parent, parent.primary, forged.address, gone.address))
    good, bad, empty = view.addresses
    assert good.ds == frozenset(ds_tuples([NEW])) and good.error is None
    assert bad.ds is None and bad.error is not None
    assert bad.error.startswith("bogus signature over the DS RRset (RRSIG ")
    assert empty.ds is None
    assert empty.error == "absence not validated: no NSEC or NSEC3 in the negative answer"
    seen, gone_old, why = ds_step_state(view, ds_tuples([NEW]), set())
    assert not seen and not gone_old
    assert forged.address in why and parent.primary not in why

    unsigned = fake(strip_signatures)
    (view_unsigned,) = observe(CHILD, config(parent, unsigned.address)).addresses
    assert view_unsigned.error == "no RRSIG over the DS RRset"

    # Signatures checked at a time after they expire: bogus, not absent.
    late = observe(CHILD, config(parent, parent.primary), now=2**31)
    error = late.addresses[0].error
    assert error is not None and error.startswith("bogus signature over the parent DNSKEY RRset")

    wrong = ParentConfig(
        agents=parent.addresses,
        trust_anchor=f"{PARENT} IN DS 20138 13 2 {'00' * 32}",
    )
    view = observe(CHILD, wrong)
    assert [a.error for a in view.addresses] == [
        "unknown parent key: no DNSKEY served matches the trust anchor"
    ] * 2


def test_refusing_lame_and_closed_addresses_are_named(
    parent: LabParent, fake: Callable[..., FakeAuthority]
) -> None:
    refusing, lame = fake(refuse), fake(not_authoritative)
    closed = f"127.0.0.1:{free_port()}"
    view = observe(
        CHILD, config(parent, parent.primary, refusing.address, lame.address, closed), timeout=3
    )
    errors = {a.address: a.error for a in view.addresses}
    assert errors == {
        parent.primary: None,
        refusing.address: "refused",
        lame.address: "not authoritative (no AA)",
        closed: "parent DNSKEY: connection refused",
    }


def test_wrong_tsig_secret_is_refused_and_changes_nothing(
    parent: LabParent, tmp_path: Path
) -> None:
    assert push(parent, NEW).startswith("ok")
    parent.release()
    serial = parent.serial_at(parent.primary)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(parent.tsig_file.read_text().replace('secret "', 'secret "AAAA', 1))
    wrong.chmod(stat.S_IRUSR | stat.S_IWUSR)
    detail = push(parent, OLD, secret_file=wrong)
    assert detail == f"failed: TSIG: BADSIG (from {parent.primary}: the key's secret differs)"
    assert "AAAA" not in detail
    assert parent.ds_at(parent.primary) == {rdata(NEW)}
    assert parent.serial_at(parent.primary) == serial


def test_update_outside_the_child_delegation_is_refused(parent: LabParent) -> None:
    done = push_ds(
        f"other.{PARENT}",
        [f"other.{PARENT} IN DS 1 13 2 {'ef' * 32}"],
        PushConfig(update=parent.primary, tsig_file=str(parent.tsig_file), parent_zone=PARENT),
    )
    # Knot 3.2 answers an update its ACL denies with NOTAUTH and the TSIG error BADKEY; Knot 3.4
    # (Debian 13) answers it unsigned. Either way the message names the key and the cause.
    assert not done.ok
    cause = f"(from {parent.primary}: key ds-push. is unknown there or not allowed this update)"
    assert done.detail in (f"TSIG: BADKEY {cause}", f"TSIG: unsigned answer {cause}")
    assert parent.ds_at(parent.primary, f"other.{PARENT}") == set()


def test_the_hook_gets_the_lines_and_its_failure_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "got"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(out)!r}, 'w').write(os.environ['KRS_ZONE'] + '\\n' + sys.stdin.read())\n"
        "sys.stderr.write('registrar says no\\n' * 3)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    hook = f"{sys.executable} {script}"
    done = push_ds(CHILD, [NEW, OLD], PushConfig(hook=f"{hook} 0"), ttl=300)
    assert done.ok and done.detail == "hook exited 0 (2 DS)"
    assert out.read_text() == (
        f"{CHILD}\n{CHILD} 300 IN DS {rdata(NEW)}\n{CHILD} 300 IN DS {rdata(OLD)}\n"
    )
    done = push_ds(CHILD, [NEW], PushConfig(hook=f"{hook} 3"))
    assert not done.ok
    assert done.detail == "hook exited 3: " + "\n".join(["registrar says no"] * 3)
    done = push_ds(CHILD, [NEW], PushConfig(hook=f"{tmp_path}/absent"))
    assert done.detail.startswith("hook not run: ")
    done = push_ds(CHILD, [NEW], PushConfig(hook="sleep 5", timeout=0.5))
    assert done.detail == "hook timed out after 0.5s: sleep"


@pytest.mark.skipif(server_binary("unbound") is None, reason="needs unbound")
def test_the_parent_servers_are_found_through_a_validating_resolver(
    parent: LabParent, tmp_path: Path, fake: Callable[..., FakeAuthority]
) -> None:
    assert push(parent, NEW).startswith("ok")
    parent.release()
    validating = UnboundLab(
        tmp_path / "validating", parent.trust_anchor, {PARENT: [("127.0.0.1", parent.port)]}, 1
    )
    # Unbound with an anchor for an unrelated zone: lab.example. is insecure to it, no AD.
    blind = UnboundLab(
        tmp_path / "blind",
        f"elsewhere.example. IN DS 1 13 2 {'00' * 32}",
        {PARENT: [("127.0.0.1", parent.port)]},
        1,
    )
    try:
        validating.start()
        blind.start()
        view = observe(
            CHILD, ParentConfig(resolver=f"127.0.0.1:{validating.port}", port=parent.port)
        )
        assert view.parent == PARENT and view.error is None
        assert [(a.address, a.server, a.error) for a in view.addresses] == [
            (parent.primary, f"ns1.{PARENT}", None),
            (parent.secondary, f"ns2.{PARENT}", None),
        ]
        assert {a.ds for a in view.addresses} == {frozenset(ds_tuples([NEW]))}

        # Agents validated through the resolver's DNSKEY set: a forger is still bogus.
        forged = fake(forge_digest)
        agents = (parent.primary, forged.address)
        view = observe(CHILD, ParentConfig(agents, resolver=f"127.0.0.1:{validating.port}"))
        assert view.addresses[0].error is None
        assert (view.addresses[1].error or "").startswith("bogus signature over the DS RRset")

        view = observe(CHILD, ParentConfig(resolver=f"127.0.0.1:{blind.port}", port=parent.port))
        assert view.error is not None and "without AD" in view.error
        assert all(a.ds is None for a in view.addresses)
    finally:
        validating.stop()
        blind.stop()


def test_nothing_to_validate_with_is_a_view_error() -> None:
    view = observe(CHILD, ParentConfig(agents=("127.0.0.1:53",)))
    assert view.error == "cannot validate: no trust anchor for the parent and no resolver"
    assert view.addresses == ()


@pytest.mark.skipif(
    any(server_binary(b) is None for b in ("named", "pdns_server", "unbound")),
    reason="needs named, pdns_server and unbound (./run setup)",
)
def test_the_multisigner_lab_runs_on_the_pushable_parent(tmp_path: Path) -> None:
    """The child's first DS pushed by UPDATE makes the delegation secure for Unbound; a new DS
    pushed while the secondary is held shows the lag in the DS step's words."""
    lab = MultiSigner(tmp_path, pushable_parent=True)
    try:
        lab.start()  # waits until Unbound validates the child through the pushed DS
        assert lab.resolve(want_ad=True).flags & dns.flags.AD
        first = ds_tuples(lab.child_ds())
        view = observe(CHILD, lab.parent_config())
        assert [a.ds for a in view.addresses] == [frozenset(first)] * 2

        extra = f"{CHILD} IN DS 4242 13 2 {'42' * 32}"
        lab.set_ds([*lab.child_ds(), extra], release=False)
        seen, gone, why = ds_step_state(
            observe(CHILD, lab.parent_config()), ds_tuples([extra]), first
        )
        assert lab.lab_parent is not None
        assert (seen, gone) == (False, False)
        assert why.startswith(f"new DS 4242/13/2 not yet at {lab.lab_parent.secondary}; old DS")
        lab.lab_parent.release()
        seen, gone, _ = ds_step_state(
            observe(CHILD, lab.parent_config()), ds_tuples([extra]), first
        )
        assert (seen, gone) == (True, False)
    finally:
        lab.close()
