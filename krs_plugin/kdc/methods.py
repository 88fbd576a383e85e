"""The steps of each rollover method (docs/lifecycle.md, "Steps of each method").

A rollover is a list of steps; each step moves some records of the old or the new key at once
(hidden -> rumoured when introduced, omnipresent -> unretentive when withdrawn). The engine
distributes the step, waits for the gate (every node serves it), then for the records to settle
(``records.settles_at``), and starts the next step. ``initial`` introduces a zone's first keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from krs_plugin.kdc.records import PARENT_RECORDS, RECORDS_OF_ROLE, State

R, U = State.RUMOURED, State.UNRETENTIVE
DS_SWAP = "the parent replaces the old DS with the new"


@dataclass(frozen=True)
class Change:
    which: str  # which key of the rollover: "old", "new", or "new:ROLE" for a zone's first keys
    record: str  # dnskey, krrsig, zrrsig, ds
    to: State  # rumoured or unretentive


@dataclass(frozen=True)
class Step:
    name: str
    says: str  # what the step does, for status, plan and history
    changes: tuple[Change, ...]

    @property
    def waits_for_parent(self) -> bool:
        return any(c.record == "ds" for c in self.changes)

    @property
    def visible(self) -> bool:
        """The step changes what the nodes serve (a distribution is sent)."""
        return any(c.record != "ds" for c in self.changes)


def _step(name: str, says: str, *changes: tuple[str, str, State]) -> Step:
    return Step(name, says, tuple(Change(w, r, s) for w, r, s in changes))


STEPS: dict[tuple[str, str], tuple[Step, ...]] = {
    ("ZSK", "pre-publish"): (
        _step("publish", "publish the new ZSK", ("new", "dnskey", R)),
        _step(
            "swap",
            "sign with the new ZSK instead of the old",
            ("new", "zrrsig", R),
            ("old", "zrrsig", U),
        ),
        _step("remove", "remove the old ZSK", ("old", "dnskey", U)),
    ),
    ("ZSK", "double-signature"): (
        _step(
            "introduce",
            "publish the new ZSK and sign with both",
            ("new", "dnskey", R),
            ("new", "zrrsig", R),
        ),
        _step(
            "withdraw",
            "remove the old ZSK and its signatures",
            ("old", "dnskey", U),
            ("old", "zrrsig", U),
        ),
    ),
    # A standby ZSK (policy standby-zsks): published, not signing, ready for an emergency.
    ("ZSK", "standby"): (_step("publish", "publish a standby ZSK", ("new", "dnskey", R)),),
    # A standby KSK (policy standby-ksk): published, not signing, its DS at the parent.
    ("KSK", "standby"): (
        _step("publish", "publish a standby KSK", ("new", "dnskey", R)),
        _step("ds", "the parent adds the standby KSK's DS", ("new", "ds", R)),
    ),
    # A standby ZSK that is compromised itself: withdrawn (a new one follows).
    ("ZSK", "withdraw"): (_step("remove", "remove the standby ZSK", ("old", "dnskey", U)),),
    ("KSK", "double-ksk"): (
        _step(
            "publish",
            "publish the new KSK and sign the DNSKEY RRset with both",
            ("new", "dnskey", R),
            ("new", "krrsig", R),
        ),
        _step("ds", DS_SWAP, ("new", "ds", R), ("old", "ds", U)),
        _step("remove", "remove the old KSK", ("old", "dnskey", U), ("old", "krrsig", U)),
    ),
    ("KSK", "double-ds"): (
        _step("ds", "the parent adds the new KSK's DS", ("new", "ds", R)),
        _step(
            "swap",
            "replace the old KSK with the new",
            ("new", "dnskey", R),
            ("new", "krrsig", R),
            ("old", "dnskey", U),
            ("old", "krrsig", U),
        ),
        _step("ds-gone", "the parent removes the old KSK's DS", ("old", "ds", U)),
    ),
    ("CSK", "double-ksk"): (
        # Double signature: extra RRSIGs by a key a resolver has not cached do no harm, so the
        # new CSK signs everything from its first step; the old one until it is removed.
        _step(
            "introduce",
            "publish the new CSK and sign with both",
            ("new", "dnskey", R),
            ("new", "krrsig", R),
            ("new", "zrrsig", R),
        ),
        _step("ds", DS_SWAP, ("new", "ds", R), ("old", "ds", U)),
        _step(
            "remove",
            "remove the old CSK and its signatures",
            ("old", "dnskey", U),
            ("old", "krrsig", U),
            ("old", "zrrsig", U),
        ),
    ),
}
"""CSK double-DS is not built: its swap changes the zone's signing key before every cache holds
the new DNSKEY (RFC 7583 3.3.2 needs a double-signature phase); a policy naming it waits."""


def initial_step(roles: tuple[str, ...], cds: str = "none") -> Step:
    """A zone's first keys: published and signing at once (the zone is not signed before, so
    nothing cached can conflict); their DS follows once they are omnipresent (``ds seen``, or
    seen at the parent by the KDC). With ``cds always`` their CDS/CDNSKEY are published too."""
    changes = [
        (f"new:{role}", record, R)
        for role in roles
        for record in RECORDS_OF_ROLE[role]
        if record not in PARENT_RECORDS or (record == "cds" and cds == "always")
    ]
    return _step("introduce", "publish the zone's first keys and sign with them", *changes)


@functools.cache
def algorithm_steps(
    roles: tuple[str, ...], cds: str = "none", method: str = "conservative"
) -> tuple[Step, ...]:
    """An algorithm rollover (RFC 6781 4.1.4; docs/lifecycle.md, "Algorithm rollover"): every
    key of the zone replaced by one of the new algorithm. Keys are named "old:ROLE"/"new:ROLE".

    ``conservative``:
    1. the new ZSK (or CSK) signs the zone, its DNSKEY not published: no cache may hold an RRset
       without a new-algorithm signature once the new DNSKEYs appear;
    2. the new DNSKEYs are published, the new KSK signs the DNSKEY RRset;
    3. the parent replaces the old DS with the new (CDS first, as any KSK rollover);
    4. the old DNSKEYs are removed (the old ZSK still signs);
    5. the old signatures go.

    ``liberal`` (for servers that sign only with published keys, BIND): the new DNSKEYs and
    signatures together, the DS swap once both are in every cache, then the old DNSKEYs and
    signatures together. A validator that follows RFC 6840 section 5.11 accepts every state;
    the DS names only one algorithm at a time, so DS-based downgrade checks hold too."""
    zone_signer = "CSK" if "CSK" in roles else "ZSK"
    ksk = "CSK" if "CSK" in roles else "KSK"
    publish = [("new:" + r, "dnskey", R) for r in roles] + [("new:" + ksk, "krrsig", R)]
    ds = [("new:" + ksk, "ds", R), ("old:" + ksk, "ds", U)]
    remove = [("old:" + r, "dnskey", U) for r in roles] + [("old:" + ksk, "krrsig", U)]
    if cds != "none":
        ds.append(("new:" + ksk, "cds", R))
        if cds == "always":
            ds.append(("old:" + ksk, "cds", U))
        else:
            remove.append(("new:" + ksk, "cds", U))
    if method == "liberal":
        return (
            _step("introduce", "publish the new algorithm's DNSKEYs and sign with it too",
                  *publish, ("new:" + zone_signer, "zrrsig", R)),
            _step("ds", DS_SWAP, *ds),
            _step("remove", "remove the old algorithm's DNSKEYs and signatures",
                  *remove, ("old:" + zone_signer, "zrrsig", U)),
        )  # fmt: skip
    return (
        _step("sign", "sign with the new algorithm too, its DNSKEYs not published yet",
              ("new:" + zone_signer, "zrrsig", R)),
        _step("publish", "publish the new algorithm's DNSKEYs", *publish),
        _step("ds", DS_SWAP, *ds),
        _step("remove", "remove the old algorithm's DNSKEYs", *remove),
        _step("unsign", "stop signing with the old algorithm",
              ("old:" + zone_signer, "zrrsig", U)),
    )  # fmt: skip


@functools.cache
def steps_for(role: str, method: str, cds: str = "none") -> tuple[Step, ...] | None:
    """The steps of ``method`` for ``role``; None when the method is not built.

    ``cds`` (the policy's) adds the CDS/CDNSKEY changes to the steps (docs/lifecycle.md, "CDS
    and CDNSKEY on every node"): the new KSK's are published at the DS step, once its DNSKEY is
    omnipresent, and (``rollover``) withdrawn with the old KSK, after the parent's change was
    seen; with ``always`` the old KSK's are withdrawn as the new one's appear. A double-DS
    rollover swaps the published CDS with the KSKs under ``always`` and publishes none under
    ``rollover`` (the parent is told by push or by hand)."""
    steps = STEPS.get((role, method))
    if steps is None or cds == "none" or role == "ZSK":
        return steps
    if method == "standby":  # its CDS only where the current KSK's is always published
        if cds != "always":
            return steps
        ds = steps[1]
        return (steps[0], Step(ds.name, ds.says, (*ds.changes, Change("new", "cds", R))))
    added: dict[str, list[Change]] = {}
    if method == "double-ds":
        if cds == "always":
            added["swap"] = [Change("new", "cds", R), Change("old", "cds", U)]
    else:
        added["ds"] = [Change("new", "cds", R)]
        if cds == "always":
            added["ds"].append(Change("old", "cds", U))
        else:
            added["remove"] = [Change("new", "cds", U)]
    return tuple(Step(s.name, s.says, s.changes + tuple(added.get(s.name, ()))) for s in steps)
