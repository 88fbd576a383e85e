"""The resync request (ours; tdns has nothing like it): a KRS whose server lacks keys that it
installed asks the KDC to send its keys again (docs/protocol.md section 9).

The KRS keeps no private key once installed, so it cannot put a key back by itself: when its
server lost keys (a key folder emptied, another adapter configured) it sends this request, and the
KDC answers with a new distribution of the node's keys for all its zones. The request is a NOTIFY
for ``_resync.<control-zone>`` QTYPE CHUNK carrying EDNS0 option 65004 with content byte
``CONTENT_RESYNC`` and the JSON body ``{"node_id", "time", "reason", "zones", "signature"}``;
``signature`` is a compact JWS ES256 by the node's P-256 signing key over the body without it, as
canonical JSON (as a confirmation's, ``confirmation.canonical_report``). Shared by the KRS (builds
and signs) and the KDC (parses and checks), so both sides serialize the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype

from krs_plugin.confirmation import key_ref, notify_with_body, sign_report, verify_signed
from krs_plugin.crypto import JoseKey
from krs_plugin.errors import PolicyError
from krs_plugin.protocol import find_chunk_option
from krs_plugin.protocol.edns import CONTENT_RESYNC

RESYNC_LABEL = b"_resync"
MAX_REASON = 300  # characters of ``reason`` kept; the KDC logs it
MAX_ZONES_SENT = 200  # zones named in a request (informative: the KDC resends every zone)...
MAX_ZONES_BYTES = 300  # ...in about this much JSON: a request stays a few KB


def resync_name(control_zone: dns.name.Name | str) -> dns.name.Name:
    origin = (
        control_zone
        if isinstance(control_zone, dns.name.Name)
        else dns.name.from_text(control_zone)
    )
    return dns.name.Name((RESYNC_LABEL, *origin.labels))


def resync_message(
    node_id: str,
    control_zone: dns.name.Name | str,
    zones: Sequence[str],
    reason: str,
    signer: JoseKey,
    *,
    now: float | None = None,
) -> dns.message.Message:
    """The signed NOTIFY asking the KDC for the node's keys again, stamped ``now``."""
    named: list[str] = []
    for zone in zones[:MAX_ZONES_SENT]:
        if sum(len(z) + 3 for z in named) + len(zone) > MAX_ZONES_BYTES:
            break
        named.append(zone)
    body: dict[str, object] = {
        "node_id": node_id,
        "time": int(time.time() if now is None else now),
        "reason": reason[:MAX_REASON],
        "zones": named,
        "zone_count": len(zones),
    }
    return notify_with_body(resync_name(control_zone), CONTENT_RESYNC, sign_report(body, signer))


def is_resync(query: dns.message.Message, origin: dns.name.Name) -> bool:
    """A NOTIFY for ``_resync.<cz>``, or one carrying the resync content byte."""
    if query.question and query.question[0].name == resync_name(origin):
        return True
    option = find_chunk_option(query.options)
    return option is not None and option.content == CONTENT_RESYNC


def parse_request(query: dns.message.Message) -> dict[str, object]:
    """The request's JSON body; PolicyError when it has none or it is not a JSON object."""
    option = find_chunk_option(query.options)
    if option is None or option.content != CONTENT_RESYNC:
        raise PolicyError("no resync body (EDNS0 option 65004 with content 0x80)")
    try:
        body = json.loads(option.body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PolicyError(f"the resync body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise PolicyError("the resync body is not a JSON object")
    return body


def requesting_node(body: Mapping[str, object]) -> str:
    node = body.get("node_id")
    if not isinstance(node, str) or not node.strip():
        raise PolicyError("the resync request does not name its node (no node_id)")
    return key_ref(node[:255], "")[0]


def check_request(
    body: Mapping[str, object], key: JoseKey, *, now: float, clock_skew: float
) -> None:
    """Require ``signature`` by the node's ``key`` over exactly this body and a ``time`` within
    ``clock_skew`` of ``now``; SignatureError or PolicyError naming what is wrong."""
    verify_signed(
        body,
        key,
        where="resync request signature",
        unsigned="the resync request is not signed",
        changed="the resync request's signature covers a different body",
    )
    stamp = body.get("time")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise PolicyError("the resync request carries no time (Unix seconds)")
    if abs(stamp - now) > clock_skew:
        raise PolicyError(
            f"the resync request's time is {stamp - now:+.0f} s from the KDC's clock "
            f"(allowed clock skew {clock_skew:.0f} s)"
        )


def describe(body: Mapping[str, object]) -> tuple[str, list[str]]:
    """The request's reason and zones, cut to what a log line holds."""
    reason = body.get("reason")
    zones = body.get("zones")
    text = reason[:MAX_REASON] if isinstance(reason, str) else "no reason given"
    names = (
        [z[:255] for z in zones[:MAX_ZONES_SENT] if isinstance(z, str)]
        if isinstance(zones, list)
        else []
    )
    return text, names
