"""Ask the running nameserver, over DNS, whether it serves and signs with the keys it should.

This is the only success signal the adapters trust (each server's guide in docs/servers/ says
why): ``rndc`` and friends exit 0 on failure, and a server given a mismatched key pair signs with
it happily. Every RRSIG counted here
is validated with dnspython against the served DNSKEY RRset.

What "should" means follows DNSSEC practice for a zone with split keys: the SOA is signed by every
active ZSK (by the active KSKs when there is no ZSK, i.e. a CSK), the DNSKEY RRset by every active
KSK (by the ZSKs when there is no KSK). Keys published but not yet active must be in the DNSKEY
RRset; removed keys must be gone; retired keys (published, past their inactive time) must sign
nothing: "retire" means the server stops signing with the key now, on every server alike. Keys
the KRS does not know about (another signer's, say) are neither required nor refused.

A key whose activate time has passed and that has no publish time signs without being published
(an algorithm rollover, RFC 6781 4.1.4: the new algorithm's keys before their DNSKEYs are
published, the old one's after theirs are removed; docs/adapters.md, "Signing unpublished"): its
DNSKEY must be absent, and its RRSIG over the SOA present (a ZSK, or a CSK of an algorithm
without an active ZSK), validated against the DNSKEY the adapter knows (``KeyState.dnskey``).
Whether such a KSK also signs the DNSKEY RRset is the server's choice (Knot does not): it is
neither required nor refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.adapters.base import Verification
from krs_plugin.adapters.cdsset import CdsSet
from krs_plugin.adapters.dnsbatch import NoAnswer, Question, query_many_reduced
from krs_plugin.dnssec import KeyTiming

KSK_FLAGS = 257


@dataclass(frozen=True)
class KeyState:
    key_tag: int
    flags: int
    timing: KeyTiming
    dnskey: DNSKEY | None = None
    """Needed only for a key that signs unpublished (``signs_unpublished``): its RRSIGs cannot be
    validated against the served DNSKEY RRset."""
    algorithm: int | None = None  # None: from ``dnskey`` when given


@dataclass(frozen=True)
class Expectation:
    zone: dns.name.Name
    present: frozenset[int]
    absent: frozenset[int]
    soa_signers: frozenset[int]
    dnskey_signers: frozenset[int]
    serial: int | None = None  # the SOA serial, when the adapter wrote it (NSD)
    retired: frozenset[int] = frozenset()  # published, no longer active: must not sign
    cds: CdsSet | None = None  # the CDS/CDNSKEY the zone must serve, signed; None: not checked
    hidden: tuple[DNSKEY, ...] = ()
    """The DNSKEYs of the keys that sign unpublished: their RRSIGs are validated against these."""

    def describe(self) -> str:
        hidden = sorted(dns.dnssec.key_id(k) for k in self.hidden)
        return (
            f"DNSKEY {sorted(self.present)} present, {sorted(self.absent)} absent; SOA signed by "
            f"{sorted(self.soa_signers)}, DNSKEY signed by {sorted(self.dnskey_signers)}"
            + (f"; {hidden} signing unpublished" if hidden else "")
            + (f"; {sorted(self.retired)} signing nothing" if self.retired else "")
            + (f"; {self.cds.describe()}" if self.cds is not None else "")
        )


def is_unpublished(timing: KeyTiming) -> bool:
    """Activate time and no publish time: the key is never published by the node, and signs
    while it is active (``signs_unpublished``). The KDC sends it so in an algorithm rollover."""
    return timing.publish is None and timing.activate is not None


def signs_unpublished(timing: KeyTiming, now: int) -> bool:
    """Signs the zone while its DNSKEY is not in the DNSKEY RRset: activate past, no publish
    time, not inactive yet, not deleted."""
    deleted = timing.delete is not None and timing.delete <= now
    return is_unpublished(timing) and is_active(timing, now) and not deleted


def is_published(timing: KeyTiming, now: int) -> bool:
    if timing.delete is not None and timing.delete <= now:
        return False
    if is_unpublished(timing) and timing.activate is not None and timing.activate <= now:
        return False
    return timing.publish is None or timing.publish <= now or is_active(timing, now)


def is_active(timing: KeyTiming, now: int) -> bool:
    if timing.inactive is not None and timing.inactive <= now:
        return False
    return timing.activate is not None and timing.activate <= now


def is_retired(timing: KeyTiming, now: int) -> bool:
    """Was active, is past its inactive time, and still published."""
    return (
        timing.activate is not None
        and timing.inactive is not None
        and timing.inactive <= now
        and is_published(timing, now)
    )


def expectation(
    zone: dns.name.Name, keys: Iterable[KeyState], removed: Iterable[int], now: int
) -> Expectation:
    """What the server must show for ``keys`` (with their timing) at ``now``."""
    keys = list(keys)
    present = {k.key_tag for k in keys if is_published(k.timing, now)}
    gone = {k.key_tag for k in keys if not is_published(k.timing, now)} | set(removed)
    active = [k for k in keys if is_active(k.timing, now)]
    hidden = [k for k in active if signs_unpublished(k.timing, now)]
    shown = [k for k in active if not is_unpublished(k.timing)]
    ksks = {k.key_tag for k in shown if k.flags == KSK_FLAGS}
    zsks = {k.key_tag for k in shown if k.flags != KSK_FLAGS}
    # An unpublished key signs the SOA when it is a ZSK, or a CSK (a KSK whose algorithm has no
    # active ZSK); the published keys keep the rule above.
    zsk_algorithms = {_algorithm(k) for k in active if k.flags != KSK_FLAGS}
    hidden_soa = {
        k.key_tag for k in hidden if k.flags != KSK_FLAGS or _algorithm(k) not in zsk_algorithms
    }
    if not shown:  # only unpublished keys sign: the rule above, on them
        hidden_zsks = {k.key_tag for k in hidden if k.flags != KSK_FLAGS}
        hidden_soa = hidden_zsks or {k.key_tag for k in hidden}
    return Expectation(
        zone,
        frozenset(present),
        frozenset(gone - present),
        frozenset((zsks or ksks) | hidden_soa),
        frozenset(ksks or zsks),
        retired=frozenset(k.key_tag for k in keys if is_retired(k.timing, now)),
        hidden=tuple(k.dnskey for k in hidden if k.dnskey is not None),
    )


def same_algorithm_unpublished(keys: Iterable[KeyState], now: int) -> list[tuple[int, int, int]]:
    """``(unpublished key, published key, algorithm)`` for each key that signs unpublished next
    to a published active key of its algorithm and role (or, a ZSK, next to a CSK of its
    algorithm). PowerDNS and ldns-signzone then sign the zone with the unpublished key in the
    published one's place, so validators find no usable RRSIG (measured, docs/lifecycle.md):
    an adapter for such a server refuses these."""
    keys = list(keys)
    shown = [k for k in keys if is_active(k.timing, now) and not signs_unpublished(k.timing, now)]
    out = []
    for hidden in (k for k in keys if signs_unpublished(k.timing, now)):
        algorithm = _algorithm(hidden)
        same = [k for k in shown if _algorithm(k) == algorithm]
        has_zsk = any(k.flags != KSK_FLAGS for k in same)
        for key in same:
            if key.flags == hidden.flags or (hidden.flags != KSK_FLAGS and not has_zsk):
                out.append((hidden.key_tag, key.key_tag, algorithm or 0))
    return out


def same_algorithm_refusal(conflicts: Iterable[tuple[int, int, int]], server: str) -> str:
    """The refusal of ``same_algorithm_unpublished``'s conflicts, for an AdapterError."""
    text = "; ".join(
        f"key {hidden} would sign unpublished with the same algorithm ({algorithm}) and role as "
        f"published key {shown}"
        for hidden, shown, algorithm in conflicts
    )
    return (
        f"{text}: {server} would sign the zone with the unpublished key in place of the "
        "published one, whose DNSKEY validators see, so the zone would be bogus; signing "
        "unpublished is for an algorithm rollover only (a new algorithm's keys, or the old "
        "one's after its DNSKEYs are removed)"
    )


def _algorithm(key: KeyState) -> int | None:
    if key.algorithm is not None:
        return key.algorithm
    return int(key.dnskey.algorithm) if key.dnskey is not None else None


def with_hidden(keys: dns.rrset.RRset, hidden: Iterable[DNSKEY]) -> dns.rrset.RRset:
    """The served DNSKEY RRset and the DNSKEYs of the keys that sign unpublished: what their
    RRSIGs are validated against."""
    hidden = list(hidden)
    if not hidden:
        return keys
    both = dns.rrset.RRset(keys.name, keys.rdclass, keys.rdtype)
    both.update(keys)
    for key in hidden:
        both.add(key, keys.ttl)
    return both


def _query(
    zone: dns.name.Name, rdtype: dns.rdatatype.RdataType, host: str, port: int, timeout: float
) -> tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]:
    query = dns.message.make_query(zone, rdtype, want_dnssec=True)
    query.flags = 0  # RD off: an authoritative question
    reply = dns.query.tcp(query, host, port=port, timeout=timeout)
    rrset = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, rdtype)
    sigs = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
    return rrset, sigs


def _valid_signers(
    rrset: dns.rrset.RRset | None,
    sigs: dns.rrset.RRset | None,
    keys: dns.rrset.RRset,
    zone: dns.name.Name,
) -> set[int]:
    if rrset is None or sigs is None:
        return set()
    valid = set()
    for sig in sigs:
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {zone: keys})
        except dns.exception.ValidationFailure:
            continue
        valid.add(sig.key_tag)
    return valid


Signers = Callable[
    [dns.rrset.RRset | None, dns.rrset.RRset | None, dns.rrset.RRset, dns.name.Name], set[int]
]
"""``_valid_signers``, or a ``_SignersOnce`` that remembers what it found."""


class _SignersOnce:
    """``_valid_signers``, each RRset's RRSIGs validated once for one chunk of a batch's look:
    the verification (``_judge``) and the served state kept for the confirmation (``Kept``)
    read the same answers, and validated each RRSIG twice (about 0.5 ms of CPU a zone). Keyed
    by the objects, which are held here so that no other object takes their id meanwhile."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int, int], tuple[object, object, object, set[int]]] = {}

    def __call__(
        self,
        rrset: dns.rrset.RRset | None,
        sigs: dns.rrset.RRset | None,
        keys: dns.rrset.RRset,
        zone: dns.name.Name,
    ) -> set[int]:
        key = (id(rrset), id(sigs), id(keys))
        found = self.seen.get(key)
        if found is None:
            found = (rrset, sigs, keys, _valid_signers(rrset, sigs, keys, zone))
            self.seen[key] = found
        return set(found[3])


Answer = tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]
Getter = Callable[[dns.rdatatype.RdataType], Answer]
"""The RRset of one type at the zone's apex and its RRSIGs; raises when the server did not
answer (OSError, EOFError or a DNSException)."""
NO_ANSWER = (OSError, EOFError, dns.exception.DNSException)


def check_served(expect: Expectation, host: str, port: int, timeout: float = 3.0) -> Verification:
    """One look at the server: does it match ``expect``? Details name each difference."""

    def get(rdtype: dns.rdatatype.RdataType) -> Answer:
        return _query(expect.zone, rdtype, host, port, timeout)

    return _judge(expect, get, host, port)


def _judge(
    expect: Expectation, get: Getter, host: str, port: int, signers: Signers = _valid_signers
) -> Verification:
    """``expect`` against what ``get`` reads; the same judgement for one zone asked alone and
    for many asked at once."""
    zone = expect.zone
    try:
        dnskey, dnskey_sigs = get(dns.rdatatype.DNSKEY)
        soa, soa_sigs = get(dns.rdatatype.SOA)
    except NO_ANSWER as exc:
        return Verification(False, (f"{zone}: no answer from {host} port {port}: {exc}",))
    details = []
    if expect.serial is not None:
        serial = soa[0].serial if soa is not None else None
        if serial != expect.serial:
            details.append(f"{zone}: SOA serial {serial} served, {expect.serial} expected")
    if dnskey is None:
        if expect.present:
            details.append(f"{zone}: DNSKEY {sorted(expect.present)} not served (no DNSKEY RRset)")
        return Verification(not details, tuple(details))
    served = {dns.dnssec.key_id(k) for k in dnskey}
    if expect.present - served:
        details.append(f"{zone}: DNSKEY {sorted(expect.present - served)} not served")
    if expect.absent & served:
        details.append(f"{zone}: DNSKEY {sorted(expect.absent & served)} still served")
    known = with_hidden(dnskey, expect.hidden)
    for what, rrset, sigs, wanted in (
        ("SOA", soa, soa_sigs, expect.soa_signers),
        ("DNSKEY", dnskey, dnskey_sigs, expect.dnskey_signers),
    ):
        valid = signers(rrset, sigs, known, zone)
        if wanted - valid:
            details.append(f"{zone}: {what} has no valid RRSIG by key(s) {sorted(wanted - valid)}")
        if expect.retired & valid:
            details.append(
                f"{zone}: {what} still signed by retired key(s) {sorted(expect.retired & valid)}"
            )
    if expect.cds is not None:
        try:
            details += _cds_differences(expect, dnskey, get)
        except NO_ANSWER as exc:
            details.append(f"{zone}: no answer for CDS/CDNSKEY from {host} port {port}: {exc}")
    return Verification(not details, tuple(details))


def _cds_differences(expect: Expectation, dnskey: dns.rrset.RRset, get: Getter) -> list[str]:
    """How the served CDS and CDNSKEY RRsets differ from ``expect.cds``: other entries, or no
    valid RRSIG by the keys that sign the DNSKEY RRset (or, for a signer that signs them as
    zone data, by the keys that sign the SOA)."""
    assert expect.cds is not None
    zone, details = expect.zone, []
    for what, rdtype, want in (
        ("CDS", dns.rdatatype.CDS, expect.cds.cds),
        ("CDNSKEY", dns.rdatatype.CDNSKEY, expect.cds.cdnskey),
    ):
        rrset, sigs = get(rdtype)
        served = frozenset(_cds_entries(rrset, rdtype))
        if served != want:
            details.append(
                f"{zone}: {what} {sorted(served) or 'none'} served, {sorted(want) or 'none'} "
                "expected"
            )
            continue
        if rrset is None:
            continue
        valid = _valid_signers(rrset, sigs, dnskey, zone)
        signers = [s for s in (expect.dnskey_signers, expect.soa_signers) if s]
        if not valid or (signers and not any(s <= valid for s in signers)):
            details.append(
                f"{zone}: {what} has no valid RRSIG by {sorted(expect.dnskey_signers)} "
                f"(valid: {sorted(valid)})"
            )
    return details


def _cds_entries(rrset: dns.rrset.RRset | None, rdtype: int) -> list[tuple[int, int, int]]:
    """``[tag, algorithm, digest type]`` per CDS, ``[tag, algorithm, flags]`` per CDNSKEY."""
    if rrset is None:
        return []
    if rdtype == dns.rdatatype.CDS:
        return [(r.key_tag, int(r.algorithm), r.digest_type) for r in rrset]
    return [(dns.dnssec.key_id(k), int(k.algorithm), k.flags) for k in rrset]


def wait_served(
    expect: Expectation, host: str, port: int, *, timeout: float, interval: float = 0.05
) -> Verification:
    """Poll until the server matches ``expect`` or ``timeout`` passes; the last look's result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check_served(expect, host, port)
        if result.ok or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def read_served(
    zone: dns.name.Name,
    host: str,
    port: int,
    timeout: float = 3.0,
    hidden: Iterable[DNSKEY] = (),
) -> dict[str, object]:
    """What the server serves for ``zone`` now, for the confirmation (docs/protocol.md section
    6, ``served``): the DNSKEY RRset (``[tag, algorithm, flags]``) and its TTL, the key tags whose
    RRSIGs over the DNSKEY RRset and over the SOA validate, the SOA serial, TTL and minimum, the
    inception and expiration of the SOA's RRSIGs (earliest expiration, latest inception), CDS
    (``[tag, algorithm, digest type]``) and CDNSKEY when served, and ``read_at`` (Unix seconds).
    One query set over TCP; a server that does not answer gives ``error`` instead of the data.
    ``hidden``: the DNSKEYs of keys that sign unpublished, so that their valid RRSIGs are among
    the signers reported (they are not in ``dnskey``)."""
    read_at = int(time.time())

    def get(rdtype: dns.rdatatype.RdataType) -> Answer:
        return _query(zone, rdtype, host, port, timeout)

    return _served_state(zone, read_at, get, hidden, host)


SERVED_TYPES = (
    dns.rdatatype.DNSKEY,
    dns.rdatatype.SOA,
    dns.rdatatype.CDS,
    dns.rdatatype.CDNSKEY,
)
"""What ``read_served`` asks for each zone."""


def _served_state(
    zone: dns.name.Name,
    read_at: int,
    get: Getter,
    hidden: Iterable[DNSKEY],
    host: str,
    signers: Signers = _valid_signers,
) -> dict[str, object]:
    """``read_served``'s data from what ``get`` reads (one zone alone, or many at once)."""
    name = zone.to_text()
    try:
        dnskey, dnskey_sigs = get(dns.rdatatype.DNSKEY)
        soa, soa_sigs = get(dns.rdatatype.SOA)
        cds, _ = get(dns.rdatatype.CDS)
        cdnskey, _ = get(dns.rdatatype.CDNSKEY)
    except NO_ANSWER as exc:
        return {"zone": name, "read_at": read_at, "error": f"no answer from {host}: {exc}"[:200]}
    state: dict[str, object] = {"zone": name, "read_at": read_at}
    if soa is not None:
        state.update(soa_serial=soa[0].serial, soa_ttl=soa.ttl, soa_minimum=soa[0].minimum)
    if soa_sigs is not None and len(soa_sigs):
        state["soa_rrsig_inception"] = max(s.inception for s in soa_sigs)
        state["soa_rrsig_expiration"] = min(s.expiration for s in soa_sigs)
    if dnskey is not None:
        state["dnskey"] = sorted([dns.dnssec.key_id(k), int(k.algorithm), k.flags] for k in dnskey)
        state["dnskey_ttl"] = dnskey.ttl
        known = with_hidden(dnskey, hidden)
        state["dnskey_signers"] = sorted(signers(dnskey, dnskey_sigs, known, zone))
        state["soa_signers"] = sorted(signers(soa, soa_sigs, known, zone))
    else:
        state.update(dnskey=[], dnskey_signers=[], soa_signers=[])
    if cds is not None:
        state["cds"] = sorted(list(e) for e in _cds_entries(cds, dns.rdatatype.CDS))
    if cdnskey is not None:
        state["cdnskey"] = sorted(list(e) for e in _cds_entries(cdnskey, dns.rdatatype.CDNSKEY))
    return state


# --- many zones at once: their questions down one TCP connection (dnsbatch.py) -------------


def _answer(reply: dns.message.Message, question: Question) -> Answer:
    """What a look keeps of a reply: the asked RRset and its RRSIGs, not the whole message."""
    zone, rdtype = question
    rrset = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, rdtype)
    sigs = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
    return rrset, sigs


class _Answers:
    """The answers of one ``query_many``, looked up by (zone, type) as a ``Getter`` does."""

    def __init__(self, questions: Sequence[Question], host: str, port: int, timeout: float):
        replies = query_many_reduced(questions, host, port, _answer, timeout)
        self.replies = dict(zip(questions, replies, strict=True))

    def getter(self, zone: dns.name.Name) -> Getter:
        def get(rdtype: dns.rdatatype.RdataType) -> Answer:
            reply = self.replies[(zone, rdtype)]
            if isinstance(reply, NoAnswer):
                raise reply
            return reply

        return get


def _questions(expect: Expectation, served: bool) -> list[Question]:
    """What a look at ``expect`` asks; with ``served`` also what ``read_served`` reads."""
    types = [dns.rdatatype.DNSKEY, dns.rdatatype.SOA]
    if expect.cds is not None or served:
        types += [dns.rdatatype.CDS, dns.rdatatype.CDNSKEY]
    return [(expect.zone, t) for t in types]


CHUNK = 200
"""Zones asked per ``query_many`` in a batch (800 questions, whose answers are held at once
until the chunk is judged: about 8 MB; 500 zones were 35 MB of ``krs run``'s peak)."""


class Kept:
    """What ``read_served`` would read for each zone, taken from the zone's last look so that
    ``read_served_many`` need not ask again right after the verification (a batch of 10,000
    zones asks 40,000 questions instead of 60,000). Kept as the small ``served`` data, not the
    answers: dnspython's RRsets of 10,000 zones were about 50 MB of ``krs run``'s memory.
    ``hidden`` gives a zone's DNSKEYs that sign unpublished (``read_served``'s ``hidden``)."""

    def __init__(self, hidden: Callable[[dns.name.Name], Iterable[DNSKEY]]) -> None:
        self.hidden = hidden
        self.states: dict[dns.name.Name, dict[str, object]] = {}

    def note(
        self, zone: dns.name.Name, get: Getter, host: str, signers: Signers = _valid_signers
    ) -> None:
        self.states[zone] = _served_state(
            zone, int(time.time()), get, self.hidden(zone), host, signers
        )


def check_served_many(
    expects: Sequence[Expectation],
    host: str,
    port: int,
    timeout: float = 3.0,
    keep: Kept | None = None,
) -> list[Verification]:
    """``check_served`` for many zones, all their questions over one TCP connection; with
    ``keep``, also what ``read_served`` reads, kept there by zone. ``CHUNK`` zones at a time,
    so that the replies held at once stay few (a dnspython message of a signed answer is a few
    kilobytes: 40,000 of them would be most of ``krs run``'s memory)."""
    served = keep is not None
    out = []
    for start in range(0, len(expects), CHUNK):
        chunk = expects[start : start + CHUNK]
        questions = [q for e in chunk for q in _questions(e, served)]
        answers = _Answers(questions, host, port, timeout)
        signers = _SignersOnce()  # the chunk's RRSIGs validated once for both
        out += [_judge(e, answers.getter(e.zone), host, port, signers) for e in chunk]
        if keep is not None:
            for e in chunk:
                keep.note(e.zone, answers.getter(e.zone), host, signers)
    return out


def wait_served_many(
    expects: Sequence[Expectation],
    host: str,
    port: int,
    *,
    timeout: float,
    interval: float = 0.05,
    keep: Kept | None = None,
) -> list[Verification]:
    """``wait_served`` for many zones: each look asks every zone not yet served as expected,
    at once, until all are, or until ``timeout`` passes without one more zone served (a server
    signing 10,000 zones at its own pace is waited for while it makes progress; one that has
    stopped is not). The last result of each, in order; ``keep`` as for ``check_served_many``."""
    deadline = time.monotonic() + timeout
    results: list[Verification | None] = [None] * len(expects)
    pending = list(range(len(expects)))
    while True:
        looked = check_served_many([expects[i] for i in pending], host, port, keep=keep)
        for i, result in zip(pending, looked, strict=True):
            results[i] = result
        still = [i for i, result in zip(pending, looked, strict=True) if not result.ok]
        if len(still) < len(pending):
            deadline = max(deadline, time.monotonic() + timeout)
        pending = still
        if not pending or time.monotonic() >= deadline:
            return [r if r is not None else Verification(False) for r in results]
        time.sleep(interval)


def read_served_many(
    zones: Sequence[dns.name.Name],
    host: str,
    port: int,
    timeout: float = 3.0,
    hidden: Mapping[dns.name.Name, Iterable[DNSKEY]] | None = None,
    kept: Kept | None = None,
) -> list[dict[str, object]]:
    """``read_served`` for many zones, all their questions over one TCP connection; a zone in
    ``kept`` (its verification's last look, a moment ago) is not asked again."""
    read_at = int(time.time())
    states = kept.states if kept is not None else {}
    hidden = hidden or {}
    out = []
    for start in range(0, len(zones), CHUNK):
        chunk = zones[start : start + CHUNK]
        questions = [(z, rdtype) for z in chunk if z not in states for rdtype in SERVED_TYPES]
        answers = _Answers(questions, host, port, timeout)
        for zone in chunk:
            state = states.pop(zone, None)
            if state is None:
                state = _served_state(
                    zone, read_at, answers.getter(zone), hidden.get(zone, ()), host
                )
            out.append(state)
    return out
