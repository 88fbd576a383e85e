"""Pushing a child's DS set to a parent the operator controls (docs/lifecycle.md, "Pushing the
DS"; issue 23): an RFC 2136 UPDATE signed with TSIG to the parent's primary, replacing the DS
RRset in one message, as Knot's ds-push does; or a hook command given the DS lines on stdin.

A push is only a request: the engine still waits until it sees the DS on every parent address
(parent.py). So ``push_ds`` never raises for the parent's or the hook's failure; ``PushResult``
says what happened in words the operator can act on. The TSIG secret is never put in a detail.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from krs_plugin.kdc.parent import split_address
from krs_plugin.tsigkey import TsigKeyFileError, read_tsig_key

HOOK_TAIL = 500  # characters of a failing hook's stderr kept in the detail


@dataclass(frozen=True)
class PushConfig:
    update: str | None = None
    """"host:port" of the parent's primary taking RFC 2136 UPDATE."""
    tsig_file: str | None = None
    """BIND key file as tsig-keygen writes it; must not be world-readable."""
    parent_zone: str | None = None
    """The zone to update; found by SOA queries at ``update`` when None."""
    hook: str | None = None
    """A command (shlex-split, no shell) given the DS lines on stdin and KRS_ZONE."""
    timeout: float = 10.0


@dataclass(frozen=True)
class PushResult:
    ok: bool
    detail: str


# --- the DS lines ----------------------------------------------------------------------------


def ds_records(zone: dns.name.Name, lines: Sequence[str]) -> list[dns.rdata.Rdata]:
    """DS rdatas from "child. [TTL] IN DS tag alg dt digest" lines (krs-kdc zone ds) or bare
    "tag alg dt digest"; a line owned by another name is refused (ValueError)."""
    records = []
    for line in lines:
        text = line.split(";")[0].strip()
        if not text:
            continue
        fields = text.split()
        upper = [f.upper() for f in fields]
        if "DS" in upper:
            at = upper.index("DS")
            owner = dns.name.from_text(fields[0])
            if owner != zone:
                raise ValueError(f"DS line for {owner}, not {zone}: {text}")
            text = " ".join(fields[at + 1 :])
        records.append(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, text))
    return records


def ds_lines(zone: dns.name.Name, records: Sequence[dns.rdata.Rdata], ttl: int) -> str:
    return "".join(f"{zone.to_text()} {ttl} IN DS {r.to_text()}\n" for r in records)


# --- UPDATE ----------------------------------------------------------------------------------


def _find_zone(host: str, port: int, child: dns.name.Name, timeout: float) -> dns.name.Name:
    """The nearest ancestor of ``child`` the server answers an authoritative SOA for."""
    candidate = child
    while candidate != dns.name.root:
        candidate = candidate.parent()
        query = dns.message.make_query(candidate, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        reply = dns.query.tcp(query, host, port=port, timeout=timeout)
        if reply.flags & dns.flags.AA and reply.get_rrset(
            reply.answer, candidate, dns.rdataclass.IN, dns.rdatatype.SOA
        ):
            return candidate
    raise ValueError(f"{host}:{port} is authoritative for no zone above {child}")


def _update(
    child: dns.name.Name, records: Sequence[dns.rdata.Rdata], config: PushConfig, ttl: int
) -> PushResult:
    assert config.update is not None
    if config.tsig_file is None:
        return PushResult(False, "UPDATE: no TSIG key file configured (tsig_file)")
    try:
        key = read_tsig_key(config.tsig_file)
        host, port = split_address(config.update)
    except (TsigKeyFileError, ValueError) as error:
        return PushResult(False, f"UPDATE not sent: {error}")
    where = config.update
    try:
        if config.parent_zone:
            zone = dns.name.from_text(config.parent_zone)
        else:
            zone = _find_zone(host, port, child, config.timeout)
        message = dns.update.UpdateMessage(zone)
        message.use_tsig(key)
        message.delete(child, dns.rdatatype.DS)
        for record in records:
            message.add(child, ttl, record)
        reply = dns.query.tcp(message, host, port=port, timeout=config.timeout)
    except dns.tsig.PeerBadSignature:
        return PushResult(False, f"TSIG: BADSIG (from {where}: the key's secret differs)")
    except dns.tsig.PeerBadKey:
        return PushResult(
            False,
            f"TSIG: BADKEY (from {where}: key {key.name} is unknown there "
            "or not allowed this update)",
        )
    except dns.tsig.PeerBadTime:
        return PushResult(False, f"TSIG: BADTIME (from {where}: the clocks differ)")
    except dns.tsig.PeerError as error:
        return PushResult(False, f"TSIG: {error} (from {where})")
    except dns.tsig.BadSignature:
        return PushResult(False, f"TSIG: the answer from {where} has a bad signature")
    except dns.exception.FormError as error:
        if "requires a TSIG" not in str(error):
            return PushResult(False, f"UPDATE to {where}: {error}")
        # Knot 3.4 answers an UPDATE its ACL denies unsigned, where Knot 3.2 sent BADKEY.
        return PushResult(
            False,
            f"TSIG: unsigned answer (from {where}: key {key.name} is unknown there "
            "or not allowed this update)",
        )
    except dns.exception.Timeout:
        return PushResult(False, f"UPDATE to {where}: timeout")
    except ConnectionRefusedError:
        return PushResult(False, f"UPDATE to {where}: connection refused")
    except (OSError, EOFError) as error:
        return PushResult(False, f"UPDATE to {where}: network error: {error}")
    except (dns.exception.DNSException, ValueError) as error:
        return PushResult(False, f"UPDATE to {where}: {error}")
    rcode = reply.rcode()
    name = dns.rcode.to_text(rcode)
    if rcode == dns.rcode.NOERROR:
        return PushResult(True, f"UPDATE to {where} NOERROR ({len(records)} DS)")
    if rcode == dns.rcode.REFUSED:
        return PushResult(False, f"UPDATE refused: REFUSED (by {where}, zone {zone})")
    if rcode == dns.rcode.NOTAUTH:
        return PushResult(
            False,
            f"UPDATE refused: NOTAUTH ({where} is not the primary of {zone}, "
            "or it does not accept the key)",
        )
    return PushResult(False, f"UPDATE failed: {name} (from {where}, zone {zone})")


# --- the hook --------------------------------------------------------------------------------


def _hook(zone: dns.name.Name, text: str, config: PushConfig, count: int) -> PushResult:
    assert config.hook is not None
    try:
        argv = shlex.split(config.hook)
    except ValueError as error:
        return PushResult(False, f"hook not run: {error}")
    if not argv:
        return PushResult(False, "hook not run: empty command")
    try:
        done = subprocess.run(
            argv,
            input=text,
            capture_output=True,
            text=True,
            timeout=config.timeout,
            env={**os.environ, "KRS_ZONE": zone.to_text()},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return PushResult(False, f"hook timed out after {config.timeout:g}s: {argv[0]}")
    except OSError as error:
        return PushResult(False, f"hook not run: {argv[0]}: {error.strerror or error}")
    tail = done.stderr.strip()[-HOOK_TAIL:]
    if done.returncode != 0:
        what = (
            f"killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exited {done.returncode}"
        )
        return PushResult(False, f"hook {what}: {tail}" if tail else f"hook {what}")
    return PushResult(True, f"hook exited 0 ({count} DS)")


def push_ds(zone: str, ds: Sequence[str], config: PushConfig, *, ttl: int = 3600) -> PushResult:
    """Replace ``zone``'s DS RRset at the parent with ``ds`` by UPDATE and/or the hook (both
    when both are configured: ok only if both are). Never raises for the parent or the hook."""
    child = dns.name.from_text(zone)
    try:
        records = ds_records(child, ds)
    except (dns.exception.DNSException, ValueError) as error:
        return PushResult(False, f"bad DS: {error}")
    if not records:
        return PushResult(False, "no DS to push (deleting the DS RRset is not a push)")
    if config.update is None and config.hook is None:
        return PushResult(False, "nowhere to push: neither an UPDATE server nor a hook")
    results = []
    if config.update is not None:
        results.append(_update(child, records, config, ttl))
    if config.hook is not None:
        results.append(_hook(child, ds_lines(child, records, ttl), config, len(records)))
    return PushResult(all(r.ok for r in results), "; ".join(r.detail for r in results))
