"""PowerDNS Authoritative adapter: keys into PowerDNS's own key storage (cryptokeys), through the
HTTP API or ``pdnsutil``, the caches purged, success decided over DNS.

PowerDNS 4.7 signs on the fly with every *active* key and publishes every *published* one; it
has no key timing of its own. So the payload's timing is kept beside the keys, in the zone's
metadata (``X-KRS-KEY-TIMING``, in the same backend as the keys), and the adapter turns it into
the two flags: at apply time, and later from ``maintain()`` (``krs run`` calls it when the next
publish, activate, inactive or delete time comes). What else shapes the steps
(docs/servers/powerdns.md, measured against pdns_server 4.7.3):

- PowerDNS derives the DNSKEY from the private key it is given and accepts a key under the wrong
  algorithm label: the DNSKEY it answers with is compared with the expected one;
- a key is active and published as its timing says; an active key without a publish time signs
  unpublished (``unpublish-zone-key``, the API's ``published: false``), which an algorithm
  rollover needs (docs/lifecycle.md). PowerDNS then signs the zone data with it in place of a
  published active key of its algorithm and role (bogus, measured on 4.7.3), so such a plan is
  refused unless the algorithms differ;
- gsqlite3 serves a wrong NSEC chain until the zone is rectified; the bind backend needs none, and
  a rectify there is harmless, so every change ends with one (``rectify: false`` turns it off);
- a change is served late unless the caches are purged: the API's flush after API calls,
  ``pdns_control purge`` after pdnsutil (the API flush leaves the key cache alone);
- CDS and CDNSKEY: the ``PUBLISH-CDS``/``PUBLISH-CDNSKEY`` metadata publish them for every
  *published* KSK (an inactive one too), so during a double-KSK DS step for both instead of the
  new one. CDS and CDNSKEY records stored in the backend are served and signed as they are (no
  ``direct-dnskey`` needed): the adapter writes exactly the marked keys' records there. The bind
  backend stores no records the adapter can change: there the metadata is used when what it
  publishes is what the KDC marked (``0`` for the delete records, PowerDNS PR #9631), and any
  other marking is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters.base import (
    BaseAdapter,
    InstalledKey,
    KeyPlan,
    PlannedKey,
    Problem,
    StepFailed,
    Verification,
    ZoneChange,
)
from krs_plugin.adapters.cdsset import (
    NO_MARKING,
    CdsSet,
    Marking,
    has_cds,
    key_changed,
    next_marking,
    records,
)
from krs_plugin.adapters.cdsset import expected as cds_expected
from krs_plugin.adapters.dnscheck import (
    Expectation,
    KeyState,
    expectation,
    is_active,
    is_published,
    read_served,
    same_algorithm_refusal,
    same_algorithm_unpublished,
    wait_served,
)
from krs_plugin.adapters.pdnsctl import (
    PRESIGNED,
    ApiKeyStore,
    BatchStore,
    KeyStore,
    PdnsKey,
    PdnsutilKeyStore,
)
from krs_plugin.adapters.pdnsfresh import (
    MetadataAhead,
    backends_store_keys,
    backends_store_no_keys,
    without_cds,
)
from krs_plugin.adapters.settings import (
    existing_file,
    seconds,
    server_address,
)
from krs_plugin.dnssec import KeyTiming
from krs_plugin.errors import AdapterError, ConfigError, KrsError

log = logging.getLogger(__name__)

TIMING_KIND = "X-KRS-KEY-TIMING"
"""A line per key (``<tag> <algorithm> <flags>`` and its four times) and the zone's CDS marking
as ``cds`` lines (``cds publish <tag> <algorithm>`` per marked key, ``cds delete``, or ``cds
none``): one write holds both, and replaces whatever an earlier life of the zone left. The
lines are written as one value, joined by ``LINE_SEPARATOR`` (docs/servers/powerdns.md, section
5); values of one line each, as earlier versions wrote them, are read alike."""
LINE_SEPARATOR = "; "
"""Between the lines of the one ``X-KRS-KEY-TIMING`` value: gsqlite3 stores each value of a
kind in a row of its own, committed alone, so a value per line cost a disk write per line."""
CDS_KIND = "X-KRS-CDS"
"""The marking as earlier versions kept it (``publish <tag> <algorithm>``, ``delete``): read
only while ``X-KRS-KEY-TIMING`` holds no ``cds`` line, never written again."""
CDS_LINE = "cds"
PUBLISH_CDS, PUBLISH_CDNSKEY = "PUBLISH-CDS", "PUBLISH-CDNSKEY"
TIMES = ("publish", "activate", "inactive", "delete")
IDLE_WAIT = 3600.0
UNEXPECTED = (KrsError, OSError, ValueError, KeyError, TypeError)
"""Also a tool's or the API's unexpected output (a missing field, text where a number was): the
apply is rolled back and reported like any other failed step, never left half done."""
REPURGE_AFTER = 1.0  # seconds of a stale answer before the caches are purged again

SETTINGS = {
    "method",
    "api_url",
    "api_key_file",
    "server_id",
    "pdnsutil",
    "pdns_control",
    "server",
    "rectify",
    "timeout",
    "verify_timeout",
}


def _command(value: object, default: str, name: str) -> list[str]:
    if value is None:
        return [default]
    if isinstance(value, str) and value:
        return value.split()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"adapter.settings.{name}: a command (string or list of strings)")


def _config_dir_exists(key: str, command: list[str]) -> None:
    """``--config-dir=DIR`` in a command: DIR/pdns.conf must be there (PowerDNS's tools would
    otherwise fail at the next distribution, not now)."""
    for i, word in enumerate(command):
        folder = None
        if word.startswith("--config-dir="):
            folder = word.partition("=")[2]
        elif word == "--config-dir" and i + 1 < len(command):
            folder = command[i + 1]
        if folder:
            existing_file(
                Path(folder) / "pdns.conf",
                key,
                f"PowerDNS's configuration in the --config-dir {key} is given",
            )


def _identity(tag: int, algorithm: int, flags: int) -> str:
    return f"{tag} {algorithm} {flags}"


def _timing_entry(identity: str, timing: KeyTiming) -> str:
    values = [getattr(timing, name) for name in TIMES]
    return " ".join([identity, *("-" if v is None else str(v) for v in values)])


def _lines(values: Iterable[str]) -> list[str]:
    """The lines of ``X-KRS-KEY-TIMING``: its one value split at ``;`` (older versions wrote a
    value per line, which this reads the same)."""
    return [line.strip() for value in values for line in value.split(";") if line.strip()]


def _timing_value(lines: Sequence[str]) -> list[str]:
    """The lines as the kind's one value."""
    return [LINE_SEPARATOR.join(lines)] if lines else []


def _parse_timing(values: Iterable[str]) -> dict[str, KeyTiming]:
    """Metadata values back to timing by key identity; what does not parse is ignored (and
    rewritten at the next change), so a hand edit cannot stop the node."""
    out: dict[str, KeyTiming] = {}
    for value in _lines(values):
        parts = value.split()
        if len(parts) != 7:
            continue
        try:
            times = [None if p == "-" else int(p) for p in parts[3:]]
            out[" ".join(parts[:3])] = KeyTiming(None, *times)
        except (ValueError, KrsError):
            continue
    return out


def _parse_cds(values: Iterable[str]) -> Marking:
    """``X-KRS-CDS`` back to the marked (tag, algorithm) and ``delete``; what does not parse is
    ignored (and rewritten at the next change)."""
    marked, delete = set(), False
    for value in values:
        parts = value.split()
        if parts == ["delete"]:
            delete = True
        elif len(parts) == 3 and parts[0] == "publish" and all(p.isdigit() for p in parts[1:]):
            marked.add((int(parts[1]), int(parts[2])))
    return frozenset(marked), delete


def _cds_values(marking: Marking) -> list[str]:
    marked, delete = marking
    return (["delete"] if delete else []) + [f"publish {t} {a}" for t, a in sorted(marked)]


def _cds_lines(marking: Marking) -> list[str]:
    """The marking as ``X-KRS-KEY-TIMING`` lines; ``cds none`` when nothing is marked, so that
    the kind always says the marking and an ``X-KRS-CDS`` left there is never read again."""
    return [f"{CDS_LINE} {v}" for v in _cds_values(marking) or ["none"]]


def _told_by_flags(timing: KeyTiming, now: int) -> bool:
    """Whether PowerDNS's own flags say all of ``timing``: published and active since times
    already passed, nothing retired or to come. Such a key needs no ``X-KRS-KEY-TIMING`` line:
    read without one, a key is taken as its flags say (``_timing_of``)."""
    return (
        timing.publish is not None
        and timing.activate is not None
        and max(timing.publish, timing.activate) <= now
        and timing.inactive is None
        and timing.delete is None
    )


def _presigned(zone: dns.name.Name) -> str:
    return (
        f"zone {zone} is marked PRESIGNED: PowerDNS serves it as stored and will not sign it "
        "with the pushed keys"
    )


def _presigned_refusal(zone: dns.name.Name) -> AdapterError:
    return AdapterError(f"{_presigned(zone)} (pdnsutil unset-presigned {zone})")


def _marking_of(timing: Iterable[str], legacy: Iterable[str]) -> Marking:
    """The zone's marking: from the ``cds`` lines of ``X-KRS-KEY-TIMING`` when it has any, else
    from ``X-KRS-CDS`` (what earlier versions wrote)."""
    lines = [v.split(None, 1) for v in _lines(timing) if v.split()[:1] == [CDS_LINE]]
    if lines:
        return _parse_cds(line[1] for line in lines if len(line) == 2)
    return _parse_cds(legacy)


@dataclass(kw_only=True)
class PdnsChange(ZoneChange):
    """An apply in PowerDNS: the zone's keys and the KRS's timing metadata, as read first and
    updated key by key (the metadata is written once, in ``load``), and the zone's CDS marking
    before and after the plan."""

    keys: list[PdnsKey]
    timings: dict[str, KeyTiming]
    cds_before: Marking = NO_MARKING
    cds_after: Marking = NO_MARKING
    holds_krs_metadata: bool | None = None
    """Whether the zone holds ``X-KRS-KEY-TIMING`` or ``X-KRS-CDS``; None: not read (a fresh
    zone, whose metadata the batch takes as empty)."""


class PowerDnsAdapter(BaseAdapter[PdnsChange]):
    name = "powerdns"
    settings_keys = frozenset(SETTINGS)
    failures = UNEXPECTED
    verify_while_writing = True  # docs/servers/powerdns.md, "Many zones in one distribution"

    def configure(self, settings: Mapping[str, Any]) -> None:
        timeout = seconds(settings, "timeout", 10)
        method = settings.get("method", "api")
        self.store: KeyStore
        if method == "api":
            if "api_key_file" not in settings:
                raise ConfigError(
                    "adapter.settings.api_key_file: required with method api (a file holding "
                    "PowerDNS's api-key, readable by the KRS only)"
                )
            self.store = ApiKeyStore(
                str(settings.get("api_url", "http://127.0.0.1:8081")),
                self.path_setting(settings["api_key_file"]),
                str(settings.get("server_id", "localhost")),
                timeout,
            )
        elif method == "pdnsutil":
            pdnsutil = _command(settings.get("pdnsutil"), "pdnsutil", "pdnsutil")
            control = _command(settings.get("pdns_control"), "pdns_control", "pdns_control")
            for key, command in (("pdnsutil", pdnsutil), ("pdns_control", control)):
                _config_dir_exists(key, command)
            self.store = PdnsutilKeyStore(pdnsutil, control, timeout)
        else:
            raise ConfigError(f"adapter.settings.method: 'api' or 'pdnsutil', not {method!r}")
        self.host, self.port = server_address(settings)
        rectify = settings.get("rectify", True)
        if not isinstance(rectify, bool):
            raise ConfigError("adapter.settings.rectify: true or false")
        self.rectify = rectify
        self.verify_timeout = seconds(settings, "verify_timeout", 10)
        self._private_cache: dict[dns.name.Name, dict[str, str]] = {}
        self._unpublished: set[dns.name.Name] = set()  # changed by maintain(), not yet purged
        self._cds_by_metadata: set[dns.name.Name] = set()  # backends without records (bind)
        self._fresh: set[dns.name.Name] = set()  # of the batch under way (pdnsfresh.py)
        self._ahead: MetadataAhead | None = None  # their metadata, read beside the writing

    # --- the Adapter interface ------------------------------------------------------------

    def server_problem(self) -> str | None:
        """PowerDNS answers: its API (method api), or ``pdnsutil list-all-zones`` and
        ``pdns_control rping`` (method pdnsutil)."""
        try:
            problems = self.store.problems()
        except (KrsError, OSError) as exc:
            return f"PowerDNS does not answer: {exc}"
        return "; ".join(p.what for p in problems) or None

    def check(self) -> list[Problem]:
        problems = self.store.problems()
        if problems:
            return problems
        for zone in self.zones:
            try:
                problem = self._zone_problem(zone)
            except (KrsError, OSError) as exc:
                problem = Problem(
                    f"PowerDNS cannot tell the state of zone {zone}: {exc}",
                    "see pdns_server's log; the backend must answer for the zone",
                )
            if problem is not None:
                problems.append(problem)
        return problems

    def _zone_problem(self, zone: dns.name.Name) -> Problem | None:
        """Why PowerDNS would not serve keys pushed for ``zone``, or None."""
        if not self.store.zone_exists(zone):
            return Problem(
                f"PowerDNS does not serve zone {zone}",
                f"create {zone} in PowerDNS (pdnsutil create-zone, or a zone in the bind "
                "backend's named.conf) or remove it from zones in krs.yaml",
            )
        presigned = self.store.presigned(zone)
        if presigned is None:
            return Problem(
                f"PowerDNS cannot store DNSSEC keys for zone {zone}: its backend runs "
                "without DNSSEC storage",
                "bind backend: set bind-dnssec-db in pdns.conf (create the file with pdnsutil "
                "create-bind-db <file>); gsqlite3, gmysql, gpgsql: set gsqlite3-dnssec=yes "
                "(gmysql-dnssec, gpgsql-dnssec); then restart pdns_server",
            )
        if presigned:
            return Problem(_presigned(zone), f"pdnsutil unset-presigned {zone}")
        if self._marking(zone) == NO_MARKING:
            kinds = [k for k in (PUBLISH_CDS, PUBLISH_CDNSKEY) if self.store.get_meta(zone, k)]
            if kinds:
                return Problem(
                    f"zone {zone} has {' and '.join(kinds)} metadata: PowerDNS serves the "
                    "CDS/CDNSKEY of every published KSK, not those the KDC marks",
                    " and ".join(f"pdnsutil set-meta {zone} {k}" for k in kinds)
                    + " (the KRS writes the CDS/CDNSKEY the KDC asks for)",
                )
        return None

    def _marking(self, zone: dns.name.Name) -> Marking:
        return _marking_of(
            self.store.get_meta(zone, TIMING_KIND), self.store.get_meta(zone, CDS_KIND)
        )

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        timings = _parse_timing(self.store.get_meta(zone, TIMING_KIND))
        return [
            InstalledKey(zone, k.tag, k.algorithm, k.flags, self._timing_of(k, timings))
            for k in self.store.keys(zone)
        ]

    @staticmethod
    def _timing_of(key: PdnsKey, timings: Mapping[str, KeyTiming]) -> KeyTiming:
        """The payload's timing for our keys; for others, what their flags say now."""
        known = timings.get(_identity(key.tag, key.algorithm, key.flags))
        if known is not None:
            return known
        return KeyTiming(
            publish=0 if key.published else None,
            activate=0 if key.active else None,
        )

    def snapshot(self, zone: dns.name.Name) -> str:
        try:
            keys = self.store.keys(zone)
        except AdapterError:
            if not self.store.zone_exists(zone):  # say so, rather than the API's "404"
                raise AdapterError("PowerDNS does not serve this zone") from None
            raise
        return json.dumps(self._snapshot(zone, keys))

    def _snapshot(self, zone: dns.name.Name, keys: Sequence[PdnsKey]) -> dict[str, Any]:
        present = {k.dnskey.to_text() for k in keys}
        cache = self._private_cache.setdefault(zone, {})
        for gone in set(cache) - present:  # keys the zone no longer has
            del cache[gone]
        return {
            "keys": [
                {
                    "dnskey": k.dnskey.to_text(),
                    "flags": k.flags,
                    "active": k.active,
                    "published": k.published,
                    "private": self._private_text(zone, k),
                }
                for k in keys
            ],
            "timing": self.store.get_meta(zone, TIMING_KIND),
            # a fresh zone's X-KRS-CDS is neither read nor written: restore leaves it alone
            "cds": None if zone in self._fresh else self.store.get_meta(zone, CDS_KIND),
        }

    def _private_text(self, zone: dns.name.Name, key: PdnsKey) -> str:
        """A key's private part, asked of PowerDNS once per key: it never changes for a given
        DNSKEY, and each request costs 3.4 ms (API) or a pdnsutil process, at every snapshot
        otherwise."""
        cache = self._private_cache.setdefault(zone, {})
        text = key.dnskey.to_text()
        if text not in cache:
            cache[text] = self.store.private_text(zone, key.id)
        return cache[text]

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        """Also in a batch, against PowerDNS itself: a rollback reads what is there, never what
        the batch believes it wrote."""
        store = self.store
        if isinstance(store, BatchStore):
            self.store = store.store
        try:
            outcome = self._restore(zone, json.loads(snapshot))
        finally:
            self.store = store
        return outcome or "PowerDNS serves the previous keys again"

    # --- the apply hooks (base.BaseAdapter.apply) -------------------------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> PdnsChange:
        if not self.store.zone_exists(zone):
            raise AdapterError("PowerDNS does not serve this zone")
        presigned = self.store.presigned(zone)
        if presigned is None:
            raise AdapterError(
                "PowerDNS has no DNSSEC storage for this zone (bind-dnssec-db or "
                "gsqlite3-dnssec=yes, see krs doctor)"
            )
        if presigned:
            raise _presigned_refusal(zone)
        timing_values = self.store.get_meta(zone, TIMING_KIND)
        legacy_values = self.store.get_meta(zone, CDS_KIND)
        timings = _parse_timing(timing_values)
        before = _marking_of(timing_values, legacy_values)
        keys = self.store.keys(zone)
        conflicts = same_algorithm_unpublished(self._planned_states(plan, keys, timings, now), now)
        if conflicts:
            raise AdapterError(
                same_algorithm_refusal(conflicts, "PowerDNS") + " (docs/servers/powerdns.md)"
            )
        return PdnsChange(
            zone=zone,
            plan=plan,
            now=now,
            keys=keys,
            timings=timings,
            cds_before=before,
            cds_after=next_marking(plan, *before),
            holds_krs_metadata=None
            if zone in self._fresh
            else bool(timing_values or legacy_values),
        )

    def _planned_states(
        self,
        plan: KeyPlan,
        keys: Sequence[PdnsKey],
        timings: Mapping[str, KeyTiming],
        now: int,
    ) -> list[KeyState]:
        """The zone's keys as they will be once ``plan`` is applied (for the checks in
        ``begin``)."""
        states = {
            k.dnskey.to_text(): KeyState(
                k.tag, k.flags, self._timing_of(k, timings), k.dnskey, k.algorithm
            )
            for k in keys
            if k.tag not in plan.remove
        }
        for state in list(states.values()):
            if state.key_tag in plan.retire:
                timing = dataclasses.replace(state.timing, inactive=now)
                states[state.dnskey.to_text()] = dataclasses.replace(state, timing=timing)  # type: ignore[union-attr]
        for planned in plan.install:
            key = planned.key
            states[key.dnskey.to_text()] = KeyState(
                key.key_tag, key.flags, planned.timing, key.dnskey, key.algorithm
            )
        return list(states.values())

    def unpublished_dnskeys(self, zone: dns.name.Name) -> list[Any]:
        return [k.dnskey for k in self.store.keys(zone) if k.active and not k.published]

    def write_key(self, change: PdnsChange, planned: PlannedKey) -> bool:
        """Add ``planned`` or bring its state and timing up to date; False if nothing changed."""
        zone, key = change.zone, planned.key
        identity = _identity(key.key_tag, key.algorithm, key.flags)
        timing = dataclasses.replace(planned.timing, created=None)
        existing = next((k for k in change.keys if k.dnskey == key.dnskey), None)
        if existing is not None:
            cds = key_changed(
                change.cds_before, change.cds_after, key.key_tag, key.algorithm, key.flags
            )
            held = change.timings.get(identity)
            same = held == timing if held is not None else _told_by_flags(timing, change.now)
            changed = not same or cds  # the flags themselves: _set_state
            change.timings[identity] = timing
            return self._set_state(zone, existing, timing, change.now) or changed
        added = self.store.add(
            zone,
            key.to_bind_private(),
            keytype=planned.role.lower(),
            active=is_active(timing, change.now),
            published=is_published(timing, change.now),
        )
        change.keys.append(added)
        if added.dnskey != key.dnskey:
            raise AdapterError(
                f"PowerDNS derived DNSKEY tag {added.tag} from the private key of key "
                f"{key.key_tag}: it read the key differently"
            )
        change.timings[identity] = timing
        return True

    def retire_key(self, change: PdnsChange, tag: int) -> bool:
        retired = False
        for key in (k for k in change.keys if k.tag == tag):
            timing = self._timing_of(key, change.timings)
            if timing.inactive is not None and timing.inactive <= change.now:
                continue
            new = dataclasses.replace(
                timing, inactive=change.now, delete=change.plan.retire_delete_at or timing.delete
            )
            change.timings[_identity(key.tag, key.algorithm, key.flags)] = new
            self._set_state(change.zone, key, new, change.now)
            retired = True
        return retired

    def remove_key(self, change: PdnsChange, tag: int) -> bool:
        removed = False
        for key in (k for k in change.keys if k.tag == tag):
            self.store.remove(change.zone, key.id)
            change.timings.pop(_identity(key.tag, key.algorithm, key.flags), None)
            removed = True
        return removed

    def load(self, change: PdnsChange) -> None:
        if not change.changed:
            return
        change.step = f"metadata {TIMING_KIND}"
        if self._timing_to_write(change):
            self._write_timings(change.zone, change.timings, change.cds_after)
        change.step = "CDS and CDNSKEY"
        self._write_cds(change.zone, change.cds_after, change.now, change.cds_before)
        change.step = "rectify and purge caches"
        self._publish(change.zone)

    def verify(self, change: PdnsChange) -> Verification:
        return self._wait(change.zone, change.removed)

    def _timing_to_write(self, change: PdnsChange) -> bool:
        """Whether ``X-KRS-KEY-TIMING`` is written: not when it would say only what the keys'
        flags say (every key published and active, nothing to come, no CDS marked) and the zone
        holds none of the KRS's metadata; the one request a new node's zone then spares is its
        costliest (docs/servers/powerdns.md, section 5). A fresh zone's metadata is read for
        this alone: what an earlier life left there is replaced, never acted on."""
        if change.cds_after != NO_MARKING:
            return True
        if not all(_told_by_flags(t, change.now) for t in change.timings.values()):
            return True
        if change.holds_krs_metadata is not None:
            return change.holds_krs_metadata
        found = self._fresh_metadata(change.zone)
        return found is None or bool(found.get(TIMING_KIND) or found.get(CDS_KIND))

    def _fresh_metadata(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        """A fresh zone's metadata as PowerDNS holds it (read ahead, pdnsfresh.MetadataAhead,
        or now); None where it cannot be listed. A zone marked PRESIGNED since the zone list
        was read is refused here."""
        ahead = None if self._ahead is None else self._ahead.take(zone)
        if ahead is not None:
            found = ahead.result()
        else:
            store = self.store.store if isinstance(self.store, BatchStore) else self.store
            found = store.all_meta(zone)
        if found is not None and "1" in found.get(PRESIGNED, []):
            raise _presigned_refusal(zone)
        return found

    def _set_state(self, zone: dns.name.Name, key: PdnsKey, timing: KeyTiming, now: int) -> bool:
        active, published = is_active(timing, now), is_published(timing, now)
        if (key.active, key.published) == (active, published):
            return False
        self.store.set_state(zone, key.id, active=active, published=published)
        return True

    def _write_timings(
        self, zone: dns.name.Name, timings: Mapping[str, KeyTiming], marking: Marking
    ) -> None:
        """The keys' timing and the marking, in one write that replaces the kind."""
        present = {_identity(k.tag, k.algorithm, k.flags) for k in self.store.keys(zone)}
        values = [_timing_entry(i, t) for i, t in sorted(timings.items()) if i in present]
        self.store.set_meta(zone, TIMING_KIND, _timing_value(values + _cds_lines(marking)))

    def _cds_now(
        self,
        zone: dns.name.Name,
        marking: Marking,
        now: int,
        keys: Sequence[PdnsKey] | None = None,
        timings: Mapping[str, KeyTiming] | None = None,
    ) -> tuple[CdsSet, list[PdnsKey]]:
        """The CDS/CDNSKEY the zone serves at ``now`` for ``marking``, and the keys they are of."""
        marked, delete = marking
        keys = self.store.keys(zone) if keys is None else keys
        if timings is None:
            timings = _parse_timing(self.store.get_meta(zone, TIMING_KIND))
        with_cds = [
            k
            for k in keys
            if (k.tag, k.algorithm) in marked and k.flags == 257
            if has_cds(self._timing_of(k, timings), now)
        ]
        states = [(k.tag, k.algorithm, k.flags, self._timing_of(k, timings)) for k in with_cds]
        return cds_expected(states, delete, now), with_cds

    def _write_cds(
        self, zone: dns.name.Name, marking: Marking, now: int, before: Marking | None = None
    ) -> None:
        """Have the backend hold the CDS/CDNSKEY of ``marking`` at ``now`` (nothing to do when
        neither ``marking`` nor ``before`` marks anything): as records, or, for a backend that
        holds none, as PowerDNS's own metadata when that publishes exactly the same."""
        if before is not None and marking == before == NO_MARKING:
            return
        keys = self.store.keys(zone)
        timings = _parse_timing(self.store.get_meta(zone, TIMING_KIND))
        want, with_cds = self._cds_now(zone, marking, now, keys, timings)
        if zone not in self._cds_by_metadata:
            cds, cdnskey = records(zone, [k.dnskey for k in with_cds], marking[1])
            ttl = self._dnskey_ttl(zone)
            try:
                self.store.set_rrset(zone, "CDS", ttl, [r.to_text(chunksize=0) for r in cds])
                self.store.set_rrset(
                    zone, "CDNSKEY", ttl, [r.to_text(chunksize=0) for r in cdnskey]
                )
            except AdapterError as exc:
                if not self._holds_no_records(exc):
                    raise
                self._cds_by_metadata.add(zone)
            else:
                for kind in (PUBLISH_CDS, PUBLISH_CDNSKEY):  # they would add every KSK's
                    if self.store.get_meta(zone, kind):
                        self.store.set_meta(zone, kind, [])
                return
        self._write_cds_metadata(zone, want, keys)

    @staticmethod
    def _holds_no_records(exc: AdapterError) -> bool:
        """PowerDNS's refusal to change records of a backend that cannot (the bind backend, 4.7):
        the API's HTTP 422 "... not supported ...", pdnsutil's "backend did not accept the new
        RRset"."""
        text = str(exc).lower()
        return any(w in text for w in ("not support", "did not accept the new rrset"))

    def _write_cds_metadata(
        self, zone: dns.name.Name, want: CdsSet, keys: Sequence[PdnsKey]
    ) -> None:
        """PUBLISH-CDS (digest 2) and PUBLISH-CDNSKEY publish the CDS/CDNSKEY of every published
        KSK (measured on 4.7.3), and ``0`` the delete records: used only when that is ``want``."""
        if want == CdsSet.delete():
            values = (["0"], ["0"])
        elif not want.cds:
            values = ([], [])
        else:
            pdns = CdsSet.of_keys(
                (k.tag, k.algorithm, k.flags) for k in keys if k.flags == 257 and k.published
            )
            if pdns != want:
                raise AdapterError(
                    f"{zone}: its backend holds no CDS records the KRS can write (the bind "
                    "backend), and PowerDNS's PUBLISH-CDS metadata would serve "
                    f"{pdns.describe()} where the distribution asks for {want.describe()}: "
                    "use a backend that stores records (gsqlite3) for this zone "
                    "(docs/servers/powerdns.md)"
                )
            values = (["2"], ["1"])
        for kind, value in zip((PUBLISH_CDS, PUBLISH_CDNSKEY), values, strict=True):
            if self.store.get_meta(zone, kind) != value:
                self.store.set_meta(zone, kind, value)

    def _dnskey_ttl(self, zone: dns.name.Name) -> int:
        """The TTL PowerDNS serves the DNSKEY RRset with (the SOA minimum): the CDS and CDNSKEY
        get the same."""
        served = read_served(zone, self.host, self.port)
        ttl = served.get("dnskey_ttl", served.get("soa_minimum"))
        return ttl if isinstance(ttl, int) and ttl > 0 else 3600

    def _publish(self, zone: dns.name.Name) -> None:
        if self.rectify:
            self.store.rectify(zone)
        self.store.refresh(zone)

    def _expect(self, zone: dns.name.Name, removed: Iterable[int]) -> Expectation:
        """What PowerDNS must serve for the zone's keys, their timing and CDS marking."""
        now = int(time.time())
        timings = _parse_timing(self.store.get_meta(zone, TIMING_KIND))
        pdns_keys = self.store.keys(zone)
        keys = [
            KeyState(k.tag, k.flags, self._timing_of(k, timings), k.dnskey, k.algorithm)
            for k in pdns_keys
        ]
        marking = self._marking(zone)
        cds = self._cds_now(zone, marking, now, pdns_keys, timings)[0]
        return dataclasses.replace(expectation(zone, keys, removed, now), cds=cds)

    def _wait(self, zone: dns.name.Name, removed: Iterable[int]) -> Verification:
        """Poll until PowerDNS serves the expected keys. A query answered while the caches are
        purged can put the old key set back in the cache for its TTL (about 1 in 20 pdnsutil
        applies, served ~20 s late), so the caches are purged again each ``REPURGE_AFTER``."""
        expect = self._expect(zone, removed)
        deadline = time.monotonic() + self.verify_timeout
        while True:
            left = deadline - time.monotonic()
            result = wait_served(expect, self.host, self.port, timeout=min(REPURGE_AFTER, left))
            if result.ok or left <= REPURGE_AFTER:
                return result
            try:
                self.store.refresh(zone)
            except (KrsError, OSError) as exc:
                log.warning("powerdns, zone %s: purging the caches again failed: %s", zone, exc)

    # --- many zones at once (BaseAdapter.apply_batch) ---------------------------------------

    @contextlib.contextmanager
    def batch_context(self, zones: Sequence[dns.name.Name]) -> Iterator[None]:
        """PowerDNS's zone list read once, each zone's metadata in one call (none for a fresh
        zone, pdnsfresh.py) and its keys once, kept up to date from the adapter's own writes
        (pdnsctl.BatchStore); the caches purged once for all zones. When the zone list cannot
        be read (PowerDNS down), each zone asks for itself, as ever."""
        if isinstance(self.store, BatchStore):  # apply_batch inside apply_atomically's
            yield
            return
        with self._batched(defer_refresh=True):
            self._fresh = self._fresh_zones(zones)
            if self._fresh and isinstance(self.store, BatchStore):
                order = [zone for zone in dict.fromkeys(zones) if zone in self._fresh]
                self._ahead = MetadataAhead(self.store.store.all_meta, order)
            try:
                yield
            finally:
                self._fresh = set()
                if self._ahead is not None:
                    self._ahead.close()
                    self._ahead = None

    def _fresh_zones(self, zones: Sequence[dns.name.Name]) -> set[dns.name.Name]:
        """The zones whose metadata the batch need not read (pdnsfresh.py), each then read as
        having none; a question that fails only makes fewer zones fresh."""
        store = self.store
        if not isinstance(store, BatchStore) or not isinstance(store.store, ApiKeyStore):
            return set()  # pdnsutil: no zone list, no configuration to read
        unsigned = [z for z in dict.fromkeys(zones) if store.listed_unsigned(z)]
        if not unsigned:
            return set()
        try:
            settings = store.store.settings()
            if backends_store_no_keys(settings):  # each zone refused at its check
                store.no_dnssec_storage = True
            if not backends_store_keys(settings):
                return set()
            fresh = without_cds(unsigned, self.host, self.port)
        except (KrsError, OSError) as exc:
            log.info("powerdns: every zone's metadata is read: %s", exc)
            return set()
        for zone in fresh:
            store.assume_no_metadata(zone)
        return fresh

    @contextlib.contextmanager
    def _batched(self, *, defer_refresh: bool) -> Iterator[None]:
        if isinstance(self.store, BatchStore):
            yield
            return
        real = self.store
        try:
            self.store = BatchStore(real, defer_refresh=defer_refresh)
        except (KrsError, OSError):
            self.store = real
        try:
            yield
        finally:
            self.store = real

    def load_batch(self, changes: Sequence[PdnsChange]) -> None:
        """Each zone's keys, metadata and rectify as ``load`` does, then one purge of every
        cache instead of one per zone."""
        for change in changes:
            try:
                self.load(change)
            except self.failures as exc:
                raise StepFailed(change, exc) from exc
        if isinstance(self.store, BatchStore) and changes:
            for change in changes:
                change.step = "purge caches"
            try:
                self.store.flush()
            except self.failures as exc:
                raise StepFailed(changes[0], exc) from exc

    def verify_batch(self, changes: Sequence[PdnsChange]) -> list[Verification]:
        """All zones asked at once; the caches purged again (all zones, once) every
        ``REPURGE_AFTER`` while some zone still shows its old keys (see ``_wait``)."""
        expects = [self._expect(c.zone, c.removed) for c in changes]
        results: list[Verification] = [Verification(False)] * len(expects)
        pending = list(range(len(expects)))
        deadline = time.monotonic() + self.verify_timeout
        while True:
            looked = self.wait_served_batch([expects[i] for i in pending], REPURGE_AFTER)
            for i, result in zip(pending, looked, strict=True):
                results[i] = result
            still = [i for i, result in zip(pending, looked, strict=True) if not result.ok]
            if len(still) < len(pending):  # progress: a server busy with many zones is waited for
                deadline = max(deadline, time.monotonic() + self.verify_timeout)
            pending = still
            if not pending or time.monotonic() >= deadline:
                return results
            try:
                self.store.refresh_all()
            except (KrsError, OSError) as exc:
                log.warning("powerdns: purging the caches again failed: %s", exc)

    def _restore(self, zone: dns.name.Name, before: Mapping[str, Any]) -> str | None:
        """Make the zone's keys, their flags and timing ``before`` again; None when PowerDNS
        serves them, else what it was not seen to do (for the error message); AdapterError
        when the keys themselves could not be put back."""
        wanted = {entry["dnskey"]: entry for entry in before["keys"]}
        try:
            current = {k.dnskey.to_text(): k for k in self.store.keys(zone)}
            gone = [k.tag for text, k in current.items() if text not in wanted]
            for text, stale in current.items():
                if text not in wanted:
                    self.store.remove(zone, stale.id)
            for text, entry in wanted.items():
                key = current.get(text)
                if key is None:
                    self.store.add(
                        zone,
                        entry["private"],
                        keytype="ksk" if entry["flags"] == 257 else "zsk",
                        active=entry["active"],
                        published=entry["published"],
                    )
                elif (key.active, key.published) != (entry["active"], entry["published"]):
                    self.store.set_state(
                        zone, key.id, active=entry["active"], published=entry["published"]
                    )
            marking_now = self._marking(zone)  # what the failed apply left in effect
            if self.store.get_meta(zone, TIMING_KIND) != before["timing"]:
                self.store.set_meta(zone, TIMING_KIND, before["timing"])
            cds = before.get("cds", [])
            if cds is not None and self.store.get_meta(zone, CDS_KIND) != cds:
                self.store.set_meta(zone, CDS_KIND, cds)
            # a fresh zone (cds None: not read) served no CDS/CDNSKEY before (pdnsfresh.py)
            marking = NO_MARKING if cds is None else _marking_of(before["timing"], cds)
            self._write_cds(zone, marking, int(time.time()), marking_now)
        except UNEXPECTED as exc:
            raise AdapterError(
                "the previous keys could not be written back to PowerDNS's backend (pdns_server "
                f"down? with method api every write goes through it): {exc}; the zone keeps "
                "what the failed apply left (pdnsutil list-keys), the next distribution sets it "
                "right"
            ) from exc
        try:
            self._publish(zone)
        except (KrsError, OSError) as exc:
            return f"the previous keys are stored again, but PowerDNS was not told: {exc}"
        result = self._wait(zone, gone)
        return None if result.ok else "; ".join(result.details)

    # --- timing: what PowerDNS cannot schedule itself -----------------------------------------

    def maintain(self) -> float:
        """Bring each zone's flags in line with its keys' timing (publish, activate, retire,
        delete as their times pass); the seconds until the next such time."""
        now = int(time.time())
        upcoming: list[int] = []
        with self._batched(defer_refresh=False):  # 10,000 zones: one zone list, no 10,000 calls
            for zone in self.zones:
                try:
                    upcoming += self._maintain_zone(zone, now)
                except (KrsError, OSError) as exc:
                    log.error("powerdns, zone %s: applying key timing failed: %s", zone, exc)
                    upcoming.append(now + 60)
        return float(max(1, min(upcoming) - now)) if upcoming else IDLE_WAIT

    def _maintain_zone(self, zone: dns.name.Name, now: int) -> list[int]:
        unsigned = isinstance(self.store, BatchStore) and self.store.listed_unsigned(zone)
        if unsigned and zone not in self._unpublished:
            return []  # no key has a time to act on
        timings = _parse_timing(self.store.get_meta(zone, TIMING_KIND))
        if not timings and zone not in self._unpublished:
            return []
        changed = False
        for key in self.store.keys(zone):
            identity = _identity(key.tag, key.algorithm, key.flags)
            timing = timings.get(identity)
            if timing is None:
                continue
            if timing.delete is not None and timing.delete <= now:
                log.info("powerdns, zone %s: key %d reached its delete time", zone, key.tag)
                self.store.remove(zone, key.id)
                timings.pop(identity)
                changed = True
            elif self._set_state(zone, key, timing, now):
                log.info("powerdns, zone %s: key %d now %s", zone, key.tag,
                         "active" if is_active(timing, now) else "inactive")  # fmt: skip
                changed = True
        if changed:
            marking = self._marking(zone)
            self._write_timings(zone, timings, marking)
            self._write_cds(zone, marking, now, marking)
        if changed or zone in self._unpublished:
            # Until the caches are purged the change is served only when they expire (20-41 s):
            # a purge that failed is tried again at the next call, when the flags no longer
            # differ from the timing.
            self._unpublished.add(zone)
            self._publish(zone)
            self._unpublished.discard(zone)
        return [
            value
            for timing in timings.values()
            for value in (getattr(timing, name) for name in TIMES)
            if value is not None and value > now
        ]
