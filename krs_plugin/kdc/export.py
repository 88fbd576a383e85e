"""The control zone as a standard zone file, CHUNK in RFC 3597 form, for any nameserver to serve.

At scale the control zone is published into an existing authoritative server and replicated by
zone transfer; this export is what such a server loads (or what a dynamic update would carry).
"""

from __future__ import annotations

import time

import dns.name

from krs_plugin.kdc.store import Store
from krs_plugin.protocol import CHUNK_TYPE, chunk_name, manifest_name, parse_chunk_wire

RECORD_TTL = 300


def export_zone(store: Store, control_zone: str, *, nameserver: str = "ns") -> str:
    origin = dns.name.from_text(control_zone)
    serial = int(time.time())
    lines = [
        f"$ORIGIN {origin}",
        f"$TTL {RECORD_TTL}",
        f"@ IN SOA {nameserver} hostmaster {serial} 3600 600 86400 {RECORD_TTL}",
        f"@ IN NS {nameserver}",
    ]
    for dist_id, node_id, sequence, wire in store.published_records():
        owner = (
            manifest_name(node_id, dist_id, origin)
            if sequence == 0
            else chunk_name(sequence, node_id, dist_id, origin)
        )
        generic = parse_chunk_wire(wire, CHUNK_TYPE).to_generic().to_text()
        lines.append(f"{owner} {RECORD_TTL} IN TYPE{CHUNK_TYPE} {generic}")
    return "\n".join(lines) + "\n"
