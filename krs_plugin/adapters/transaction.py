"""All or nothing across the zones of a distribution: the one owner of rollback.

Adapters never roll back by themselves (base.py): ``apply_atomically`` snapshots every zone of the
plans first, hands the snapshots to the journal (so a crash mid-apply can be undone at the next
start), applies the zones (an adapter built on ``BaseAdapter`` all at once, ``apply_batch``: every
zone checked first, the server told once; any other zone by zone) and, if any zone fails, restores
each zone it touched, once: the zones already written and the failing one, unless that one was
refused before anything was written (in a batch: nothing anywhere was).
The error then says what failed and what each restore achieved (docs/architecture.md, "Rollback").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dns.name

from krs_plugin.adapters.base import Adapter, ApplyFailed, ApplyResult, BaseAdapter, KeyPlan
from krs_plugin.errors import AdapterError, KrsError

log = logging.getLogger(__name__)

Journal = Callable[[dict[dns.name.Name, str]], None]


def apply_atomically(
    adapter: Adapter, plans: Sequence[KeyPlan], journal: Journal | None = None
) -> list[ApplyResult]:
    """Apply ``plans`` in order; on failure, put every touched zone back and raise AdapterError
    (the failure, then what the rollback did)."""
    if isinstance(adapter, BaseAdapter):  # what it reads once for many zones serves both
        with adapter.batch_context([plan.zone for plan in plans]):
            return _apply_atomically(adapter, plans, journal)
    return _apply_atomically(adapter, plans, journal)


def _apply_atomically(
    adapter: Adapter, plans: Sequence[KeyPlan], journal: Journal | None
) -> list[ApplyResult]:
    snapshots = {}
    for plan in plans:
        try:
            snapshots[plan.zone] = adapter.snapshot(plan.zone)
        except KrsError as exc:
            raise AdapterError(
                f"{adapter.name}, zone {plan.zone}: taking the snapshot to roll back to "
                f"failed: {exc}; nothing was changed"
            ) from exc
    if journal is not None:
        journal(snapshots)
    if isinstance(adapter, BaseAdapter):
        return _apply_batch(adapter, plans, snapshots)
    results: list[ApplyResult] = []
    for plan in plans:
        try:
            results.append(adapter.apply(plan.zone, plan))
        except KrsError as exc:
            wrote = not isinstance(exc, ApplyFailed) or exc.wrote
            touched = [r.zone for r in results] + ([plan.zone] if wrote else [])
            outcome = restore_zones(adapter, {z: snapshots[z] for z in touched})
            raise AdapterError(f"{exc}{outcome}") from exc
    return results


def _apply_batch(
    adapter: BaseAdapter[Any], plans: Sequence[KeyPlan], snapshots: dict[dns.name.Name, str]
) -> list[ApplyResult]:
    """All zones through ``apply_batch`` (the server told once, where it allows); on failure,
    every zone the batch wrote is restored: a zone that fails still puts back all the others,
    as zone by zone did."""
    try:
        return adapter.apply_batch(plans)
    except KrsError as exc:
        if isinstance(exc, ApplyFailed) and exc.touched is not None:
            touched = list(exc.touched)
        else:  # not known how far it got: every zone
            touched = [plan.zone for plan in plans]
        outcome = restore_zones(adapter, {z: snapshots[z] for z in touched})
        raise AdapterError(f"{exc}{outcome}") from exc


def restore_zones(adapter: Adapter, snapshots: dict[dns.name.Name, str]) -> str:
    """Restore each zone; a text to append to the error: what each restore achieved."""
    if not snapshots:
        return ""
    said = []
    for zone, snapshot in snapshots.items():
        try:
            outcome = adapter.restore(zone, snapshot)
        except (KrsError, OSError) as exc:
            log.error("%s, zone %s: rollback failed: %s", adapter.name, zone, exc)
            outcome = f"rollback failed: {exc}"
        said.append(f"zone {zone}: {outcome}" if len(snapshots) > 1 else outcome)
    return "; rolled back: " + "; ".join(said)
