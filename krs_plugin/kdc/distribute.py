"""Create distributions: the zone's keys as one payload, sealed and signed for each node.

One distribution id (tdns's increasing counter, the node's "serial") addresses all target nodes;
each node gets its own sealed copy and its own status. Everything is stored in one transaction, so
a failure part-way leaves no half-published distribution.

``distribute_zone`` carries one zone to its nodes; ``distribute_node`` carries every zone of one
node (thousands of zones in one distribution, applied all or nothing by the KRS).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.confirmation import key_ref
from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey
from krs_plugin.dnssec import DnssecKey, KeyTiming, load_pkcs8_pem
from krs_plugin.kdc.build import NodeRecipient, build_distribution
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.pqidentity import pq_signer
from krs_plugin.kdc.signroll import signing_state
from krs_plugin.kdc.store import KeyRow, NodeRow, StateError, Store
from krs_plugin.payload import (
    DeleteKey,
    Entry,
    RollKey,
    delete_key_entry,
    encode_payload,
    roll_key_entry,
)
from krs_plugin.protocol import DEFAULT_CHUNK_SIZE
from krs_plugin.protocol.manifest import DEFAULT_DISTRIBUTION_TTL

LIVE_STATES = ("created", "published", "active", "retired")


@dataclass(frozen=True)
class DistributionSummary:
    distribution_id: str
    zone: str  # the zone, or "" when the distribution carries several (see ``zones``)
    nodes: tuple[str, ...]
    key_count: int
    delete_count: int
    records: int
    zones: tuple[str, ...] = ()


def recipient_for(node: NodeRow) -> NodeRecipient:
    """The node's public key for its backend, as stored at ``node add``."""
    name = dns.name.from_text(node.id)
    if node.backend == "hpke-pq":
        if not node.hpke_pq_pubkey:
            raise StateError(f"node {node.id} uses hpke-pq but has no ML-KEM-768 + X25519 key")
        return NodeRecipient(name, "hpke-pq", HybridKey.from_public_hex(node.hpke_pq_pubkey))
    if node.backend == "hpke":
        if not node.hpke_pubkey:
            raise StateError(f"node {node.id} uses hpke but has no X25519 public key")
        return NodeRecipient(name, "hpke", HpkeKey.from_public_hex(node.hpke_pubkey))
    if not node.jose_pubkey:
        raise StateError(f"node {node.id} uses jose but has no P-256 public key")
    return NodeRecipient(
        name, "jose", JoseKey.from_jwk_text(node.jose_pubkey, f"node {node.id} P-256 key")
    )


def key_of(row: KeyRow, ttl: int | None = None, *, pem: bytes | None = None) -> DnssecKey:
    """The key with its private part: ``pem`` from ``Store.private_pem`` (which opens a sealed
    key under the KEK), or the row's own PEM in a legacy kdc.db. What needs only the public key
    uses ``dnskey_of``."""
    if pem is None:
        if not row.private_pem:
            raise StateError(
                f"key {row.key_tag} of {row.zone}: its private key is sealed under the KEK "
                "(open it with Store.private_pem; for the public key use dnskey_of)"
            )
        pem = row.private_pem
    if ttl is None:
        return load_pkcs8_pem(pem, row.zone, row.algorithm, row.flags)
    return load_pkcs8_pem(pem, row.zone, row.algorithm, row.flags, ttl)


def dnskey_of(row: KeyRow) -> DNSKEY:
    """The key's public DNSKEY rdata, from the column filled when it was stored; never the
    private key (a legacy row not filled yet: derived from its plain PEM)."""
    if row.dnskey is None:
        return key_of(row).dnskey
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, row.dnskey)
    assert isinstance(rdata, DNSKEY)
    return rdata


@dataclass(frozen=True)
class ZoneRule:
    """How a zone's keys are sent: by hand, or as its policy's engine says (docs/lifecycle.md):
    the policy's DNSKEY TTL on every key, and a key the engine has not introduced yet (created)
    not sent at all."""

    dnskey_ttl: int | None = None
    engine: bool = False
    cds_keys: frozenset[int] = frozenset()  # keys.id whose CDS/CDNSKEY the nodes serve now
    unpublished: frozenset[int] = frozenset()  # keys.id that sign, their DNSKEY not served


def zone_entries(
    keys: Sequence[KeyRow],
    dist_id: str,
    *,
    now: int,
    expires_at: int,
    rule: ZoneRule | None = None,
    opener: Callable[[KeyRow], bytes] | None = None,
) -> tuple[list[Entry], int, int]:
    """roll_key for every live key (with its timing), delete_key for removed ones; ``opener``
    gives a key's private PEM (``Store.private_pem``: opened under the KEK)."""
    rule = rule or ZoneRule()
    entries: list[Entry] = []
    rolls = deletes = 0
    for row in keys:
        if rule.engine and row.state == "created":
            continue
        if row.state in LIVE_STATES:
            timing = KeyTiming(
                publish=row.publish_at,
                activate=row.activate_at,
                inactive=row.inactive_at,
                delete=row.delete_at,
            )
            if row.id in rule.unpublished:  # signs now, no DNSKEY (docs/payload.md)
                timing = KeyTiming(activate=row.activate_at or now)
            elif row.publish_at and row.activate_at and row.activate_at < row.publish_at:
                # signed before it was published (an algorithm rollover): both times have
                # passed, and the payload keeps publish <= activate
                timing = replace(timing, activate=row.publish_at)
            entries.append(
                roll_key_entry(
                    key_of(row, rule.dnskey_ttl, pem=opener(row) if opener else None),
                    row.role,  # type: ignore[arg-type]
                    timing=timing,
                    distribution_id=dist_id,
                    issued_at=now,
                    expires_at=expires_at,
                    cds="publish" if row.id in rule.cds_keys else None,
                )
            )
            rolls += 1
        elif row.state == "removed":
            entries.append(
                delete_key_entry(
                    row.zone,
                    row.key_tag,
                    "removed at the KDC",
                    distribution_id=dist_id,
                    issued_at=now,
                    expires_at=expires_at,
                )
            )
            deletes += 1
    return entries, rolls, deletes


def sent_keys(entries: Sequence[Entry]) -> list[tuple[str, str]]:
    """The keys the entries carry, named as the KRS names them in its confirmation: what the KDC
    records with the distribution and checks a confirmation against (docs/protocol.md section 6)."""
    return [
        key_ref(e.zone.to_text(), e.key_tag) for e in entries if isinstance(e, RollKey | DeleteKey)
    ]


def deleted_keys(entries: Sequence[Entry]) -> set[tuple[str, str]]:
    """Those of ``sent_keys`` that the entries delete (``delete_key``)."""
    return {key_ref(e.zone.to_text(), e.key_tag) for e in entries if isinstance(e, DeleteKey)}


def distribute_zone(
    store: Store,
    identity: KdcIdentity,
    zone: str,
    *,
    node_ids: Sequence[str] | None = None,
    now: float,
    ttl: int = DEFAULT_DISTRIBUTION_TTL,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> DistributionSummary:
    """Build and store one distribution of ``zone``'s keys for its nodes (or ``node_ids``)."""
    zone = store.require_zone(zone)
    if node_ids:
        nodes = [store.require_node(n) for n in node_ids]
        for node in nodes:
            if zone not in node.zones:
                raise StateError(f"node {node.id} does not serve zone {zone}")
    else:
        nodes = store.zone_nodes(zone)
    if not nodes:
        raise StateError(f"zone {zone} has no nodes to distribute to (krs-kdc node add ...)")
    keys = store.keys(zone)
    if not any(k.state in LIVE_STATES for k in keys):
        raise StateError(f"zone {zone} has no keys (krs-kdc key generate --zone {zone} ...)")
    stamp = int(now)
    expires_at = stamp + ttl
    recipients = [recipient_for(node) for node in nodes]  # fails before anything is stored
    records_total = 0
    rule = zone_rules(store, [zone])[zone]
    signer, announced = signing_state(store, identity)  # a signing-key roll: kdc/signroll.py
    pq_key = pq_signer(store.path.parent / "keys")  # ML-DSA-65, when enabled (kdc/pqidentity.py)
    with store.transaction():
        dist_id, serial = store.next_distribution_id(now)
        entries, rolls, deletes = zone_entries(
            keys, dist_id, now=stamp, expires_at=expires_at, rule=rule, opener=store.private_pem
        )
        cleartext = encode_payload(entries, announced)
        carried, deleted = sent_keys(entries), deleted_keys(entries)
        counts = {"zone_count": 1, "key_count": rolls + deletes, "operation_count": len(entries)}
        for index, (node, recipient) in enumerate(zip(nodes, recipients, strict=True)):
            records = build_distribution(
                cleartext,
                recipient,
                signer,
                dist_id,
                now=now,
                counts=counts,
                distribution_ttl=ttl,
                chunk_size=chunk_size,
                pq_signer=pq_key,
            )
            store.add_distribution(
                dist_id,
                serial,
                node.id,
                zone=zone,
                content="key_operations",
                created_at=stamp,
                expires_at=expires_at,
                records=[r.to_wire() or b"" for r in records],
                keys=carried,
                deleted=deleted,
            )
            records_total += len(records)
            if progress is not None:
                progress(index + 1, len(nodes))
        if not rule.engine:  # the engine moves its keys' states itself
            store.db.execute(
                "UPDATE keys SET state = 'published' WHERE zone = ? AND state = 'created'", (zone,)
            )
        audit_distribution(
            store,
            dist_id,
            [n.id for n in nodes],
            carried,
            deleted,
            [zone],
            expires_at=expires_at,
            now=stamp,
        )
    return DistributionSummary(
        dist_id, zone, tuple(n.id for n in nodes), rolls, deletes, records_total, (zone,)
    )


def distribute_node(
    store: Store,
    identity: KdcIdentity,
    node_id: str,
    *,
    zones: Sequence[str] | None = None,
    now: float,
    ttl: int = DEFAULT_DISTRIBUTION_TTL,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> DistributionSummary:
    """Build and store one distribution for ``node_id`` with the keys of every zone it serves
    (or of ``zones``, each of which it must serve): a node's full key set in one transfer.

    Refused, storing nothing, when a zone has no keys. The payload grows by about 800 bytes per
    algorithm-13 key (600 for algorithm 15); the KRS accepts what ``Limits`` allows (32 MiB of
    transport, about 10,000 zones with a KSK and a ZSK each)."""
    node = store.require_node(node_id)
    if zones is None:
        wanted = list(node.zones)
    else:
        wanted = list(dict.fromkeys(store.require_zone(z) for z in zones))
        served = set(node.zones)
        foreign = [z for z in wanted if z not in served]
        if foreign:
            raise StateError(f"node {node.id} does not serve zone(s) {', '.join(foreign[:5])}")
    if not wanted:
        raise StateError(f"node {node.id} serves no zones (krs-kdc node add ... --zone ...)")
    by_zone: dict[str, list[KeyRow]] = {z: [] for z in wanted}
    for row in store.keys(zone=None):  # one query, not one per zone
        if row.zone in by_zone:
            by_zone[row.zone].append(row)
    keyless = [z for z, rows in by_zone.items() if not any(k.state in LIVE_STATES for k in rows)]
    if keyless:
        more = f" and {len(keyless) - 5} more" if len(keyless) > 5 else ""
        shown = ", ".join(keyless[:5]) + more
        raise StateError(f"zone(s) without keys: {shown} (krs-kdc key generate --zone ...)")
    stamp = int(now)
    expires_at = stamp + ttl
    recipient = recipient_for(node)
    rules = zone_rules(store, wanted)
    signer, announced = signing_state(store, identity)  # a signing-key roll: kdc/signroll.py
    pq_key = pq_signer(store.path.parent / "keys")  # ML-DSA-65, when enabled (kdc/pqidentity.py)
    with store.transaction():
        dist_id, serial = store.next_distribution_id(now)
        entries: list[Entry] = []
        rolls = deletes = 0
        for zone in wanted:
            ops, r, d = zone_entries(
                by_zone[zone], dist_id, now=stamp, expires_at=expires_at, rule=rules[zone],
                opener=store.private_pem,
            )  # fmt: skip
            entries += ops
            rolls += r
            deletes += d
        cleartext = encode_payload(entries, announced)
        carried, deleted = sent_keys(entries), deleted_keys(entries)
        del entries
        counts = {
            "zone_count": len(wanted),
            "key_count": rolls + deletes,
            "operation_count": rolls + deletes,
        }
        records = build_distribution(
            cleartext,
            recipient,
            signer,
            dist_id,
            now=now,
            counts=counts,
            distribution_ttl=ttl,
            chunk_size=chunk_size,
            pq_signer=pq_key,
        )
        del cleartext
        store.add_distribution(
            dist_id,
            serial,
            node.id,
            zone=wanted[0] if len(wanted) == 1 else None,
            content="key_operations",
            created_at=stamp,
            expires_at=expires_at,
            records=[r.to_wire() or b"" for r in records],
            keys=carried,
            deleted=deleted,
        )
        store.db.executemany(
            "UPDATE keys SET state = 'published' WHERE zone = ? AND state = 'created'",
            [(z,) for z in wanted if not rules[z].engine],
        )
        audit_distribution(
            store, dist_id, [node.id], carried, deleted, wanted, expires_at=expires_at, now=stamp
        )
    return DistributionSummary(
        dist_id,
        wanted[0] if len(wanted) == 1 else "",
        (node.id,),
        rolls,
        deletes,
        len(records),
        tuple(wanted),
    )


def audit_distribution(
    store: Store,
    dist_id: str,
    nodes: Sequence[str],
    carried: Sequence[tuple[str, str]],
    deleted: Collection[tuple[str, str]],
    zones: Sequence[str],
    *,
    expires_at: int,
    now: int,
) -> None:
    """The distribution's audit entry, in its transaction: its id, nodes and the key tags it
    rolls and deletes per zone (never the sealed content)."""
    keys: dict[str, dict[str, list[str]]] = {z: {"roll": [], "delete": []} for z in zones}
    for zone, tag in carried:
        if zone in keys:
            keys[zone]["delete" if (zone, tag) in deleted else "roll"].append(tag)
    details: dict[str, object] = {
        "distribution": dist_id,
        "nodes": list(nodes),
        "expires_at": expires_at,
        "zone_count": len(zones),
    }
    per_zone = {z: {"keys": k} for z, k in keys.items()}
    store.audit("distribution.create", zones=zones, details=details, per_zone=per_zone, now=now)


def zone_rules(store: Store, zones: Sequence[str]) -> dict[str, ZoneRule]:
    """Each zone's rule, from one query (a node may serve 10,000 zones)."""
    policies = dict(store.policies())
    rows = store.db.execute("SELECT name, policy FROM zones WHERE policy IS NOT NULL").fetchall()
    by_zone = {r["name"]: policies.get(r["policy"]) for r in rows}
    cds: dict[str, set[int]] = {}
    for r in store.db.execute(
        "SELECT k.zone, k.id FROM key_records r JOIN keys k ON k.id = r.key_id "
        "WHERE r.record = 'cds' AND r.state IN ('rumoured', 'omnipresent')"
    ):
        cds.setdefault(r["zone"], set()).add(r["id"])
    unpublished: dict[str, set[int]] = {}
    for r in store.db.execute(
        "SELECT k.zone, k.id FROM key_records z JOIN keys k ON k.id = z.key_id "
        "LEFT JOIN key_records d ON d.key_id = z.key_id AND d.record = 'dnskey' "
        "WHERE z.record = 'zrrsig' AND z.state IN ('rumoured', 'omnipresent') "
        "AND coalesce(d.state, 'hidden') NOT IN ('rumoured', 'omnipresent')"
    ):
        unpublished.setdefault(r["zone"], set()).add(r["id"])
    return {
        z: ZoneRule(
            p.dnskey_ttl,
            engine=True,
            cds_keys=frozenset(cds.get(z, ())),
            unpublished=frozenset(unpublished.get(z, ())),
        )
        if (p := by_zone.get(z))
        else ZoneRule()
        for z in zones
    }
