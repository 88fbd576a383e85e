"""Control-zone names: where NOTIFY, manifest and chunks of a distribution live.

| what                    | name                                  |
|-------------------------|---------------------------------------|
| NOTIFY / confirmation   | ``<dist-id>.<cz>``                    |
| manifest (chunk 0)      | ``<node-id><dist-id>.<cz>``           |
| data chunk i (1..N)     | ``<i>.<node-id><dist-id>.<cz>``       |
| enrollment UPDATE owner | ``_enroll.<cz>``                      |

The node id is an FQDN that keeps its trailing dot, so ``<node-id><dist-id>`` reads as the node's
labels followed by the distribution id label. A KDC tells a chunk query from a manifest query by a
decimal first label, so node ids whose first label is all digits are refused here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dns.exception
import dns.name

from krs_plugin.errors import WireError

_DIST_ID = re.compile(r"^[0-9a-f]{4,16}$")
MAX_CHUNK_INDEX = 0xFFFF


def to_name(value: str | dns.name.Name, what: str) -> dns.name.Name:
    """An absolute, lower-cased name; ``WireError`` naming ``what`` otherwise."""
    if isinstance(value, dns.name.Name):
        name = value
    else:
        if not value.endswith("."):
            raise WireError(f"{what} {value!r} must be a fully qualified name ending in '.'")
        try:
            name = dns.name.from_text(value)
        except dns.exception.DNSException as exc:
            raise WireError(f"{what} {value!r} is not a valid domain name: {exc}") from exc
    if not name.is_absolute():
        raise WireError(f"{what} {name} must be absolute")
    return name.canonicalize()


def check_distribution_id(dist_id: str) -> str:
    """Distribution ids are 4 to 16 lowercase hex characters (tdns: a Unix-time counter, ``%x``)."""
    if not _DIST_ID.match(dist_id):
        raise WireError(f"distribution id {dist_id!r} must be 4 to 16 lowercase hex characters")
    return dist_id


def check_node_id(node_id: str | dns.name.Name) -> dns.name.Name:
    """An FQDN whose first label is not all digits (a KDC would read that as a chunk index)."""
    name = to_name(node_id, "node id")
    if name == dns.name.root:
        raise WireError("node id must not be the root name")
    first = name.labels[0].decode("ascii", "replace")
    if first.isdigit():
        raise WireError(
            f"node id {name} starts with the all-digit label {first!r}, which a KDC would read "
            "as a chunk index"
        )
    return name


def notify_name(dist_id: str, control_zone: str | dns.name.Name) -> dns.name.Name:
    """NOTIFY (KDC to KRS) and confirmation NOTIFY (KRS to KDC) owner."""
    cz = to_name(control_zone, "control zone")
    return dns.name.Name((check_distribution_id(dist_id).encode(), *cz.labels))


def manifest_name(
    node_id: str | dns.name.Name, dist_id: str, control_zone: str | dns.name.Name
) -> dns.name.Name:
    """Owner of the manifest (sequence 0) of ``dist_id`` for one node."""
    node = check_node_id(node_id)
    cz = to_name(control_zone, "control zone")
    labels = (*node.labels[:-1], check_distribution_id(dist_id).encode(), *cz.labels)
    return _make(labels)


def chunk_name(
    index: int, node_id: str | dns.name.Name, dist_id: str, control_zone: str | dns.name.Name
) -> dns.name.Name:
    """Owner of data chunk ``index`` (1..N)."""
    if not 1 <= index <= MAX_CHUNK_INDEX:
        raise WireError(f"chunk index {index} is outside 1..{MAX_CHUNK_INDEX}")
    base = manifest_name(node_id, dist_id, control_zone)
    return _make((str(index).encode(), *base.labels))


PENDING_LABEL = b"_pending"


def pending_name(node_id: str | dns.name.Name, control_zone: str | dns.name.Name) -> dns.name.Name:
    """Owner of the TXT list of distribution ids published for a node (ours; the poller's index).

    ``_pending.<node-id>.<cz>``: tdns does not know it and never asks for it.
    """
    node = check_node_id(node_id)
    cz = to_name(control_zone, "control zone")
    return _make((PENDING_LABEL, *node.labels[:-1], *cz.labels))


def parse_pending_name(
    qname: dns.name.Name, control_zone: str | dns.name.Name
) -> dns.name.Name | None:
    """The node id of a ``_pending`` name, or None when ``qname`` is not one."""
    cz = to_name(control_zone, "control zone")
    name = qname.canonicalize()
    if not name.is_subdomain(cz) or name == cz:
        return None
    labels = name.relativize(cz).labels
    if len(labels) < 2 or labels[0] != PENDING_LABEL:
        return None
    return check_node_id(dns.name.Name((*labels[1:], b"")))


def enroll_name(control_zone: str | dns.name.Name) -> dns.name.Name:
    """Owner of the enrollment UPDATE's single CHUNK record."""
    cz = to_name(control_zone, "control zone")
    return dns.name.Name((b"_enroll", *cz.labels))


@dataclass(frozen=True)
class ChunkQuery:
    """A parsed CHUNK query name: which node, which distribution, which chunk (0 = manifest)."""

    node_id: dns.name.Name
    distribution_id: str
    index: int


def parse_chunk_query(qname: dns.name.Name, control_zone: str | dns.name.Name) -> ChunkQuery:
    """Read ``[<i>.]<node-id><dist-id>.<cz>`` the way a tdns KDC does; ``WireError`` otherwise."""
    cz = to_name(control_zone, "control zone")
    name = qname.canonicalize()
    if not name.is_subdomain(cz) or name == cz:
        raise WireError(f"query name {qname} is not below the control zone {cz}")
    labels = name.relativize(cz).labels
    index = 0
    if labels and labels[0].isdigit():
        index = int(labels[0])
        if not 0 <= index <= MAX_CHUNK_INDEX:
            raise WireError(f"chunk index {index} in {qname} is outside 0..{MAX_CHUNK_INDEX}")
        labels = labels[1:]
    if len(labels) < 2:
        raise WireError(f"query name {qname} lacks a node id and a distribution id")
    dist_id = check_distribution_id(labels[-1].decode("ascii", "replace"))
    node_id = check_node_id(dns.name.Name((*labels[:-1], b"")))
    return ChunkQuery(node_id, dist_id, index)


def parse_notify_name(qname: dns.name.Name, control_zone: str | dns.name.Name) -> str:
    """The distribution id of a NOTIFY: exactly one hex label directly below the control zone."""
    cz = to_name(control_zone, "control zone")
    labels = qname.labels
    # Compared label by label: every NOTIFY of a flood comes through here (names.py is on the
    # listener's path; dnspython's canonicalize/relativize cost twice the parse).
    if tuple(label.lower() for label in labels[-len(cz.labels) :]) != cz.labels:
        raise WireError(f"NOTIFY name {qname} is not below the control zone {cz}")
    if len(labels) != len(cz.labels) + 1:
        raise WireError(f"NOTIFY name {qname} must be <distribution-id>.{cz}")
    return check_distribution_id(labels[0].lower().decode("ascii", "replace"))


def _make(labels: tuple[bytes, ...]) -> dns.name.Name:
    try:
        return dns.name.Name(labels)
    except dns.exception.DNSException as exc:
        raise WireError(f"name too long: {exc}") from exc
