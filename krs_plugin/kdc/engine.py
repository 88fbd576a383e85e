"""The lifecycle engine: one pass over every zone that has a policy (docs/lifecycle.md, "How the
engine rolls keys").

Per zone, at most one rollover runs. A pass begins its current step (record states move, the
keys' states follow, one distribution to every node of the zone, the node set frozen), checks the
gate (``gate.check_gate``: every node confirmed serving the step), waits for the step's records to
settle (``records.settles_at``, from the last node's confirmation or the operator's ``ds seen``)
and moves on. Each change is one transaction with its history entry, so the pass is restart-safe:
``krs-kdc serve`` runs it every second; a pass that finds nothing due changes nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace

from krs_plugin.errors import KrsError
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.enginestate import EngineState, PassSnapshot, Rollover
from krs_plugin.kdc.gate import GateResult, Served, check_gate
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.keygen import new_key
from krs_plugin.kdc.methods import Step, algorithm_steps, initial_step, steps_for
from krs_plugin.kdc.policy import Policy, intervals
from krs_plugin.kdc.records import (
    RECORDS_OF_ROLE,
    VISIBLE,
    KeyRecords,
    State,
    expected,
    settles_at,
)
from krs_plugin.kdc.store import KeyRow, StateError, Store
from krs_plugin.logs import context
from krs_plugin.sqlitedb import StateWriteError

log = logging.getLogger(__name__)

SIGNING = ("krrsig", "zrrsig")
DEFAULT_RESEND_AFTER = 600.0
ADOPTED = "engine: the zone got a policy"


@dataclass(frozen=True)
class EngineOptions:
    # A node that confirmed a step but serves something else, or whose copy expired unconfirmed,
    # gets the step again after this long (it re-applies and reads its server again); a node
    # whose copy is still published waits for it (docs/lifecycle.md, "When a node lags").
    resend_after: float = DEFAULT_RESEND_AFTER
    pass_budget: float = 0.5  # seconds of work per pass before the rest waits for the next


@dataclass(frozen=True)
class ZoneView:
    """Where one zone's lifecycle stands: what ``status`` shows and the metrics count."""

    zone: str
    policy: str
    phase: str  # idle, "ZSK rollover", ...
    step: str  # "2 of 3: sign with the new ZSK instead of the old", or ""
    waits_for: str  # "nodes", "time", "parent", "operator", "" (idle)
    until: int | None  # the earliest time the step completes, when waiting for time
    lagging: dict[str, str] = field(default_factory=dict)
    rollover: Rollover | None = None
    next_rollover: tuple[str, int] | None = None  # (role, when) by lifetime, when idle
    problem: str = ""


def policy_zones(store: Store) -> list[tuple[str, str]]:
    """(zone, policy name) of every zone the engine runs."""
    rows = store.db.execute(
        "SELECT name, policy FROM zones WHERE policy IS NOT NULL ORDER BY name"
    ).fetchall()
    return [(r["name"], r["policy"]) for r in rows]


class Engine:
    """The engine's pass; ``identity`` seals and signs the step distributions (the commands
    that only read or record, such as ``status`` and ``ds seen``, run without it)."""

    def __init__(
        self,
        store: Store,
        identity: KdcIdentity | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self.store = store
        self.state = EngineState(store)
        self.identity = identity
        self.options = options or EngineOptions()
        self._problems: dict[str, str] = {}  # zone -> last problem logged (logged once)
        self._resume_at = 0  # the zone (index in name order) the next pass begins with

    # --- the pass ---------------------------------------------------------------------------------

    def run_pass(self, now: float) -> None:
        """One pass. Zones that have something due run until ``pass_budget`` seconds are spent
        (sealing a step for many nodes takes milliseconds per zone, and serve answers nothing
        while a pass runs); the next pass starts at the first zone this one left, so every
        zone gets its turn."""
        snapshot = self.state.snapshot()
        policies: dict[str, Policy] = {}
        zones = policy_zones(self.store)
        start = self._resume_at % len(zones) if zones else 0
        began = time.monotonic()
        self._resume_at = 0
        for index, (zone, policy_name) in enumerate(zones[start:] + zones[:start]):
            if index and time.monotonic() - began > self.options.pass_budget:
                self._resume_at = (start + index) % len(zones)
                break
            try:
                policy = policies.get(policy_name)
                if policy is None:
                    policy = policies[policy_name] = self.store.require_policy(policy_name)
                if not self.nothing_due(snapshot, zone, policy, int(now)):
                    self.run_zone(zone, policy, int(now))
            except StateWriteError:
                raise  # kdc.db takes no change: serve reports it and tries the next pass
            except KrsError as exc:
                if self._problems.get(zone) != str(exc):
                    log.warning("zone %s: the lifecycle engine is held: %s", zone, exc,
                                extra=context(zone=zone))  # fmt: skip
                    self._problems[zone] = str(exc)
            except Exception as exc:  # a fault here must not stop serve's other zones
                if self._problems.get(zone) != repr(exc):
                    log.exception("zone %s: the lifecycle engine failed", zone,
                                  extra=context(zone=zone))  # fmt: skip
                    self._problems[zone] = repr(exc)
            else:
                self._problems.pop(zone, None)

    def run_zone(self, zone: str, policy: Policy, now: int) -> None:
        rollover = self.state.current(zone)
        if rollover is None:
            self._settle_loose_ds(zone, policy, now)
            rollover = self._start_due(zone, policy, now)
            if rollover is None:
                return
        if rollover.step_started_at is None:
            self._begin_step(rollover, policy, now)
            rollover = self.state.current(zone)
            if rollover is None:
                return
        self._advance(rollover, policy, now)

    def nothing_due(self, snapshot: PassSnapshot, zone: str, policy: Policy, now: int) -> bool:
        """True only when ``run_zone`` would change nothing for ``zone`` now, judged from the
        pass's snapshot (a few queries for every zone, where ``run_zone`` makes several per
        zone): idle and no rollover due by lifetime, no DS to settle; at a step no node has
        confirmed since it began, with no resend due; or waiting for its records to settle
        (or for the operator). Anything else, and anything this does not know, runs the zone.
        A change made after the snapshot (a command) is seen at the next pass."""
        rollover = snapshot.running.get(zone)
        rows = snapshot.keys.get(zone, [])
        records = snapshot.key_records(zone)
        if rollover is None:
            if zone in snapshot.moving_ds:
                return False  # _settle_loose_ds
            live = [(k, r) for k, r in zip(rows, records, strict=True) if k.state != "removed"]
            if not live or not snapshot.has_records(zone):
                return False  # first keys, or adoption (or records on removed keys only)
            if any(k.algorithm != policy.algorithm for k, _ in live):
                return False  # an algorithm rollover to start
            if zone in snapshot.requested:
                return False  # an emergency rollover requested
            if standby_missing([r for _, r in live], [k for k, _ in live], policy):
                return False  # a standby key to publish
            due = next_by_lifetime([r for _, r in live], [k for k, _ in live], policy)
            return due is None or due[1] > now
        if rollover.step_started_at is None:
            return False
        step = self.steps(rollover, policy)[rollover.step]
        if rollover.reached_at is None:
            latest = snapshot.latest_read.get(zone)
            if latest is not None and latest >= rollover.step_started_at:
                return False  # a node confirmed since the step began: the gate may be reached
            last = rollover.resent_at or rollover.step_started_at
            return rollover.distribution_id is None or now - last < self.options.resend_after
        when = self.settles(rollover, policy, step, records)
        return when is None or when > now

    # --- starting rollovers ---------------------------------------------------------------

    def _start_due(self, zone: str, policy: Policy, now: int) -> Rollover | None:
        """A zone's first keys, the adoption of keys made by hand, or a rollover whose key's
        lifetime ends (started Ipub ahead, so the successor is omnipresent when it ends)."""
        live = [k for k in self.store.keys(zone) if k.state != "removed"]
        if not live:
            return self.start(zone, "initial", cause="engine: the zone has a policy and no keys",
                              now=now)  # fmt: skip
        if self._adopt(zone, live, now):
            return None
        records = self.state.key_records(zone, live)
        request = self.state.next_request(zone)
        if request is not None:
            return self._requested(zone, request, now)
        signing = [current_key(records, live, role) for role in policy.roles]
        old = sorted({k.algorithm for k in signing if k is not None} - {policy.algorithm})
        if old:
            return self.start(zone, "algorithm", now=now, cause=(
                f"engine: the policy's algorithm is {policy.algorithm}, the zone signs with "
                f"{', '.join(map(str, old))}"))  # fmt: skip
        due = next_by_lifetime(records, live, policy)
        if due is not None and due[1] <= now:
            role, _ = due
            return self.start(zone, role, cause=f"time: the {role}'s lifetime ends", now=now)
        missing = standby_missing(records, live, policy)
        if missing is not None:
            keep = f"engine: the policy keeps a standby {missing}"
            return self.start(zone, missing, method="standby", now=now, cause=keep)
        return None

    def _requested(self, zone: str, request: tuple[int, int, str], now: int) -> Rollover | None:
        """The oldest emergency rollover requested while another ran (``node compromised``)."""
        request_id, key_id, cause = request
        key = self.store.key_by_id(key_id)
        with self.store.transaction():
            self.state.drop_request(request_id)
            if key.state == "removed":
                self.state.log(
                    zone,
                    "request-dropped",
                    {"key": key.key_tag, "why": "the key was removed meanwhile"},
                    cause=cause,
                    now=now,
                )
                return None  # fmt: skip
            return self.emergency(zone, key.key_tag, cause=cause, now=now)

    def start(
        self,
        zone: str,
        role: str,
        *,
        cause: str,
        now: int,
        method: str | None = None,
        old: KeyRow | None = None,
        new: KeyRow | None = None,
        step: int = 0,
    ) -> Rollover:
        """A new rollover of ``role`` (or ``initial``, ``algorithm``), its new key(s) made now,
        begun at the engine's next pass; a ZSK pre-publish rollover takes a standby ZSK instead
        and begins at its second step. ``old``: the key to replace (default: the one signing);
        ``new`` and ``step``: a standby to replace it with, and the step to begin at (an
        emergency). Refused while one runs, or when the method is not built."""  # fmt: skip
        policy_name = self.store.zone_policy(zone)
        if policy_name is None:
            raise StateError(
                f"zone {zone} has no policy: its keys change by hand (krs-kdc zone set {zone} "
                "--policy NAME gives it one)"
            )
        policy = self.store.require_policy(policy_name)
        running = self.state.current(zone)
        if running is not None:
            raise StateError(
                f"zone {zone} has a {running.role} rollover running (step {running.step + 1}); "
                "one rollover per zone at a time: see krs-kdc status"
            )
        first = step
        with self.store.transaction():
            if role == "initial":
                keys = {f"new:{r}": self._new_key(zone, r, policy, now).id for r in policy.roles}
                method = "initial"
            elif role == "algorithm":
                records, rows = self.state.key_records(zone), self.store.keys(zone)
                keys = {}
                for r in policy.roles:
                    current = current_key(records, rows, r)
                    if current is None:
                        raise StateError(f"zone {zone} has no {r} signing now to roll")
                    keys[f"old:{r}"] = current.id
                    keys[f"new:{r}"] = self._new_key(zone, r, policy, now).id
                method = policy.algorithm_method
            else:
                if role not in policy.roles:
                    raise StateError(
                        f"zone {zone}'s policy {policy_name} has layout {policy.layout}: no "
                        f"{role} to roll (roles: {', '.join(policy.roles)})"
                    )
                method = method or getattr(policy, f"{role.lower()}_method")
                if steps_for(role, method) is None:
                    raise StateError(
                        f"the {role} method {method} of policy {policy_name} is not built yet "
                        "(docs/lifecycle.md, 'Steps of each method')"
                    )
                records, rows = self.state.key_records(zone), self.store.keys(zone)
                if method == "standby":
                    keys = {"new": self._new_key(zone, role, policy, now).id}
                elif method == "withdraw":
                    assert old is not None
                    keys = {"old": old.id}
                else:
                    old = old or current_key(records, rows, role)
                    if old is None:
                        raise StateError(f"zone {zone} has no {role} signing now to roll")
                    spare = standby_keys(records, rows, ready=True) if role == "ZSK" else []
                    if new is not None:  # a standby the caller chose (an emergency)
                        keys = {"old": old.id, "new": new.id}
                    elif spare and method == "pre-publish":  # in every cache: swap now
                        keys, first = {"old": old.id, "new": spare[0].id}, 1
                    else:
                        keys = {"old": old.id, "new": self._new_key(zone, role, policy, now).id}
            rollover = self.state.add_rollover(
                zone, role, method, keys, cause=cause, now=now, step=first
            )
            self.state.log(
                zone,
                "rollover-started",
                {"role": role, "method": method, "keys": self._tags(keys)},
                cause=cause,
                now=now,
            )
        return rollover

    def emergency(self, zone: str, key_tag: int, *, cause: str, now: int) -> Rollover:
        """Replace a compromised key by the fastest safe schedule (docs/lifecycle.md,
        "Emergency rollovers"): the signing ZSK by a standby ZSK when one is in every cache
        (only the retire side is waited), else by a new one; a standby ZSK is withdrawn; a KSK
        or CSK by a rollover of its method started now."""
        zone = self.store.require_zone(zone)
        rows = [r for r in self.store.keys(zone) if r.key_tag == key_tag and r.state != "removed"]
        if not rows:
            raise StateError(f"zone {zone} has no live key {key_tag} (see krs-kdc key list)")
        key = rows[0]
        records = {r.key_id: r for r in self.state.key_records(zone)}
        rec = records[key.id]
        signing = rec.visible("zrrsig") or rec.visible("krrsig")
        if key.role == "ZSK" and not signing:
            if not rec.visible("dnskey"):
                raise StateError(f"key {key_tag} of {zone} is neither served nor signing")
            return self.start(zone, "ZSK", method="withdraw", old=key, now=now, cause=cause)
        if not signing:
            raise StateError(f"key {key_tag} of {zone} does not sign: nothing to replace")
        if key.role == "KSK":
            rows_all = self.store.keys(zone)
            spare = standby_keys(list(records.values()), rows_all, "KSK", ready=True)
            if spare:  # its DS already at the parent: a double-DS swap, its first step done
                return self.start(zone, "KSK", method="double-ds", old=key, new=spare[0],
                                  step=1, now=now, cause=cause)  # fmt: skip
        method = "pre-publish" if key.role == "ZSK" else None
        return self.start(zone, key.role, method=method, old=key, now=now, cause=cause)

    def _new_key(self, zone: str, role: str, policy: Policy, now: int) -> KeyRow:
        return new_key(self.store, zone, role, policy.algorithm, now=now, ttl=policy.dnskey_ttl)

    def adopt(self, zone: str, now: int, *, cause: str = ADOPTED) -> bool:
        """Take over the keys of a zone that just got a policy (``zone set --policy``), so that
        ``status``, ``plan`` and ``rollover`` see them at once."""
        return self._adopt(zone, [k for k in self.store.keys(zone) if k.state != "removed"], now,
                           cause=cause)  # fmt: skip

    def _adopt(self, zone: str, live: list[KeyRow], now: int, *, cause: str = ADOPTED) -> bool:
        """Keys made by hand before the zone had a policy: their records are taken as
        omnipresent as their states say (a KSK that was published: its DS too, as the
        operator published it). False when there is nothing to adopt (no live keys, or the
        engine keeps their records already)."""
        if not live or self.state.has_records(zone):
            return False
        with self.store.transaction():
            for row in live:
                published = row.state in ("published", "active", "retired")
                visible = {
                    "dnskey": published,
                    "krrsig": row.state == "active",
                    "zrrsig": row.state == "active",
                    "ds": published,
                    "cds": False,  # published by the engine's steps only
                }
                for record in RECORDS_OF_ROLE[row.role]:
                    state = State.OMNIPRESENT if visible[record] else State.HIDDEN
                    self.state.set_record(row.id, record, state, now)
            self.state.log(
                zone,
                "adopted",
                {"keys": [f"{k.role} {k.key_tag} {k.state}" for k in live]},
                cause=cause,
                now=now,
            )
        return True

    def _settle_loose_ds(self, zone: str, policy: Policy, now: int) -> None:
        """A DS the operator reported outside a rollover (``ds seen`` for a zone's first KSK)
        settles by time."""
        rows = self.store.keys(zone)
        for rec in self.state.key_records(zone, rows):
            if rec.state("ds") not in (State.RUMOURED, State.UNRETENTIVE):
                continue
            since = self.state.record_changed_at(rec.key_id, "ds") or now
            ttl = policy.dnskey_ttl
            served = self.state.observed_ds_ttl(zone) or 0
            if served > policy.parent_ds_ttl:  # the parent's own TTL, seen by the KDC
                policy = policy.changed(parent_ds_ttl=served)
            if settles_at("ds", rec.state("ds"), since=since, policy=policy, dnskey_ttl=ttl) > now:
                continue
            settled = _settled(rec.state("ds"))
            with self.store.transaction():
                self.state.set_record(rec.key_id, "ds", settled, now)
                self.state.log(
                    zone, "record-settled", {"key": rec.key_tag, "record": "ds", "state": settled},
                    cause="time", now=now,
                )  # fmt: skip

    # --- steps ---------------------------------------------------------------------------

    def steps(self, rollover: Rollover, policy: Policy | None = None) -> tuple[Step, ...]:
        """The rollover's steps under the zone's policy (its ``cds`` adds CDS changes)."""
        if policy is None:
            name = self.store.zone_policy(rollover.zone)
            policy = self.store.require_policy(name) if name is not None else Policy()
        if rollover.role == "initial":
            roles = tuple(k.split(":", 1)[1] for k in rollover.keys)
            return (initial_step(roles, policy.cds),)
        if rollover.role == "algorithm":
            roles = tuple(k.split(":", 1)[1] for k in rollover.keys if k.startswith("new:"))
            return algorithm_steps(roles, policy.cds, rollover.method)
        steps = steps_for(rollover.role, rollover.method, policy.cds)
        if steps is None:
            raise StateError(f"the {rollover.role} method {rollover.method} is not built yet")
        return steps

    def _begin_step(self, rollover: Rollover, policy: Policy, now: int) -> None:
        step = self.steps(rollover, policy)[rollover.step]
        zone = rollover.zone
        with self.store.transaction():
            records = {r.key_id: r for r in self.state.key_records(zone)}
            moved = []
            for change in step.changes:
                key_id = rollover.keys.get(change.which)
                if key_id is None:
                    continue
                current = records[key_id].state(change.record)
                if change.to is State.UNRETENTIVE and current is State.HIDDEN:
                    continue  # e.g. the old KSK's DS, never reported at the parent
                if change.to is State.RUMOURED and current is State.OMNIPRESENT:
                    continue  # a standby's DNSKEY or DS, already everywhere
                self.state.set_record(key_id, change.record, change.to, now)
                moved.append(f"{records[key_id].key_tag} {change.record} {change.to}")
            self._sync_keys(zone, now)
            nodes = self.state.zone_nodes(zone)
            dist_id = None
            if step.visible:
                dist_id = distribute_zone(self.store, self._signer(), zone, now=now).distribution_id
            self.state.update_rollover(
                rollover.id,
                step_started_at=now,
                distribution_id=dist_id,
                nodes=nodes,
                reached_at=None if step.visible else now,
                largest_dnskey_ttl=None,
                resent_at=None,
            )
            self.state.log(
                zone,
                "step-begun",
                {
                    "step": rollover.step + 1,
                    "of": len(self.steps(rollover, policy)),
                    "does": step.says,
                    "records": moved,
                    "distribution": dist_id,
                    "nodes": nodes,
                },
                cause="engine",
                now=now,
            )
        log.info(
            "zone %s: %s step %d began: %s%s", zone, rollover.role, rollover.step + 1, step.says,
            f" (distribution {dist_id} to {len(nodes)} nodes)" if dist_id else "",
            extra=context(zone=zone, distribution_id=dist_id),
        )  # fmt: skip

    def gate(self, rollover: Rollover, policy: Policy) -> GateResult:
        """Whether every node of the step's set serves what the records say (check_gate)."""
        zone = rollover.zone
        nodes = self._step_nodes(rollover)
        served: dict[str, Served | None] = {n: None for n in nodes}
        for row in self.store.served_state(zone=zone, latest=True):
            if row.node_id in served:
                served[row.node_id] = Served.from_report(row.state)
        wanted = expected(
            zone, self.state.key_records(zone), policy.dnskey_ttl, compare_cds=policy.cds != "none"
        )
        since = rollover.step_started_at or 0
        result = check_gate(wanted, nodes, served, since=since)
        # A node that reported it could not apply the step (its adapter refused it) is named
        # with its error (docs/lifecycle.md, "When a step is stuck"), not as silent.
        lagging = dict(result.lagging)
        for node in result.lagging:
            failed = self.store.last_failure(node) if node else None
            if failed is not None and failed.zone == zone and (failed.failed_at or 0) >= since:
                lagging[node] = f"could not apply: {failed.error}"
        return replace(result, lagging=lagging)

    def _step_nodes(self, rollover: Rollover) -> list[str]:
        """The step's frozen set, less nodes an operator took out of the zone since."""
        present = set(self.state.zone_nodes(rollover.zone))
        return [n for n in rollover.nodes if n in present]

    def _advance(self, rollover: Rollover, policy: Policy, now: int) -> None:
        zone = rollover.zone
        steps = self.steps(rollover, policy)
        step = steps[rollover.step]
        if rollover.reached_at is None:
            result = self.gate(rollover, policy)
            if not result.reached:
                self._maybe_resend(rollover, result, now)
                return
            with self.store.transaction():
                self.state.update_rollover(
                    rollover.id,
                    reached_at=result.reached_at,
                    largest_dnskey_ttl=result.largest_dnskey_ttl,
                )
                self.state.log(
                    zone,
                    "step-served",
                    {"step": rollover.step + 1, "nodes": self._step_nodes(rollover),
                     "last_confirmation": result.reached_at},
                    cause="confirmations",
                    now=now,
                )  # fmt: skip
            log.info("zone %s: every node serves step %d", zone, rollover.step + 1,
                     extra=context(zone=zone))  # fmt: skip
            rollover = self.state.current(zone) or rollover
        when = self.settles(rollover, policy, step)
        if when is None or when > now:
            return
        with self.store.transaction():
            records = {r.key_id: r for r in self.state.key_records(zone)}
            settled = []
            for change in step.changes:
                key_id = rollover.keys.get(change.which)
                if key_id is None or records[key_id].state(change.record) is not change.to:
                    continue
                state = _settled(change.to)
                self.state.set_record(key_id, change.record, state, now)
                settled.append(f"{records[key_id].key_tag} {change.record} {state}")
            self._sync_keys(zone, now)
            self.state.log(
                zone,
                "step-done",
                {"step": rollover.step + 1, "records": settled},
                cause="time",
                now=now,
            )
            if rollover.step + 1 >= len(steps):
                self.state.update_rollover(rollover.id, finished_at=now)
                self.state.log(
                    zone, "rollover-done", {"role": rollover.role}, cause="engine", now=now
                )
            else:
                self.state.update_rollover(
                    rollover.id, step=rollover.step + 1, step_started_at=None, reached_at=None
                )
        log.info("zone %s: %s step %d done", zone, rollover.role, rollover.step + 1,
                 extra=context(zone=zone))  # fmt: skip
        following = self.state.current(zone)
        if following is not None and following.step_started_at is None:
            self._begin_step(following, policy, now)

    def settles(
        self,
        rollover: Rollover,
        policy: Policy,
        step: Step,
        known: list[KeyRecords] | None = None,
    ) -> int | None:
        """When the step's records have all settled; None while it waits for nodes or the
        operator (``ds seen``/``ds gone``). ``known``: the zone's records, already read."""
        if rollover.reached_at is None:
            return None
        if known is None:
            known = self.state.key_records(rollover.zone)
        records = {r.key_id: r for r in known}
        ttl = max(rollover.largest_dnskey_ttl or 0, policy.dnskey_ttl)
        if (rollover.parent_ds_ttl or 0) > policy.parent_ds_ttl:  # what the parent served
            policy = policy.changed(parent_ds_ttl=rollover.parent_ds_ttl)
        times = [rollover.reached_at]
        for change in step.changes:
            key_id = rollover.keys.get(change.which)
            if key_id is None or records[key_id].state(change.record) is not change.to:
                continue
            since = rollover.reached_at
            if change.record == "ds":
                told = rollover.ds_seen_at if change.to is State.RUMOURED else rollover.ds_gone_at
                if told is None:
                    return None
                since = told
            times.append(
                settles_at(change.record, change.to, since=since, policy=policy, dnskey_ttl=ttl,
                           first_signing=rollover.role == "initial")
            )  # fmt: skip
        return max(times)

    def _maybe_resend(self, rollover: Rollover, result: GateResult, now: int) -> None:
        """Send the step again, at most every ``resend_after`` seconds, to nodes that confirmed
        it but serve something else, and to nodes whose copy expired unconfirmed (withdrawn
        from the control zone, it would never reach them); a node whose copy is still
        published needs nothing new."""
        if rollover.distribution_id is None or rollover.step_started_at is None:
            return
        last = rollover.resent_at or rollover.step_started_at
        if now - last < self.options.resend_after:
            return
        waiting = {  # nodes with the step's distribution still published for them
            d.node_id for d in self.store.distributions(status="pending")
            if d.zone == rollover.zone and d.created_at >= rollover.step_started_at
        }  # fmt: skip
        again = [
            node for node, why in result.lagging.items()
            if node and (not why.startswith("has not confirmed") or node not in waiting)
        ]  # fmt: skip
        if not again:
            return
        with self.store.transaction():
            summary = distribute_zone(
                self.store, self._signer(), rollover.zone, node_ids=again, now=now
            )
            self.state.update_rollover(rollover.id, resent_at=now)
            self.state.log(
                rollover.zone,
                "step-resent",
                {"step": rollover.step + 1, "nodes": result.lagging,
                 "distribution": summary.distribution_id},
                cause="engine",
                now=now,
            )  # fmt: skip
        log.warning(
            "zone %s: step %d sent again to %s: %s", rollover.zone, rollover.step + 1,
            ", ".join(again), "; ".join(f"{n} {w}" for n, w in result.lagging.items()),
            extra=context(zone=rollover.zone, distribution_id=summary.distribution_id),
        )  # fmt: skip

    def _sync_keys(self, zone: str, now: int) -> None:
        """The keys' states and times follow their records: what distributions send (a key
        published and not signing has no activate time; docs/lifecycle.md)."""
        rows = self.store.keys(zone)
        for row, rec in zip(rows, self.state.key_records(zone, rows), strict=True):
            state, times = key_state(row, rec, now)
            if state == row.state and not times:
                continue
            assignments = ["state = ?"] + [f"{column} = ?" for column in times]
            self.store.db.execute(
                f"UPDATE keys SET {', '.join(assignments)} WHERE id = ?",
                [state, *times.values(), row.id],
            )
            self.store.audit_key_state(row, state, "engine", now=now, times=dict(times))

    def _signer(self) -> KdcIdentity:
        if self.identity is None:
            raise StateError("the lifecycle engine distributes only inside krs-kdc serve")
        return self.identity

    def _tags(self, keys: dict[str, int]) -> dict[str, int]:
        return {which: self.store.key_by_id(key_id).key_tag for which, key_id in keys.items()}

    # --- what status, plan and the metrics show ------------------------------------------

    def view(self, zone: str, now: int) -> ZoneView:
        """Where ``zone``'s lifecycle stands, read from kdc.db (changes nothing)."""
        zone = self.store.require_zone(zone)
        policy_name = self.store.zone_policy(zone)
        if policy_name is None:
            return ZoneView(zone, "", "manual", "", "", None)
        policy = self.store.require_policy(policy_name)
        rollover = self.state.current(zone)
        if rollover is None:
            rows = self.store.keys(zone)
            if not any(r.state != "removed" for r in rows):
                return ZoneView(zone, policy_name, "no keys", "", "engine", None,
                                problem="krs-kdc serve makes the zone's first keys")  # fmt: skip
            nxt = next_by_lifetime(self.state.key_records(zone, rows), rows, policy)
            return ZoneView(zone, policy_name, "idle", "", "", None, next_rollover=nxt)
        phase = "first keys" if rollover.role == "initial" else f"{rollover.role} rollover"
        try:
            steps = self.steps(rollover, policy)
        except StateError as exc:
            return ZoneView(zone, policy_name, phase, "", "operator", None, rollover=rollover,
                            problem=str(exc))  # fmt: skip
        step = steps[rollover.step]
        text = f"{rollover.step + 1} of {len(steps)}: {step.says}"
        if rollover.step_started_at is None:
            problem = "" if self.store.nodes(zone) else (
                f"no node serves {zone}: add one (krs-kdc node add or enroll create)"
            )  # fmt: skip
            return ZoneView(zone, policy_name, phase, text, "engine", None, rollover=rollover,
                            problem=problem)  # fmt: skip
        if rollover.reached_at is None:
            result = self.gate(rollover, policy)
            if result.reached:
                return ZoneView(zone, policy_name, phase, text, "engine", None, rollover=rollover)
            return ZoneView(zone, policy_name, phase, text, "nodes", None, dict(result.lagging),
                            rollover=rollover)  # fmt: skip
        when = self.settles(rollover, policy, step)
        if when is None:
            new, old = self.ds_awaited(rollover, step)
            missing = []
            if new:
                missing.append(f"krs-kdc ds seen --zone {zone} (the new DS at the parent)")
            if old:
                missing.append(f"krs-kdc ds gone --zone {zone} (the old DS gone)")
            return ZoneView(zone, policy_name, phase, text, "parent", None, rollover=rollover,
                            problem="; ".join(missing))  # fmt: skip
        return ZoneView(zone, policy_name, phase, text, "time", when, rollover=rollover)

    def ds_awaited(self, rollover: Rollover, step: Step) -> tuple[list[int], list[int]]:
        """The keys (ids) whose new DS the step still waits to see at the parent, and those
        whose old DS it still waits to see gone (``ds seen``/``ds gone`` not recorded yet)."""
        records = {r.key_id: r for r in self.state.key_records(rollover.zone)}
        new, old = [], []
        for change in step.changes:
            key_id = rollover.keys.get(change.which)
            if change.record != "ds" or key_id is None:
                continue
            if records[key_id].state("ds") is not change.to:
                continue
            if change.to is State.RUMOURED and rollover.ds_seen_at is None:
                new.append(key_id)
            if change.to is State.UNRETENTIVE and rollover.ds_gone_at is None:
                old.append(key_id)
        return new, old

    def plan(self, zone: str, now: int) -> list[PlannedStep]:
        """Every future step of the running rollover, or of the next one by lifetime: its
        earliest time (every node confirming at once, the operator answering at once), what it
        waits for and the DNSKEYs every node serves during it."""
        zone = self.store.require_zone(zone)
        policy_name = self.store.zone_policy(zone)
        if policy_name is None:
            return []
        policy = self.store.require_policy(policy_name)
        rows = self.store.keys(zone)
        records = self.state.key_records(zone, rows)
        names = {r.key_id: f"{r.role} {r.key_tag}" for r in records}
        states = {r.key_id: dict(r.states) for r in records}
        rollover = self.state.current(zone)
        if rollover is not None:
            role, keys, first = rollover.role, dict(rollover.keys), rollover.step
            steps = self.steps(rollover, policy)
            start = now
            if rollover.step_started_at is not None:  # the current step's changes are made
                when = self.settles(rollover, policy, steps[first])
                start = max(now, when or now)
                _settle_all(states, keys, steps[first])
                first += 1
        else:
            due = next_by_lifetime(records, rows, policy)
            if due is None:
                return []
            role, start = due[0], max(now, due[1])
            method = getattr(policy, f"{role.lower()}_method")
            found = steps_for(role, method, policy.cds)
            old = current_key(records, rows, role)
            if found is None or old is None:
                return []
            steps, first = found, 0
            keys = {"old": old.id, "new": -1}
            names[-1] = f"{role} (new)"
            states[-1] = {rec: State.HIDDEN for rec in RECORDS_OF_ROLE[role]}
        planned = []
        for index in range(first, len(steps)):
            step = steps[index]
            for change in step.changes:
                key_id = keys.get(change.which)
                if key_id is None:
                    continue
                before = states[key_id].get(change.record, State.HIDDEN)
                if change.to is State.UNRETENTIVE and before is State.HIDDEN:
                    continue
                states[key_id][change.record] = change.to
            waits = (["nodes"] if step.visible else []) + (
                ["parent"] if step.waits_for_parent else []
            )
            longest = 0
            for change in step.changes:
                key_id = keys.get(change.which)
                if key_id is None or states[key_id].get(change.record) is not change.to:
                    continue
                longest = max(
                    longest,
                    settles_at(change.record, change.to, since=0, policy=policy,
                               dnskey_ttl=policy.dnskey_ttl, first_signing=role == "initial"),
                )  # fmt: skip
            served = sorted(
                names[k] for k, st in states.items()
                if st.get("dnskey") in (State.RUMOURED, State.OMNIPRESENT)
            )  # fmt: skip
            signing = sorted(
                names[k] for k, st in states.items()
                if any(st.get(r) in (State.RUMOURED, State.OMNIPRESENT) for r in SIGNING)
            )  # fmt: skip
            planned.append(
                PlannedStep(role, index + 1, len(steps), step.says, start, start + longest,
                            (*waits, "time"), tuple(served), tuple(signing))
            )  # fmt: skip
            _settle_all(states, keys, step)
            start += longest
        return planned

    # --- the operator's word on the parent --------------------------------------------------

    def ds_reported(self, zone: str, *, seen: bool, now: int, cause: str) -> str:
        """``ds seen``/``ds gone``: the parent serves the new DS / no longer the old one."""
        zone = self.store.require_zone(zone)
        rollover = self.state.current(zone)
        word = "seen" if seen else "gone"
        with self.store.transaction():
            if rollover is not None and rollover.step_started_at is not None:
                step = self.steps(rollover)[rollover.step]
                wanted = State.RUMOURED if seen else State.UNRETENTIVE
                records = {r.key_id: r for r in self.state.key_records(zone)}
                waits = [
                    c for c in step.changes
                    if c.record == "ds" and c.to is wanted and c.which in rollover.keys
                    and records[rollover.keys[c.which]].state("ds") is wanted
                ]  # fmt: skip
                if waits:
                    column = "ds_seen_at" if seen else "ds_gone_at"
                    self.state.update_rollover(rollover.id, **{column: now})
                    self.state.log(zone, f"ds-{word}", {"step": rollover.step + 1},
                                   cause=cause, now=now)  # fmt: skip
                    change = "serves the new DS" if seen else "no longer serves the old DS"
                    return f"recorded: the parent of {zone} {change}"
            if not seen:
                raise StateError(
                    f"zone {zone} is not at a step that waits for the old DS to go: nothing "
                    "recorded (see krs-kdc status)"
                )
            first = [
                r for r in self.state.key_records(zone)
                if r.role in ("KSK", "CSK") and r.state("dnskey") is State.OMNIPRESENT
                and r.state("ds") is State.HIDDEN
            ]  # fmt: skip
            # A ZSK rollover touches no KSK: the zone's first DS is the operator's at any time
            # once its KSK is omnipresent (docs/lifecycle.md, "Steps of each method"), and it
            # settles by time once the rollover is done.
            if rollover is not None and (rollover.role != "ZSK" or not first):
                raise StateError(
                    f"zone {zone}'s {rollover.role} rollover is at step {rollover.step + 1}, "
                    "which does not wait for the parent: nothing recorded (see krs-kdc status)"
                )
            if not first:
                raise StateError(
                    f"zone {zone} has no KSK whose DS the parent still needs: nothing recorded"
                )
            for rec in first:
                self.state.set_record(rec.key_id, "ds", State.RUMOURED, now)
            self.state.log(zone, "ds-seen", {"keys": [r.key_tag for r in first]},
                           cause=cause, now=now)  # fmt: skip
        tags = ", ".join(str(r.key_tag) for r in first)
        return f"recorded: the parent of {zone} serves the DS of {tags}"


@dataclass(frozen=True)
class PlannedStep:
    """One future step as ``krs-kdc plan`` shows it."""

    role: str
    step: int
    of: int
    says: str
    earliest_start: int
    earliest_done: int
    waits_for: tuple[str, ...]  # nodes, parent, time
    dnskeys: tuple[str, ...]  # "ZSK 12345" served by every node during the step
    signing: tuple[str, ...]


def _settle_all(states: dict[int, dict[str, State]], keys: dict[str, int], step: Step) -> None:
    for change in step.changes:
        key_id = keys.get(change.which)
        if key_id is not None and states[key_id].get(change.record) is change.to:
            states[key_id][change.record] = _settled(change.to)


def _settled(state: State) -> State:
    return State.OMNIPRESENT if state is State.RUMOURED else State.HIDDEN


def key_state(row: KeyRow, rec: KeyRecords, now: int) -> tuple[str, dict[str, int]]:
    """The key's state (created, published, active, retired, removed) and the times to record,
    from its records."""
    published = rec.visible("dnskey")
    signing = any(rec.visible(r) for r in SIGNING if r in rec.states)
    times: dict[str, int] = {}
    if signing and not published:  # an algorithm rollover's: signing, its DNSKEY not served
        if row.activate_at is None:
            times["activate_at"] = now
        return "active", times
    if published and row.publish_at is None:
        times["publish_at"] = now
    if published and signing:
        if row.activate_at is None:
            times["activate_at"] = now
        return "active", times
    if published:
        if row.activate_at is not None:
            if row.inactive_at is None:
                times["inactive_at"] = now
            return "retired", times
        return "published", times
    if row.publish_at is not None:
        if row.delete_at is None:
            times["delete_at"] = now
        if row.activate_at is not None and row.inactive_at is None:
            times["inactive_at"] = now
        return "removed", times
    return "created", times


def standby_keys(
    records: list[KeyRecords], rows: list[KeyRow], role: str = "ZSK", *, ready: bool = False
) -> list[KeyRow]:
    """Keys of ``role`` published and not signing (policy standby-zsks, standby-ksk), oldest
    first. ``ready``: only those an emergency can sign with at once: the DNSKEY in every cache,
    and for a KSK its DS too."""
    by_id = {r.id: r for r in rows}
    wanted = (State.OMNIPRESENT,) if ready else VISIBLE
    signs = "zrrsig" if role == "ZSK" else "krrsig"
    return sorted(
        (by_id[r.key_id] for r in records
         if r.role == role and r.key_id in by_id and by_id[r.key_id].state != "removed"
         and r.state("dnskey") in wanted and r.state(signs) is State.HIDDEN
         and (role == "ZSK" or not ready or r.state("ds") is State.OMNIPRESENT)),
        key=lambda k: k.id,
    )  # fmt: skip


def standby_missing(records: list[KeyRecords], rows: list[KeyRow], policy: Policy) -> str | None:
    """The role of a standby key the policy keeps and the zone lacks, or None. A standby KSK
    only once the zone is secure (a signing KSK's DS omnipresent): its DS joins that one."""
    for role, wanted in (("ZSK", policy.standby_zsks), ("KSK", policy.standby_ksk)):
        if role not in policy.roles or len(standby_keys(records, rows, role)) >= wanted:
            continue
        if role == "KSK" and not any(
            r.role == "KSK" and r.state("krrsig") is State.OMNIPRESENT
            and r.state("ds") is State.OMNIPRESENT for r in records
        ):  # fmt: skip
            continue
        return role
    return None


def current_key(records: list[KeyRecords], rows: list[KeyRow], role: str) -> KeyRow | None:
    """The key of ``role`` that signs now (its signatures omnipresent), the newest if several."""
    record = "zrrsig" if role == "ZSK" else "krrsig"
    by_id = {r.id: r for r in rows}
    candidates = [
        by_id[rec.key_id] for rec in records
        if rec.role == role and rec.state(record) is State.OMNIPRESENT
        and rec.state("dnskey") is State.OMNIPRESENT
    ]  # fmt: skip
    return max(candidates, key=lambda r: r.id) if candidates else None


def next_by_lifetime(
    records: list[KeyRecords], rows: list[KeyRow], policy: Policy
) -> tuple[str, int] | None:
    """The role whose current key's lifetime ends first, and when its rollover starts: Ipub
    ahead of the end, so the successor is in every cache when the old key's time is up."""
    due: list[tuple[int, str]] = []
    for role in policy.roles:
        lifetime = int(getattr(policy, f"{role.lower()}_lifetime"))
        if lifetime <= 0:
            continue
        key = current_key(records, rows, role)
        if key is None or key.activate_at is None:
            continue
        due.append((key.activate_at + lifetime - _ipub_seconds(policy, role), role))
    if not due:
        return None
    when, role = min(due)
    return role, when


@functools.lru_cache(maxsize=64)
def _ipub_seconds(policy: Policy, role: str) -> int:
    """Ipub of ``role`` under ``policy`` (a pass asks it for every zone; ``intervals`` also
    writes the formula out)."""
    return intervals(policy, role)[0].seconds
