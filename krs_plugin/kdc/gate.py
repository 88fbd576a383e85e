"""The rollover engine's gate: has every node's server served a step? (docs/lifecycle.md, "How
the engine rolls keys").

A step is reached only when every node of the step's frozen set has confirmed, after the step's
distribution, that its server serves exactly what the step expects: the DNSKEY RRset, who signs
the DNSKEY RRset and the SOA, and the policy's DNSKEY TTL. The waits that follow count from the
last of those confirmations (``GateResult.reached_at``), never from when the distribution was sent.
A node that has not confirmed, or serves something else, holds the step and is named with why;
there is no timeout that turns into success. Pure functions: the engine feeds them what kdc.db
recorded (``Store.served_state``, the confirmation's ``served``, docs/protocol.md section 6).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

KeyRef = tuple[int, int, int]  # (key tag, algorithm, flags), as the confirmation lists DNSKEYs


@dataclass(frozen=True)
class Expected:
    """What every node's server must serve for one zone once a step's distribution is applied."""

    zone: str
    dnskeys: frozenset[KeyRef]
    dnskey_signers: frozenset[int]  # tags whose RRSIG over the DNSKEY RRset must be served
    soa_signers: frozenset[int]  # tags whose RRSIG over the SOA must be served
    dnskey_ttl: int  # the policy's DNSKEY TTL, served identically by every node
    cds: frozenset[tuple[int, int]] | None = None
    optional_dnskey_signers: frozenset[int] = frozenset()
    """Tags that may or may not sign the DNSKEY RRset (signing while unpublished)."""
    """(tag, algorithm) of the keys whose CDS (SHA-256) and CDNSKEY every node serves, and no
    other; None: not compared (a policy with ``cds none``)."""


@dataclass(frozen=True)
class Served:
    """One node's confirmation of what its server served for the zone (``served.zones[]``)."""

    read_at: int  # the node's clock when it read its server
    dnskeys: frozenset[KeyRef]
    dnskey_signers: frozenset[int]
    soa_signers: frozenset[int]
    dnskey_ttl: int | None
    error: str | None = None  # the node could not read its server
    cds: frozenset[tuple[int, int, int]] = frozenset()  # (tag, algorithm, digest type)
    cdnskey: frozenset[tuple[int, int, int]] = frozenset()  # (tag, algorithm, flags)

    @classmethod
    def from_report(cls, entry: Mapping[str, object]) -> Served:
        """From one entry of a confirmation's ``served.zones`` (already checked for form by the
        KDC's ``check_binding``)."""

        def tags(name: str) -> frozenset[int]:
            value = entry.get(name)
            return frozenset(int(t) for t in value) if isinstance(value, list) else frozenset()

        def triples(name: str) -> frozenset[KeyRef]:
            value = entry.get(name)
            return frozenset(
                (int(k[0]), int(k[1]), int(k[2]))
                for k in (value if isinstance(value, list) else [])
                if isinstance(k, list) and len(k) == 3
            )

        dnskeys = triples("dnskey")
        ttl = entry.get("dnskey_ttl")
        error = entry.get("error")
        read_at = entry.get("read_at")
        return cls(
            read_at=int(read_at) if isinstance(read_at, int) else 0,
            dnskeys=dnskeys,
            dnskey_signers=tags("dnskey_signers"),
            soa_signers=tags("soa_signers"),
            dnskey_ttl=int(ttl) if isinstance(ttl, int) else None,
            error=str(error) if error is not None else None,
            cds=triples("cds"),
            cdnskey=triples("cdnskey"),
        )


@dataclass(frozen=True)
class GateResult:
    reached: bool
    reached_at: int | None  # the last node's confirmation, when reached
    lagging: dict[str, str] = field(default_factory=dict)  # node -> why it holds the step
    largest_dnskey_ttl: int | None = None  # the largest DNSKEY TTL any node served


def check_gate(
    expected: Expected,
    nodes: Iterable[str],
    served: Mapping[str, Served | None],
    *,
    since: int,
) -> GateResult:
    """Whether every node in ``nodes`` confirmed serving ``expected`` at or after ``since`` (when
    the step's distribution was made); the lagging nodes with the reason otherwise."""
    lagging: dict[str, str] = {}
    times: list[int] = []
    ttls: list[int] = []
    required = sorted(set(nodes))
    if not required:
        return GateResult(False, None, {"": f"no node serves {expected.zone}: nothing can confirm"})
    for node in required:
        state = served.get(node)
        if state is not None and state.dnskey_ttl is not None:
            ttls.append(state.dnskey_ttl)
        problem = _problem(expected, state, since)
        if problem is None and state is not None:
            times.append(state.read_at)
        else:
            lagging[node] = problem or "no confirmation"
    largest = max(ttls) if ttls else None
    if lagging:
        return GateResult(False, None, lagging, largest)
    return GateResult(True, max(times), {}, largest)


def _problem(expected: Expected, state: Served | None, since: int) -> str | None:
    """Why ``state`` does not show the step served, or None when it does."""
    if state is None or state.read_at < since:
        return "has not confirmed this step yet"
    if state.error is not None:
        return f"could not read its server: {state.error}"
    if state.dnskeys != expected.dnskeys:
        return f"serves DNSKEY {_tags(state.dnskeys)}, expected {_tags(expected.dnskeys)}"
    if state.dnskey_ttl != expected.dnskey_ttl:
        return (
            f"serves the DNSKEY RRset with TTL {state.dnskey_ttl}, the policy says "
            f"{expected.dnskey_ttl}: every node must serve the same TTL"
        )
    if state.dnskey_signers - expected.optional_dnskey_signers != expected.dnskey_signers:
        return (
            f"signs the DNSKEY RRset with {_list(state.dnskey_signers)}, expected "
            f"{_list(expected.dnskey_signers)}"
        )
    if state.soa_signers != expected.soa_signers:
        return (
            f"signs the SOA with {_list(state.soa_signers)}, expected {_list(expected.soa_signers)}"
        )
    if expected.cds is not None:
        want_cds = frozenset((tag, alg, SHA256) for tag, alg in expected.cds)
        if state.cds != want_cds:
            return f"serves CDS {_cds(state.cds)}, expected {_cds(want_cds)}"
        flags = {k[0]: k[2] for k in expected.dnskeys}
        want_cdnskey = frozenset((tag, alg, flags.get(tag, 257)) for tag, alg in expected.cds)
        if state.cdnskey != want_cdnskey:
            return f"serves CDNSKEY {_tags(state.cdnskey)}, expected {_tags(want_cdnskey)}"
    return None


SHA256 = 2  # the CDS digest type every node publishes (docs/lifecycle.md)


def _cds(records: frozenset[KeyRef]) -> str:
    if not records:
        return "nothing"
    return "{" + ", ".join(f"{t}/{d}" for t, _, d in sorted(records)) + "}"


def _tags(keys: frozenset[KeyRef]) -> str:
    return _list(frozenset(k[0] for k in keys))


def _list(tags: frozenset[int]) -> str:
    return "{" + ", ".join(str(t) for t in sorted(tags)) + "}" if tags else "nothing"
