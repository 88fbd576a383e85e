"""The key status report a KRS sends back to the KDC (docs/protocol.md section 6), and its
signature.

tdns identifies the node by the packet's source address only. Ours adds ``node_id`` and
``signature``: a compact JWS ES256 by the node's P-256 key whose payload is the report without
``signature`` as canonical JSON (sorted keys, no spaces). Shared by the KRS (signs) and the KDC
(verifies), so both sides serialize the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype

from krs_plugin.crypto import JoseKey
from krs_plugin.crypto.jose import jws_sign, jws_verify
from krs_plugin.errors import SignatureError
from krs_plugin.protocol import CHUNK_TYPE, ChunkOption, notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS

MAX_REPORT_BYTES = 24 * 1024
"""A report travels in one EDNS0 option (DataLength is 16 bits, so under 64 KiB) of one DNS
message, and a signed report carries it twice: as JSON and base64url-encoded inside the JWS
(4/3 of it). 24 KiB x (1 + 4/3) plus the JWS header and the message stays under 64 KiB."""


def compact_report(
    report: Mapping[str, object], limit: int = MAX_REPORT_BYTES
) -> dict[str, object]:
    """Fit a report for thousands of zones into one message.

    A KRS applies a distribution all or nothing, so ``failed_keys`` is empty when it confirms
    success; the list of successful keys is then cut to what fits and ``successful_count``
    (ours) says how many there were. A KDC confirms on "no failed keys", so the meaning is kept.
    Reports that fit, which is every tdns-sized one, are returned unchanged."""
    if len(canonical_report(report)) <= limit:
        return dict(report)
    keys, failed = _items(report, "successful_keys"), _items(report, "failed_keys")
    compact = {**report, "successful_count": len(keys), "failed_count": len(failed)}
    budget = limit - len(canonical_report({**compact, "successful_keys": [], "failed_keys": []}))
    compact["failed_keys"] = _fit(failed, budget // 2 if keys else budget)
    compact["successful_keys"] = _fit(keys, budget - len(json.dumps(compact["failed_keys"])))
    return compact


def _items(report: Mapping[str, object], name: str) -> list[object]:
    value = report.get(name)
    return list(value) if isinstance(value, list) else []


def _fit(items: list[object], budget: int) -> list[object]:
    out: list[object] = []
    used = 2
    for item in items:
        size = len(json.dumps(item, separators=(",", ":"))) + 1
        if used + size > budget:
            break
        out.append(item)
        used += size
    return out


def canonical_report(report: Mapping[str, object]) -> bytes:
    unsigned = {k: v for k, v in report.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def sign_report(report: Mapping[str, object], key: JoseKey) -> dict[str, object]:
    """The report with ``signature`` added (replacing any old one)."""
    unsigned = {k: v for k, v in report.items() if k != "signature"}
    return {**unsigned, "signature": jws_sign(canonical_report(unsigned), key)}


def verify_report(report: Mapping[str, object], key: JoseKey) -> None:
    """Require a ``signature`` by ``key`` over exactly this report; ``SignatureError`` otherwise."""
    signature = report.get("signature")
    if not isinstance(signature, str):
        raise SignatureError("report is not signed, but the node enrolled a signing key")
    payload = jws_verify(signature, key, where="confirmation signature")
    if payload != canonical_report(report):
        raise SignatureError("confirmation signature covers a different report")


def confirmation_message(
    dist_id: str,
    control_zone: dns.name.Name | str,
    report: Mapping[str, object],
    signer: JoseKey | None,
) -> dns.message.Message:
    """The NOTIFY that carries ``report`` (compacted, then signed when the node has a key).

    Always fits one DNS message: compaction keeps the signed option under 64 KiB."""
    compact = compact_report(report)
    body = sign_report(compact, signer) if signer is not None else compact
    message = dns.message.make_query(
        notify_name(dist_id, control_zone), dns.rdatatype.RdataType.make(CHUNK_TYPE)
    )
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
    option = ChunkOption(CONTENT_KEY_STATUS, json.dumps(body, separators=(",", ":")).encode())
    message.use_edns(0, 0, 4096, options=[option])
    return message
