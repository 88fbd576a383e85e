"""The key status report a KRS sends back to the KDC (docs/protocol.md section 6), and its
signature.

tdns identifies the node by the packet's source address only. Ours adds ``distribution_id``,
``node_id``, ``time`` and ``signature``: a compact JWS ES256 by the node's P-256 key whose payload
is the report without ``signature`` as canonical JSON (sorted keys, no spaces). The signature thus
binds the report to one distribution, one node and one moment, and ``check_binding`` is the KDC's
check that they are the ones it expects (docs/protocol.md section 6). Shared by the KRS (signs) and
the KDC (verifies), so both sides serialize the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype

from krs_plugin.crypto import JoseKey
from krs_plugin.crypto.jose import jws_sign, jws_verify
from krs_plugin.errors import STAGES, PolicyError, SignatureError
from krs_plugin.protocol import CHUNK_TYPE, ChunkOption, notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS

if TYPE_CHECKING:
    from krs_plugin.adapters.base import ApplyResult

MAX_REPORT_BYTES = 24 * 1024
"""A report travels in one EDNS0 option (DataLength is 16 bits, so under 64 KiB) of one DNS
message, and a signed report carries it twice: as JSON and base64url-encoded inside the JWS
(4/3 of it). 24 KiB x (1 + 4/3) plus the JWS header and the message stays under 64 KiB."""


MAX_ERROR_CHARS = 1000
"""A failure report's ``error`` is cut to this many characters; each ``failed_keys`` entry's to
``MAX_KEY_ERROR_CHARS``. Even escaped (6 bytes a character) the error leaves most of
``MAX_REPORT_BYTES`` to the keys, which ``compact_report`` cuts to fit."""
MAX_KEY_ERROR_CHARS = 200
FAILURE_OUTCOMES = ("rejected", "failed")
"""``outcome`` of a failure report (errors.outcome_of): the node refused the KDC's data, or
failed on its own side and tries again."""


def failure_report(
    node_id: str,
    outcome: str,
    stage: str,
    error: str,
    keys: Sequence[tuple[str, int | str]] = (),
) -> dict[str, object]:
    """The report of a distribution this node rejected or failed to apply (docs/protocol.md
    section 6): tdns's ``failed_keys`` (every key of ``keys``: a distribution is applied all or
    nothing), empty when the keys are unknown (the payload was not read), and ours ``outcome``,
    ``stage`` and ``error``, cut to ``MAX_ERROR_CHARS``."""
    if outcome not in FAILURE_OUTCOMES or stage not in STAGES:
        raise ValueError(f"not a failure: outcome {outcome!r} at stage {stage!r}")
    short = clip(error, MAX_KEY_ERROR_CHARS)
    return {
        "node_id": node_id,
        "successful_keys": [],
        "failed_keys": [
            {"zone_name": zone, "key_id": str(tag), "error": short} for zone, tag in keys
        ],
        "outcome": outcome,
        "stage": stage,
        "error": clip(error, MAX_ERROR_CHARS),
    }


def clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, one line: control characters (a newline in a
    server's message) become spaces, so it cannot forge log lines; "..." marks a cut."""
    flat = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class Failure:
    """What the KDC records of a failure report (``failure_of``)."""

    outcome: str  # rejected | failed
    stage: str | None  # errors.STAGES; None from a tdns KRS, which does not say
    error: str  # the node's reason, one line, at most MAX_ERROR_CHARS


def failure_of(report: Mapping[str, object]) -> Failure | None:
    """The failure a report tells of, or None for a success: ours name ``outcome``; a tdns report
    with ``failed_keys`` is a failure too (its reason: the first key's ``error``)."""
    outcome = report.get("outcome")
    failed = _items(report, "failed_keys")
    if outcome not in FAILURE_OUTCOMES and not failed:
        return None
    stage = report.get("stage")
    error = report.get("error")
    if not isinstance(error, str) or not error.strip():
        first = failed[0] if failed else {}
        reason = first.get("error") if isinstance(first, dict) else None
        error = reason if isinstance(reason, str) and reason else f"{len(failed)} key(s) failed"
    return Failure(
        outcome if isinstance(outcome, str) and outcome in FAILURE_OUTCOMES else "failed",
        stage if isinstance(stage, str) and stage in STAGES else None,
        clip(error, MAX_ERROR_CHARS),
    )


def compact_report(
    report: Mapping[str, object], limit: int = MAX_REPORT_BYTES
) -> dict[str, object]:
    """Fit a report for thousands of zones into one message.

    A KRS applies a distribution all or nothing, so ``failed_keys`` is empty when it confirms
    success; the list of successful keys is then cut to what fits and ``successful_count``
    (ours) says how many there were. A KDC confirms on "no failed keys", so the meaning is kept.
    ``served`` (ours) is cut first, to the zones that fit in what the keys leave (at least half
    of ``limit``), ``covered`` saying how many (``_compact_served``).
    Reports that fit, which is every tdns-sized one, are returned unchanged."""
    if len(canonical_report(report)) <= limit:
        return dict(report)
    keys, failed = _items(report, "successful_keys"), _items(report, "failed_keys")
    compact = dict(report)
    _compact_served(compact, limit)
    if len(canonical_report(compact)) <= limit:
        return compact
    compact.update(successful_count=len(keys), failed_count=len(failed))
    budget = limit - len(canonical_report({**compact, "successful_keys": [], "failed_keys": []}))
    compact["failed_keys"] = _fit(failed, budget // 2 if keys else budget)
    compact["successful_keys"] = _fit(keys, budget - len(json.dumps(compact["failed_keys"])))
    return compact


def served_part(adapter: str, results: Iterable[ApplyResult]) -> dict[str, object]:
    """The report's ``served`` (ours): each zone's served state as the adapter read it after
    applying (``ApplyResult.served``), ``zone_count`` of them; for an adapter without a server
    (directory) ``zones`` is empty and ``absent`` says why."""
    results = list(results)
    # the adapter's dicts as they are (a copy of each, 10,000 zones, was 6 MB at the moment the
    # report is stored); only another Mapping is copied into one
    zones = [
        r.served if type(r.served) is dict else dict(r.served)
        for r in results
        if r.served is not None
    ]
    served: dict[str, object] = {"zones": zones, "zone_count": len(zones)}
    if not zones and results:
        served["absent"] = f"the {adapter} adapter has no server to read from"
    return served


def _compact_served(report: dict[str, object], limit: int) -> None:
    """Cut ``served.zones`` (in place, in the report's order) to what leaves the rest of the
    report room: at most the larger of half of ``limit`` and what the rest leaves free. ``covered``
    says how many zones the cut list holds, ``zone_count`` how many were read."""
    served = report.get("served")
    if not isinstance(served, dict) or not isinstance(served.get("zones"), list):
        return
    zones = served["zones"]
    rest = len(canonical_report({**report, "served": {**served, "zones": []}}))
    budget = max(limit // 2, limit - rest) - 64  # room for "covered"
    kept = _fit(list(zones), budget)
    if len(kept) < len(zones):
        report["served"] = {**served, "zones": kept, "covered": len(kept)}


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
    verify_signed(
        report,
        key,
        where="confirmation signature",
        unsigned="report is not signed, but the node enrolled a signing key",
        changed="confirmation signature covers a different report",
    )


def verify_signed(
    body: Mapping[str, object], key: JoseKey, *, where: str, unsigned: str, changed: str
) -> None:
    """The one check of a node-signed JSON body (a report, a resync request): ``signature`` is a
    JWS by ``key`` over ``canonical_report(body)``; ``SignatureError`` with the given texts."""
    signature = body.get("signature")
    if not isinstance(signature, str):
        raise SignatureError(unsigned)
    if jws_verify(signature, key, where=where) != canonical_report(body):
        raise SignatureError(changed)


def confirmation_message(
    dist_id: str,
    control_zone: dns.name.Name | str,
    report: Mapping[str, object],
    signer: JoseKey | None,
    *,
    node_id: str | None = None,
    now: float | None = None,
) -> dns.message.Message:
    """The NOTIFY that carries ``report`` (bound, compacted, then signed when the node has a key).

    The report is bound to ``dist_id``, ``node_id`` (when given) and the current time here, when it
    is sent, so a retry hours later still carries a fresh ``time``. Always fits one DNS message:
    compaction keeps the signed option under 64 KiB."""
    bound = {**report, "distribution_id": dist_id, "time": int(time.time() if now is None else now)}
    if node_id is not None:
        bound["node_id"] = node_id
    compact = compact_report(bound)
    body = sign_report(compact, signer) if signer is not None else compact
    return notify_with_body(notify_name(dist_id, control_zone), CONTENT_KEY_STATUS, body)


def notify_with_body(
    qname: dns.name.Name, content: int, body: Mapping[str, object]
) -> dns.message.Message:
    """A node's NOTIFY to the KDC (a confirmation, a resync request): QTYPE CHUNK, AA set, the
    JSON ``body`` in the CHUNK EDNS0 option with its content byte (docs/protocol.md)."""
    message = dns.message.make_query(qname, dns.rdatatype.RdataType.make(CHUNK_TYPE))
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
    option = ChunkOption(content, json.dumps(body, separators=(",", ":")).encode())
    message.use_edns(0, 0, 4096, options=[option])
    return message


# --- the KDC's check of what a signed report is bound to (docs/protocol.md section 6) ----------


def key_ref(zone: object, key_id: object) -> tuple[str, str]:
    """How a key is named in a report and in the KDC's record of what it sent: the zone
    lower-case and absolute, the key tag as decimal text."""
    name = str(zone).strip().lower()
    return (name if name.endswith(".") else name + ".", str(key_id).strip())


@dataclass(frozen=True)
class Expected:
    """What the KDC knows of one distribution to one node."""

    distribution_id: str  # from the NOTIFY's QNAME
    node_id: str  # the enrolled node whose key verified the signature
    created_at: int  # when the KDC made the distribution (Unix seconds)
    sent_keys: Collection[tuple[str, str]] | None  # ``key_ref``s; None: not recorded


def check_binding(
    report: Mapping[str, object], expected: Expected, *, now: float, clock_skew: float
) -> None:
    """Require a (verified) report to be for this distribution, this node, now, and to list only
    keys the distribution sent to the node; ``PolicyError`` naming the first mismatch otherwise.

    A signature proves who wrote the report, not what it answers: without these a report captured
    for one distribution confirms any later one (issue 20, finding 1)."""
    dist_id = report.get("distribution_id")
    if not isinstance(dist_id, str):
        raise PolicyError("the report does not name its distribution (no distribution_id)")
    if dist_id != expected.distribution_id:
        raise PolicyError(
            f"the report is for distribution {dist_id[:32]!r}, "
            f"the NOTIFY for {expected.distribution_id}"
        )
    node = report.get("node_id")
    if not isinstance(node, str):
        raise PolicyError("the report does not name its node (no node_id)")
    if key_ref(node, "")[0] != expected.node_id:
        raise PolicyError(f"the report is from node {node[:255]!r}, not {expected.node_id}")
    stamp = report.get("time")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise PolicyError("the report carries no time (Unix seconds)")
    if stamp > now + clock_skew:
        raise PolicyError(
            f"the report's time is {stamp - now:.0f} s in the future "
            f"(allowed clock skew {clock_skew:.0f} s)"
        )
    if stamp < now - clock_skew:
        raise PolicyError(
            f"the report's time is {now - stamp:.0f} s old (allowed clock skew {clock_skew:.0f} s)"
        )
    if stamp < expected.created_at - clock_skew:
        raise PolicyError(
            f"the report's time {stamp} is before distribution {expected.distribution_id} "
            f"was created ({expected.created_at})"
        )
    _check_failure_fields(report)
    zones = served_zones(report)
    if expected.sent_keys is None:
        return  # a distribution stored before the KDC recorded its keys: nothing to compare
    sent_zones = {zone for zone, _ in expected.sent_keys}
    for state in zones:
        zone = key_ref(state["zone"], "")[0]
        if zone not in sent_zones:
            raise PolicyError(
                f"the report's served data names zone {zone[:255]}, which distribution "
                f"{expected.distribution_id} did not send to {expected.node_id}"
            )
    for name in ("successful_keys", "failed_keys"):
        items = report.get(name, [])
        if not isinstance(items, list):
            raise PolicyError(f"the report's {name} is not a list")
        for item in items:
            if not isinstance(item, dict) or "zone_name" not in item or "key_id" not in item:
                raise PolicyError(f"the report's {name} has a malformed entry")
            ref = key_ref(item["zone_name"], item["key_id"])
            if ref not in expected.sent_keys:
                raise PolicyError(
                    f"the report's {name} names key {ref[1][:16]} of {ref[0][:255]}, which "
                    f"distribution {expected.distribution_id} did not send to {expected.node_id}"
                )


SERVED_NUMBERS = (
    "read_at",
    "soa_serial",
    "soa_ttl",
    "soa_minimum",
    "soa_rrsig_inception",
    "soa_rrsig_expiration",
    "dnskey_ttl",
)
SERVED_LISTS = ("dnskey", "dnskey_signers", "soa_signers", "cds", "cdnskey")


def served_zones(report: Mapping[str, object]) -> list[dict[str, object]]:
    """The per-zone entries of a report's ``served`` (ours; none when absent), each checked to
    be what our KRS sends: ``zone`` a name, each number an integer, each list a list, ``error``
    text. ``PolicyError`` naming the first that is not: the KDC records them as they are."""
    served = report.get("served")
    if served is None:
        return []
    if not isinstance(served, dict) or not isinstance(served.get("zones", []), list):
        raise PolicyError("the report's served is not an object with a list of zones")
    out = []
    for state in served.get("zones", []):
        if not isinstance(state, dict) or not isinstance(state.get("zone"), str):
            raise PolicyError("the report's served data has an entry without a zone")
        for name in SERVED_NUMBERS:
            value = state.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise PolicyError(
                    f"the report's served {name} of {state['zone'][:255]} is not an integer"
                )
        for name in SERVED_LISTS:
            if not isinstance(state.get(name, []), list):
                raise PolicyError(
                    f"the report's served {name} of {state['zone'][:255]} is not a list"
                )
        if not isinstance(state.get("error", ""), str):
            raise PolicyError(f"the report's served error of {state['zone'][:255]} is not text")
        out.append(state)
    return out


def _check_failure_fields(report: Mapping[str, object]) -> None:
    """A failure report's own members (ours), when present, must be what our KRS sends."""
    outcome, stage, error = report.get("outcome"), report.get("stage"), report.get("error")
    if outcome is not None and outcome not in FAILURE_OUTCOMES:
        raise PolicyError(f"the report's outcome {str(outcome)[:32]!r} is not rejected or failed")
    if stage is not None and stage not in STAGES:
        raise PolicyError(f"the report's stage {str(stage)[:32]!r} is not one of {STAGES}")
    if error is not None and not isinstance(error, str):
        raise PolicyError("the report's error is not text")


def same_outcome(recorded: Mapping[str, object], report: Mapping[str, object]) -> bool:
    """True when two reports say the same thing: equal apart from ``time`` and ``signature``
    (a retry of a report the KDC already recorded, re-signed when it was sent again)."""

    def claim(r: Mapping[str, object]) -> bytes:
        return canonical_report({k: v for k, v in r.items() if k != "time"})

    return claim(recorded) == claim(report)
