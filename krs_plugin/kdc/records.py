"""The rollover engine's record model (docs/lifecycle.md, "Records and their states" and "The
waits"): per key, its DNSKEY, its RRSIGs over the DNSKEY RRset (``krrsig``) and over the rest of
the zone (``zrrsig``) and its DS, each hidden, rumoured, omnipresent or unretentive.

Pure functions: when a rumoured or unretentive record settles, given when the gate was reached
(``gate.check_gate``) or when the operator said ``ds seen``/``ds gone``; and what every node's
server must serve for a set of record states (``gate.Expected``). What the nodes are told of each
key follows from its records (``engine.key_state``), so a distribution carries the current step
only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from krs_plugin.kdc.gate import Expected
from krs_plugin.kdc.policy import Policy


class State(StrEnum):
    HIDDEN = "hidden"
    RUMOURED = "rumoured"
    OMNIPRESENT = "omnipresent"
    UNRETENTIVE = "unretentive"


RECORDS = ("dnskey", "krrsig", "zrrsig", "ds", "cds")
RECORDS_OF_ROLE = {
    "ZSK": ("dnskey", "zrrsig"),
    "KSK": ("dnskey", "krrsig", "ds", "cds"),
    "CSK": ("dnskey", "krrsig", "zrrsig", "ds", "cds"),
}
PARENT_RECORDS = ("ds", "cds")  # the parent's view: not introduced with a zone's first keys
VISIBLE = (State.RUMOURED, State.OMNIPRESENT)  # sent to the nodes: they serve it


@dataclass(frozen=True)
class KeyRecords:
    """One key as the engine sees it: its identity and the state of each of its records."""

    key_tag: int
    algorithm: int
    flags: int
    role: str
    states: dict[str, State]  # record -> state, for the records of its role
    key_id: int = 0  # kdc.db's keys.id (0: not stored)

    def state(self, record: str) -> State:
        return self.states.get(record, State.HIDDEN)

    def visible(self, record: str) -> bool:
        return self.state(record) in VISIBLE


def settles_at(
    record: str,
    state: State,
    *,
    since: int,
    policy: Policy,
    dnskey_ttl: int,
    first_signing: bool = False,
) -> int:
    """When a ``rumoured`` record becomes omnipresent, or an ``unretentive`` one hidden.

    ``since`` is when the gate was reached (the last node's confirmation) or, for ``ds``, when the
    operator recorded the parent's change. ``dnskey_ttl`` is the largest DNSKEY TTL any node
    served (never less than the policy's). ``first_signing``: the zone's first keys, where no
    older signature can still be served, so the new ones are everywhere once the unsigned
    answers have left the caches (no Dsgn)."""
    if state not in (State.RUMOURED, State.UNRETENTIVE):
        raise ValueError(f"a {state} {record} does not move by time")
    safety = policy.publish_safety if state is State.RUMOURED else policy.retire_safety
    margin = policy.propagation_margin
    ttl = max(dnskey_ttl, policy.dnskey_ttl)
    if record in ("dnskey", "krrsig"):
        return since + ttl + safety + margin
    if record == "zrrsig":
        dsgn = 0 if first_signing else policy.signatures_validity - policy.signatures_refresh
        return since + dsgn + max(policy.max_zone_ttl, policy.negative_ttl) + safety + margin
    if record == "ds":
        return since + policy.parent_ds_ttl + policy.parent_propagation_delay
    if record == "cds":
        # The parent reads CDS/CDNSKEY from every nameserver itself (draft-ietf-dnsop-cds-
        # consistency), not from caches: served by every node is enough.
        return since + margin
    raise ValueError(f"unknown record {record!r}")


def expected(
    zone: str, keys: Iterable[KeyRecords], dnskey_ttl: int, *, compare_cds: bool = False
) -> Expected:
    """What every node's server must serve while the keys' records are in these states: the
    DNSKEYs rumoured or omnipresent, the RRSIGs of the keys whose signatures are, and with
    ``compare_cds`` (a policy that publishes CDS) the CDS/CDNSKEY of the keys whose ``cds`` is."""
    keys = list(keys)
    cds = frozenset((k.key_tag, k.algorithm) for k in keys if k.visible("cds"))
    # Signing while its DNSKEY is not served (an algorithm rollover): whether a server also
    # signs the DNSKEY RRset with it differs (Knot does not, PowerDNS does) and does no harm.
    unpublished = frozenset(
        k.key_tag for k in keys if k.visible("zrrsig") and not k.visible("dnskey")
    )
    return Expected(
        zone=zone,
        dnskeys=frozenset((k.key_tag, k.algorithm, k.flags) for k in keys if k.visible("dnskey")),
        dnskey_signers=frozenset(k.key_tag for k in keys if k.visible("krrsig")),
        soa_signers=frozenset(k.key_tag for k in keys if k.visible("zrrsig")),
        dnskey_ttl=dnskey_ttl,
        cds=cds if compare_cds else None,
        optional_dnskey_signers=unpublished,
    )
