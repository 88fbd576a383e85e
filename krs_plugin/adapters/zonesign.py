"""Sign a zone file with a folder of BIND key files, for servers that do not sign (NSD).

Two signers, both from Debian packages: ``dnssec-signzone`` (bind9-utils, the default) and
``ldns-signzone`` (ldnsutils). What each needs, verified by hand (docs/servers/nsd.md):

- dnssec-signzone ``-S`` (smart signing) takes the keys from the folder by their timing and
  checks its own output (a mismatched key pair fails with "Zone verification failed"); ``-x``
  signs the DNSKEY RRset with the KSKs only; it writes ``dsset-`` files into its working
  directory, so it runs in a temporary one.
- ldns-signzone ignores timing and does not check its output: the signer is given exactly the
  active keys, the DNSKEYs of keys published but not active are added to its input, ``-U``
  makes every algorithm sign every RRset (otherwise a CSK next to another algorithm's ZSK only
  signs the DNSKEY RRset), and its output is checked with ``ldns-verify-zone``.

A key that signs without being published (an activate time and no publish time: an algorithm
rollover, dnscheck.signs_unpublished) is given to dnssec-signzone as a copy of its files whose
Publish time is far in the future, so ``-S`` signs with it and leaves its DNSKEY out (a key
file without a Publish time is published: measured on 9.18.49); ldns-signzone is given it as a
signing key with ``-d``, which adds no DNSKEY of the keys given, the DNSKEYs of the published
keys then being added to its input (measured on 1.8.3; docs/lifecycle.md).

The CDS and CDNSKEY the zone serves (docs/payload.md, ``cds``) are records the adapter adds to
that copy: both signers sign them like the rest (dnssec-signzone ``-x`` with the KSKs, as the
DNSKEY RRset); the key files carry no SyncPublish/SyncDelete, so dnssec-signzone leaves them as
given (tested against NSD 4.6.1).

Both sign a copy of the unsigned file whose SOA serial the adapter chose (``soaserial``), and keep
it (``-N keep``; ldns-signzone without ``-u``): the signers' Unix-time serial goes backwards under
a date serial. Because the copy lives in a temporary directory, ``$INCLUDE`` paths in the unsigned
file must be absolute. Every signed file is also checked with ``nsd-checkzone`` by the adapter
before it replaces the served one.
"""

from __future__ import annotations

import calendar
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import dns.name

from krs_plugin.adapters.dnscheck import is_published, is_unpublished, signs_unpublished
from krs_plugin.adapters.keyfiles import KeyFolder, write_key_files
from krs_plugin.adapters.soaserial import with_serial
from krs_plugin.adapters.tools import run_tool
from krs_plugin.errors import AdapterError

SIGNERS = ("dnssec-signzone", "ldns-signzone")
VERIFIER = {"dnssec-signzone": None, "ldns-signzone": "ldns-verify-zone"}


@dataclass(frozen=True)
class SignedZone:
    path: Path
    seconds: float


def sign_zone(
    signer: str,
    zone: dns.name.Name,
    unsigned: Path,
    keys: KeyFolder,
    output: Path,
    *,
    serial: int,
    validity: int,
    timeout: float,
    extra: Sequence[str] = (),
) -> SignedZone:
    """Sign ``unsigned`` with the zone's keys in the folder ``keys`` into ``output`` (a new file
    beside the served one), with SOA serial ``serial``; raises with the signer's message when it
    fails, or when no key is active. ``extra``: records (zone file lines) added to the zone and
    signed with it (the CDS and CDNSKEY)."""
    start = time.perf_counter()
    now = int(time.time())
    origin = zone.to_text()
    if signer not in SIGNERS:
        raise AdapterError(f"unknown signer {signer!r} (one of: {', '.join(SIGNERS)})")
    with tempfile.TemporaryDirectory(prefix="krs-sign-") as scratch:
        work = Path(scratch)
        # Latin-1 both ways: the file's bytes pass through unchanged, whatever its encoding.
        text = with_serial(unsigned.read_text(encoding="latin-1"), serial)
        if extra:
            text += "\n" + "".join(f"{line}\n" for line in extra)
        source = work / "input.zone"
        if signer == "dnssec-signzone":
            # -x: the DNSKEY RRset by the KSKs only. When an algorithm has keys of one kind
            # only (a CSK, a lone ZSK), -z lets every key sign everything, as BIND does. A key
            # that signs unpublished (an algorithm rollover's new ZSK) does not count: with -z
            # the old algorithm's KSK would sign the zone data too, which no node is to serve.
            if not _active_roles(zone, keys, now):
                raise AdapterError(f"dnssec-signzone {origin}: no active key to sign with")
            roles = _active_roles(zone, keys, now, published_only=True)
            split = ["-x"] if all(r == {"KSK", "ZSK"} for r in roles.values()) else ["-z"]
            source.write_text(text, encoding="latin-1")
            folder = _with_unpublished_hidden(zone, keys, work / "keys", now)
            run_tool(
                [
                    "dnssec-signzone", "-S", *split, "-O", "full", "-K", str(folder),
                    "-o", origin,
                    "-N", "keep", "-s", str(now - 3600), "-e", str(now + validity),
                    "-f", str(output), str(source),
                ],
                f"dnssec-signzone {origin}",
                timeout=timeout,
                cwd=work,
            )  # fmt: skip
        else:
            _ldns_sign(zone, text, keys, output, source, now, validity, timeout)
    return SignedZone(output, time.perf_counter() - start)


HIDDEN_FOR = 10 * 365 * 86400
"""How far in the future the Publish time of a key that signs unpublished is put in the copy of
its files dnssec-signzone is given (it is signed again long before)."""


def _with_unpublished_hidden(zone: dns.name.Name, keys: KeyFolder, scratch: Path, now: int) -> Path:
    """The key folder dnssec-signzone is given: ``keys`` itself, or, when a key of ``zone`` signs
    unpublished, a copy of the zone's key files in ``scratch`` in which such keys have a Publish
    time far in the future."""
    read = keys.read_keys(zone)
    if not any(is_unpublished(timing) for _, _, timing in read):
        return keys.path
    scratch.mkdir(mode=0o700)
    for _, key, timing in read:
        if is_unpublished(timing):
            timing = replace(timing, publish=now + HIDDEN_FOR)
        write_key_files(scratch, key, timing)
    return scratch


def _active_roles(
    zone: dns.name.Name, keys: KeyFolder, now: int, *, published_only: bool = False
) -> dict[int, set[str]]:
    """The roles of the zone's active keys, per algorithm (``published_only``: of those whose
    DNSKEY the zone serves)."""
    roles: dict[int, set[str]] = {}
    for _, key, timing in keys.read_keys(zone):
        if published_only and signs_unpublished(timing, now):
            continue
        active = timing.activate is not None and timing.activate <= now
        if active and (timing.inactive is None or timing.inactive > now):
            roles.setdefault(key.algorithm, set()).add("KSK" if key.flags == 257 else "ZSK")
    return roles


def _ldns_sign(
    zone: dns.name.Name,
    text: str,
    keys: KeyFolder,
    output: Path,
    source: Path,
    now: int,
    validity: int,
    timeout: float,
) -> None:
    active, published, shown = [], [], []
    read = keys.read_keys(zone)
    hidden = any(signs_unpublished(timing, now) for _, _, timing in read)
    for private, key, timing in read:
        is_active = timing.activate is not None and timing.activate <= now
        is_active &= timing.inactive is None or timing.inactive > now
        gone = timing.delete is not None and timing.delete <= now
        if is_published(timing, now):
            shown.append(key.dnskey_text())
        if is_active and not gone:
            active.append(str(private.with_suffix("")))
        elif not gone and is_published(timing, now):
            published.append(key.dnskey_text())
    if not active:
        raise AdapterError(f"ldns-signzone {zone}: no active key to sign with")
    if hidden:  # -d: ldns adds no DNSKEY of the keys given; every published one is in the input
        published = shown
    with open(source, "w", encoding="latin-1") as out:
        out.write(text)
        out.write("\n" + "".join(f"{line}\n" for line in published))
    origin = zone.to_text()
    run_tool(
        [
            "ldns-signzone", "-U", *(["-d"] if hidden else []), "-o", origin,
            "-i", str(now - 3600),
            "-e", str(now + validity), "-f", str(output), str(source), *active,
        ],
        f"ldns-signzone {origin}",
        timeout=timeout,
        cwd=source.parent,
    )  # fmt: skip
    run_tool(["ldns-verify-zone", str(output)], f"ldns-verify-zone {origin}", timeout=timeout)


def check_zone_file(zone: dns.name.Name, path: Path, timeout: float) -> None:
    """NSD's own parser on the file: a file NSD cannot read must never be served (NSD would
    load it "with success" and answer SERVFAIL)."""
    what = f"nsd-checkzone {zone.to_text()}"
    run_tool(["nsd-checkzone", zone.to_text(), str(path)], what, timeout=timeout)


def earliest_expiry(path: Path) -> int | None:
    """The earliest RRSIG expiration in a signed zone file (Unix seconds), None if unsigned.
    Both signers write one record per line (dnssec-signzone with ``-O full``)."""
    earliest: int | None = None
    try:
        with open(path) as lines:
            for line in lines:
                if "RRSIG" not in line:
                    continue
                fields = line.split()
                at = fields.index("RRSIG") if "RRSIG" in fields else -1
                if at < 0 or len(fields) <= at + 5 or not fields[at + 5].isdigit():
                    continue
                when = calendar.timegm(time.strptime(fields[at + 5], "%Y%m%d%H%M%S"))
                earliest = when if earliest is None else min(earliest, when)
    except FileNotFoundError:
        return None
    return earliest


def signer_available(signer: str) -> bool:
    needed = [signer] + ([v] if (v := VERIFIER.get(signer)) else [])
    return all(shutil.which(tool) is not None for tool in needed)
