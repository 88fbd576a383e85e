"""From a validated payload to one ``KeyPlan`` per zone (what the adapter will be asked to do).

Our KDC sends every key with its timing, and the plan installs exactly that. A tdns KDC sends
``roll_key`` without timing: the new key is published and activated now and the zone's previous
keys of the same role are retired (or exactly ``old_key_id``), as the tdns KRS does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import dns.name

from krs_plugin.adapters.base import InstalledKey, KeyPlan, PlannedKey
from krs_plugin.dnssec import KeyTiming
from krs_plugin.payload import DeleteKey, Payload, RollKey


def build_plans(
    payload: Payload,
    current_keys: Callable[[dns.name.Name], list[InstalledKey]],
    *,
    now: int,
    retire_after: float | None = None,
) -> list[KeyPlan]:
    """``retire_after`` (seconds, the manifest's ``retire_time``): retired keys are deleted
    that long after now, as the tdns KRS does."""
    # Entries grouped by zone in one pass, zones in order of first appearance: comparing every
    # entry's zone with every zone was 200 million name comparisons for 10,000 zones.
    by_zone: dict[dns.name.Name, list[RollKey | DeleteKey]] = {}
    for e in payload.entries:
        if isinstance(e, RollKey | DeleteKey):
            by_zone.setdefault(e.zone, []).append(e)
    plans = []
    timings: dict[KeyTiming, KeyTiming] = {}  # one object per distinct timing (20,000 keys)
    for zone, entries in by_zone.items():
        install: list[PlannedKey] = []
        retire: set[int] = set()
        remove: set[int] = set()
        installed = None
        for entry in entries:
            if isinstance(entry, DeleteKey):
                remove.add(entry.key_tag)
            else:
                timing = entry.timing or KeyTiming(created=now, publish=now, activate=now)
                if timing.created is None:  # the KDC never sends it (docs/payload.md)
                    timing = replace(timing, created=_created(timing, now))
                timing = timings.setdefault(timing, timing)
                install.append(PlannedKey(entry.key, entry.key_type, timing, entry.cds))
                if entry.old_key_tag is not None and (entry.retire_old_key or entry.timing is None):
                    retire.add(entry.old_key_tag)
                elif entry.timing is None:
                    if installed is None:
                        installed = current_keys(zone)
                    retire |= {
                        k.key_tag
                        for k in installed
                        if k.flags == entry.key.flags and k.key_tag != entry.key_tag
                    }
        new_tags = {p.key.key_tag for p in install}
        plans.append(
            KeyPlan(
                zone,
                tuple(install),
                tuple(sorted(retire - new_tags - remove)),
                tuple(sorted(remove - new_tags)),
                None if retire_after is None else now + int(retire_after),
            )
        )
    return plans


def _created(timing: KeyTiming, now: int) -> int:
    """A key's ``Created`` time: its first time (publish or activate), never later than now. From
    the key's own times, not the apply's moment, so a key sent again unchanged is planned with
    the very timing its files hold and is not rewritten: every key of every distribution was,
    two fsyncs and a parse each (docs/benchmarks.md, "Fleet")."""
    return min(t for t in (timing.publish, timing.activate, now) if t is not None)
