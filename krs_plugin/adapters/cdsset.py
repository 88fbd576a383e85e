"""The CDS and CDNSKEY a zone must serve, the same on every server (docs/payload.md, ``cds``).

A distribution marks each KSK or CSK ``publish`` (its CDS and CDNSKEY are served now),
``delete`` (the zone serves the RFC 8078 section 4 delete records) or nothing. What every adapter
serves from that, and what its verification asks of the server over DNS:

- the CDS set is exactly one CDS per marked key, digest type 2 (SHA-256), and one CDNSKEY per
  marked key, while the key is active (between its activate and inactive times): a retired key
  never keeps a CDS, on any server;
- ``delete`` is the CDS ``0 0 0 00`` and the CDNSKEY ``0 3 0 AA==``, and nothing else;
- both sets are reported as ``dnscheck.read_served`` reports them, ``[tag, algorithm, digest
  type]`` and ``[tag, algorithm, flags]``, so a node without a server (the directory adapter)
  reports the same lists.

A plan that installs keys says the zone's whole CDS state (our KDC sends every live key in each
distribution); keys the plan does not name keep their marking, and a plan without keys to
install keeps the zone's ``delete``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.CDNSKEY import CDNSKEY
from dns.rdtypes.ANY.CDS import CDS
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.adapters.base import KeyPlan
from krs_plugin.dnssec import KeyTiming
from krs_plugin.errors import KeyFileError
from krs_plugin.files import atomic_write

DIGEST_TYPE = 2  # SHA-256, the only one the KRS publishes
DELETE_CDS_TEXT = "0 0 0 00"
DELETE_CDNSKEY_TEXT = "0 3 0 AA=="

Entry = tuple[int, int, int]
Marking = tuple[frozenset[tuple[int, int]], bool]
"""A zone's CDS marking: the (tag, algorithm) of the keys marked ``publish``, and ``delete``."""
NO_MARKING: Marking = (frozenset(), False)


def _delete_cdnskey() -> CDNSKEY:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDNSKEY, DELETE_CDNSKEY_TEXT)
    assert isinstance(rdata, CDNSKEY)
    return rdata


DELETE_CDS: Entry = (0, 0, 0)
DELETE_CDNSKEY: Entry = (dns.dnssec.key_id(_delete_cdnskey()), 0, 0)


@dataclass(frozen=True)
class CdsSet:
    """The CDS (``[tag, algorithm, digest type]``) and CDNSKEY (``[tag, algorithm, flags]``)
    entries a zone serves; both empty: none."""

    cds: frozenset[Entry] = frozenset()
    cdnskey: frozenset[Entry] = frozenset()

    @classmethod
    def of_keys(cls, keys: Iterable[tuple[int, int, int]]) -> CdsSet:
        """The set for keys given as (tag, algorithm, flags)."""
        keys = list(keys)
        return cls(
            frozenset((tag, alg, DIGEST_TYPE) for tag, alg, _ in keys),
            frozenset((tag, alg, flags) for tag, alg, flags in keys),
        )

    @classmethod
    def delete(cls) -> CdsSet:
        return cls(frozenset({DELETE_CDS}), frozenset({DELETE_CDNSKEY}))

    def report(self) -> dict[str, list[list[int]]]:
        """As ``read_served`` reports them (sorted lists), for the confirmation."""
        return {
            "cds": sorted(list(e) for e in self.cds),
            "cdnskey": sorted(list(e) for e in self.cdnskey),
        }

    def describe(self) -> str:
        if self == CdsSet.delete():
            return "the delete CDS/CDNSKEY"
        if not self.cds:
            return "no CDS/CDNSKEY"
        return f"CDS/CDNSKEY of {sorted(tag for tag, _, _ in self.cds)}"


def has_cds(timing: KeyTiming, now: int) -> bool:
    """Whether a key marked ``publish`` has its CDS served at ``now``: while it is active."""
    if timing.activate is None or timing.activate > now:
        return False
    if timing.inactive is not None and timing.inactive <= now:
        return False
    return timing.delete is None or timing.delete > now


def expected(marked: Iterable[tuple[int, int, int, KeyTiming]], delete: bool, now: int) -> CdsSet:
    """What the zone serves at ``now``: the delete records, or the CDS/CDNSKEY of the marked
    keys (tag, algorithm, flags, timing) that are active."""
    if delete:
        return CdsSet.delete()
    return CdsSet.of_keys((tag, alg, flags) for tag, alg, flags, t in marked if has_cds(t, now))


def next_marking(plan: KeyPlan, published: Iterable[tuple[int, int]], delete: bool) -> Marking:
    """The zone's marking after ``plan``: the (tag, algorithm) of the keys marked ``publish``,
    and whether the zone serves the delete records. Keys the plan does not name keep theirs;
    removed keys lose it; a plan that installs keys decides ``delete``."""
    marked = set(published)
    for planned in plan.install:
        ident = (planned.key.key_tag, planned.key.algorithm)
        if planned.cds == "publish":
            marked.add(ident)
        else:
            marked.discard(ident)
    marked -= {m for m in marked if m[0] in plan.remove}
    if plan.install:
        delete = any(p.cds == "delete" for p in plan.install)
    if delete:
        marked.clear()
    return frozenset(marked), delete


def records(
    zone: dns.name.Name, keys: Iterable[DNSKEY], delete: bool
) -> tuple[list[CDS], list[CDNSKEY]]:
    """The CDS (SHA-256) and CDNSKEY rdata for ``keys`` (the DNSKEYs whose CDS is served now), or
    the delete records: what an adapter writes where the server takes records (NSD's signed zone,
    PowerDNS's backend)."""
    if delete:
        cds = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDS, DELETE_CDS_TEXT)
        assert isinstance(cds, CDS)
        return [cds], [_delete_cdnskey()]
    out_cds: list[CDS] = []
    out_cdnskey: list[CDNSKEY] = []
    for key in sorted(keys, key=dns.dnssec.key_id):
        ds = dns.dnssec.make_ds(zone, key, "SHA256")
        cds = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDS, ds.to_text())
        cdnskey = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CDNSKEY, key.to_text())
        assert isinstance(cds, CDS) and isinstance(cdnskey, CDNSKEY)
        out_cds.append(cds)
        out_cdnskey.append(cdnskey)
    return out_cds, out_cdnskey


def key_changed(before: Marking, after: Marking, tag: int, algorithm: int, flags: int) -> bool:
    """Whether going from ``before`` to ``after`` changes this key's CDS marking, or, for a KSK
    or CSK, the zone's ``delete``: a change of cds is a change of the key, and is applied."""
    ident = (tag, algorithm)
    if (ident in before[0]) != (ident in after[0]):
        return True
    return flags == 257 and before[1] != after[1]


def marking_file(folder: Path, zone: dns.name.Name) -> Path:
    """Where a key folder keeps a zone's marking (NSD's and the directory adapter's key
    folders): ``K<zone>+krs-cds.json``, among the zone's files, so a snapshot of them holds it and
    a restore puts it back. dnssec-signzone reads only ``K<zone>+<alg>+<tag>.key``/``.private``."""
    return folder / f"K{zone.to_text()}+krs-cds.json"


def read_marking(folder: Path, zone: dns.name.Name) -> Marking:
    path = marking_file(folder, zone)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return NO_MARKING
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a CDS marking: {exc}") from None
    try:
        marked = frozenset((int(t), int(a)) for t, a in data["publish"])
        return marked, bool(data["delete"])
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a CDS marking: {exc!r}") from None


def write_marking(folder: Path, zone: dns.name.Name, marking: Marking) -> None:
    """Write the zone's marking (0644, replaced atomically); none at all removes the file."""
    path = marking_file(folder, zone)
    if marking == NO_MARKING:
        path.unlink(missing_ok=True)
        return
    data = {"publish": sorted(list(m) for m in marking[0]), "delete": marking[1]}
    atomic_write(path, (json.dumps(data, sort_keys=True) + "\n").encode(), 0o644)
