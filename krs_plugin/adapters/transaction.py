"""All or nothing across the zones of a distribution: the one owner of rollback.

Adapters never roll back by themselves (base.py): ``apply_atomically`` snapshots every zone of the
plans first, hands the snapshots to the journal (so a crash mid-apply can be undone at the next
start), applies zone by zone and, if any zone fails, restores each zone it touched, once: the zones
already applied and the failing one, unless that one was refused before anything was written.
The error then says what failed and what each restore achieved (docs/architecture.md, "Rollback").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import dns.name

from krs_plugin.adapters.base import Adapter, ApplyFailed, ApplyResult, KeyPlan
from krs_plugin.errors import AdapterError, KrsError

log = logging.getLogger(__name__)

Journal = Callable[[dict[dns.name.Name, str]], None]


def apply_atomically(
    adapter: Adapter, plans: Sequence[KeyPlan], journal: Journal | None = None
) -> list[ApplyResult]:
    """Apply ``plans`` in order; on failure, put every touched zone back and raise AdapterError
    (the failure, then what the rollback did)."""
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
