"""The control zone as a standard zone file, CHUNK in RFC 3597 form, for any nameserver to serve.

The same records and serial as a zone transfer from ``krs-kdc serve`` (kdc/zoneversions.py):
every CHUNK record of a distribution not expired and each node's ``_pending`` index. Where
``krs-kdc serve`` cannot be the primary, a nameserver loads this file (docs/scale.md).
"""

from __future__ import annotations

import time

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from krs_plugin.kdc.store import Store
from krs_plugin.kdc.zoneversions import snapshot_now

RECORD_TTL = 300


def export_zone(store: Store, control_zone: str, *, nameserver: str = "ns") -> str:
    origin = dns.name.from_text(control_zone)
    snapshot = snapshot_now(store, origin, time.time())
    lines = [
        f"$ORIGIN {origin}",
        f"$TTL {RECORD_TTL}",
        f"@ IN SOA {nameserver} hostmaster {snapshot.serial} 3600 600 86400 {RECORD_TTL}",
        f"@ IN NS {nameserver}",
    ]
    for owner, rdtype, wire in sorted(snapshot.entries):
        rdata = dns.rdata.from_wire(
            dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), wire, 0, len(wire)
        )
        if rdtype == dns.rdatatype.TXT:
            text = rdata.to_text()
            lines.append(f"{owner} {RECORD_TTL} IN TXT {text}")
        else:
            generic = dns.rdata.GenericRdata(dns.rdataclass.IN, rdata.rdtype, wire).to_text()
            lines.append(f"{owner} {RECORD_TTL} IN TYPE{rdtype} {generic}")
    return "\n".join(lines) + "\n"
