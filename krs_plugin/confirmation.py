"""The key status report a KRS sends back to the KDC (PROTOCOL.md section 6), and its signature.

tdns identifies the node by the packet's source address only. Ours adds ``node_id`` and
``signature``: a compact JWS ES256 by the node's P-256 key whose payload is the report without
``signature`` as canonical JSON (sorted keys, no spaces). Shared by the KRS (signs) and the KDC
(verifies), so both sides serialize the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from krs_plugin.crypto import JoseKey
from krs_plugin.crypto.jose import jws_sign, jws_verify
from krs_plugin.errors import SignatureError


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
