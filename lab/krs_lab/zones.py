"""The unsigned test zone every lab server loads: SOA, NS and a few ordinary records."""

from __future__ import annotations

import dns.name


def unsigned_zone_text(zone: str, serial: int = 1) -> str:
    """Zone file text for ``zone`` (a name with its trailing dot)."""
    origin = dns.name.from_text(zone).to_text()
    return (
        f"$ORIGIN {origin}\n"
        "$TTL 300\n"
        f"@ IN SOA ns1.{origin} hostmaster.{origin} {serial} 3600 900 1209600 300\n"
        f"@ IN NS ns1.{origin}\n"
        "ns1 IN A 127.0.0.1\n"
        "www IN A 192.0.2.80\n"
        '@ IN TXT "krs-plugin lab zone"\n'
    )
