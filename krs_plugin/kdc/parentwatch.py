"""The KDC's side of the parent (docs/lifecycle.md, "The parent"): where a zone's parent is,
how to push its DS, and the watch that replaces ``krs-kdc ds seen|gone``.

A zone whose parent is configured (``krs-kdc parent set``) needs no command at its DS steps.
When a step waits for the parent (a KSK rollover's DS swap, once every node serves its CDS; or
a zone's first DS, once its KSK is in every cache), ``krs-kdc serve`` pushes the DS set the
parent is to serve (RFC 2136 UPDATE or a hook, ``dspush``), then looks at every parent address
(``parent.observe``) until each serves the new DS, validated, and none the old one, backing off
from ``--parent-check-interval`` to ``--parent-check-max``. It then records ``ds seen``/``ds
gone`` itself, with the DS TTL the parent served when it is longer than the policy's. The
network work runs off serve's loop (``ParentTask.run``); what is read from and written to kdc.db
stays on it (``ParentDesk``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import dns.dnssec
from dns.dnssectypes import DSDigest

from krs_plugin.errors import KrsError
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.dspush import PushConfig, PushResult, push_ds
from krs_plugin.kdc.engine import Engine
from krs_plugin.kdc.parent import (
    DsTuple,
    ParentConfig,
    ParentView,
    ds_step_state,
    largest_ttl,
    observe,
    parse_anchor,
    split_address,
)
from krs_plugin.kdc.records import State
from krs_plugin.kdc.store import KeyRow, Store, canonical
from krs_plugin.logs import context
from krs_plugin.tsigkey import read_tsig_key

log = logging.getLogger(__name__)

PUSHED_DIGEST = 2  # SHA-256: the DS the KDC pushes and looks for (docs/lifecycle.md)
ANY_DIGEST = (1, 2, 4)  # a DS of the old key in any of these counts as still there
DEFAULT_CHECK_INTERVAL = 60.0
DEFAULT_CHECK_MAX = 3600.0


class ParentSettingsError(KrsError):
    """``krs-kdc parent set`` given settings that cannot work."""


@dataclass(frozen=True)
class ParentSettings:
    """One zone's parent: where to look (``ParentConfig``) and how to push (``PushConfig``)."""

    agents: tuple[str, ...] = ()
    resolver: str | None = None
    trust_anchor: str | None = None
    port: int = 53
    push_update: str | None = None
    tsig_file: str | None = None
    parent_zone: str | None = None
    push_hook: str | None = None

    def check(self) -> ParentSettings:
        """These settings, or ParentSettingsError naming what cannot work."""
        if not self.agents and not self.resolver:
            raise ParentSettingsError(
                "no parental agent and no resolver: give --agent HOST:PORT (each parent "
                "nameserver) or --resolver HOST:PORT (to find them from the parent's NS set)"
            )
        if not self.trust_anchor and not self.resolver:
            raise ParentSettingsError(
                "nothing to validate the parent's DS with: give --trust-anchor-file (the "
                "parent's DS or DNSKEY records) or --resolver HOST:PORT of a validating resolver"
            )
        for address in (*self.agents, self.resolver, self.push_update):
            if address is not None:
                try:
                    split_address(address)
                except ValueError as exc:
                    raise ParentSettingsError(f"address {address!r}: {exc}") from None
        if self.trust_anchor:
            try:
                parse_anchor(self.trust_anchor)
            except ValueError as exc:
                raise ParentSettingsError(f"trust anchor: {exc}") from None
        if self.push_update and not self.tsig_file:
            raise ParentSettingsError(
                "--push-update needs --tsig-file (the parent takes signed UPDATEs only)"
            )
        if self.tsig_file:
            read_tsig_key(self.tsig_file)  # TsigKeyFileError names the file and the problem
        if self.parent_zone:
            canonical(self.parent_zone)
        if not 0 < self.port < 65536:
            raise ParentSettingsError(f"--port {self.port}: not a port number")
        return self

    @property
    def pushes(self) -> bool:
        return bool(self.push_update or self.push_hook)

    def observe_config(self) -> ParentConfig:
        return ParentConfig(self.agents, self.resolver, self.trust_anchor, self.port)

    def push_config(self) -> PushConfig:
        return PushConfig(self.push_update, self.tsig_file, self.parent_zone, self.push_hook)

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> ParentSettings:
        data = json.loads(text)
        data["agents"] = tuple(data.get("agents") or ())
        return cls(**data)


# --- kdc.db ---------------------------------------------------------------------------------------


def parent_settings(store: Store, zone: str) -> ParentSettings | None:
    row = store.db.execute(
        "SELECT settings FROM zone_parents WHERE zone = ?", (canonical(zone),)
    ).fetchone()
    return None if row is None else ParentSettings.loads(row["settings"])


def set_parent(store: Store, zone: str, settings: ParentSettings | None, *, now: int) -> None:
    """Record (or with None, forget) the zone's parent; the watch starts afresh."""
    zone = store.require_zone(zone)
    with store.transaction():
        store.db.execute("DELETE FROM parent_watch WHERE zone = ?", (zone,))
        if settings is None:
            store.db.execute("DELETE FROM zone_parents WHERE zone = ?", (zone,))
            return
        store.db.execute(
            "INSERT INTO zone_parents(zone, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(zone) DO UPDATE SET settings = excluded.settings, "
            "updated_at = excluded.updated_at",
            (zone, settings.check().dumps(), now),
        )


@dataclass(frozen=True)
class Watch:
    """What the watch last did for a zone (``parent_watch``), for status and the backoff."""

    zone: str
    purpose: str
    next_at: int
    checks: int
    checked_at: int | None
    why: str | None
    view: dict[str, Any] | None
    ds_ttl: int | None
    pushed_at: int | None
    push_ok: bool | None
    push_detail: str | None


def watch_of(store: Store, zone: str) -> Watch | None:
    row = store.db.execute(
        "SELECT * FROM parent_watch WHERE zone = ?", (canonical(zone),)
    ).fetchone()
    if row is None:
        return None
    return Watch(
        row["zone"], row["purpose"], row["next_at"], row["checks"], row["checked_at"],
        row["why"], json.loads(row["view"]) if row["view"] else None, row["ds_ttl"],
        row["pushed_at"], None if row["push_ok"] is None else bool(row["push_ok"]),
        row["push_detail"],
    )  # fmt: skip


def view_json(view: ParentView) -> dict[str, Any]:
    return {
        "parent": view.parent,
        "at": view.at,
        "error": view.error,
        "addresses": [
            {
                "address": a.address,
                "server": a.server,
                "ds": None if a.ds is None else sorted(f"{t}/{al}/{dt}" for t, al, dt, _ in a.ds),
                "ttl": a.ttl,
                "error": a.error,
            }
            for a in view.addresses
        ],
    }


# --- what a zone waits for --------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """What the parent must do for a zone now: serve the DS of ``new`` (key tags), stop serving
    the DS of ``old``; ``push``: the whole DS set it is to serve (presentation lines)."""

    purpose: str  # "rollover 3 step 2", "first DS 12345": a new purpose restarts the watch
    new: frozenset[DsTuple]
    old: frozenset[DsTuple]
    push: tuple[str, ...]
    rollover_id: int | None = None


def ds_lines(zone: str, rows: Iterable[KeyRow], digest: int = PUSHED_DIGEST) -> list[str]:
    return [
        f"{zone} IN DS {dns.dnssec.make_ds(zone, dnskey_of(row), DSDigest(digest)).to_text()}"
        for row in rows
    ]


def ds_set(zone: str, rows: Iterable[KeyRow], digests: Iterable[int]) -> frozenset[DsTuple]:
    out = set()
    for row in rows:
        dnskey = dnskey_of(row)
        for digest in digests:
            ds = dns.dnssec.make_ds(zone, dnskey, DSDigest(digest), validating=True)
            out.add((ds.key_tag, int(ds.algorithm), ds.digest_type, ds.digest.hex()))
    return frozenset(out)


def need_of(engine: Engine, zone: str) -> Need | None:
    """What ``zone`` waits for from its parent now, or None (nothing, or not yet: a DS step
    whose CDS not every node serves yet)."""
    rows = {r.id: r for r in engine.store.keys(zone)}
    records = {r.key_id: r for r in engine.state.key_records(zone, list(rows.values()))}
    rollover = engine.state.current(zone)
    serving = [rows[i] for i, r in records.items() if r.visible("ds")]
    if rollover is not None and rollover.role != "ZSK" and rollover.role != "initial":
        if rollover.step_started_at is None or rollover.reached_at is None:
            return None  # the step's CDS is not yet served by every node
        step = engine.steps(rollover)[rollover.step]
        if not step.waits_for_parent:
            return None
        new_ids, old_ids = engine.ds_awaited(rollover, step)
        new, old = [rows[i] for i in new_ids], [rows[i] for i in old_ids]
        if not new and not old:
            return None
        return Need(
            f"rollover {rollover.id} step {rollover.step + 1}",
            ds_set(zone, new, (PUSHED_DIGEST,)),
            ds_set(zone, old, ANY_DIGEST),
            tuple(ds_lines(zone, serving)),
            rollover.id,
        )
    first = [
        rows[i] for i, r in records.items()
        if r.role in ("KSK", "CSK") and r.state("dnskey") is State.OMNIPRESENT
        and r.state("ds") is State.HIDDEN and rows[i].state != "removed"
    ]  # fmt: skip
    if not first:
        return None
    tags = " ".join(str(r.key_tag) for r in sorted(first, key=lambda r: r.key_tag))
    return Need(
        f"first DS {tags}",
        ds_set(zone, first, (PUSHED_DIGEST,)),
        frozenset(),
        tuple(ds_lines(zone, [*serving, *first])),
    )


# --- the watch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentTask:
    """One zone's push (when due) and look at its parent: network only, run off serve's loop."""

    zone: str
    need: Need
    settings: ParentSettings
    push: bool
    push_ttl: int
    timeout: float = 5.0

    def run(self) -> Outcome:
        pushed = None
        if self.push:
            pushed = push_ds(
                self.zone, self.need.push, self.settings.push_config(), ttl=self.push_ttl
            )
        return Outcome(pushed, observe(self.zone, self.settings.observe_config(),
                                       timeout=self.timeout))  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    pushed: PushResult | None
    view: ParentView


@dataclass
class ParentDesk:
    """Decides which zones' parents to push to and look at, and records what was seen (on
    serve's loop, which owns kdc.db)."""

    store: Store
    engine: Engine
    interval: float = DEFAULT_CHECK_INTERVAL
    interval_max: float = DEFAULT_CHECK_MAX
    running: set[str] = field(default_factory=set)

    def due(self, now: float) -> list[ParentTask]:
        tasks = []
        rows = self.store.db.execute("SELECT zone, settings FROM zone_parents").fetchall()
        for row in rows:
            zone = row["zone"]
            if zone in self.running or self.store.zone_policy(zone) is None:
                continue
            need = need_of(self.engine, zone)
            if need is None:
                continue
            watch = watch_of(self.store, zone)
            if watch is not None and watch.purpose == need.purpose and watch.next_at > now:
                continue
            settings = ParentSettings.loads(row["settings"])
            pushed = watch is not None and watch.purpose == need.purpose and bool(watch.push_ok)
            policy = self.store.require_policy(self.store.zone_policy(zone) or "")
            tasks.append(
                ParentTask(zone, need, settings, settings.pushes and not pushed,
                           policy.parent_ds_ttl)
            )  # fmt: skip
        return tasks

    def record(self, task: ParentTask, outcome: Outcome, now: int) -> None:
        """What the parent served, the push's result, and ``ds seen``/``ds gone`` when every
        address shows it; nothing when the zone moved on while the parent was asked."""
        zone, view = task.zone, outcome.view
        need = need_of(self.engine, zone)
        if need is None or need.purpose != task.need.purpose:
            return
        seen_new, old_gone, why = ds_step_state(view, need.new, need.old)
        ttl = largest_ttl(view)
        watch = watch_of(self.store, zone)
        same = watch is not None and watch.purpose == need.purpose
        checks = (watch.checks if same and watch is not None else 0) + 1
        wait = min(self.interval_max, self.interval * 2 ** (checks - 1))
        pushed = outcome.pushed
        kept = watch if same else None
        pushed_at: int | None
        push_ok: int | None
        push_detail: str | None
        if pushed is not None:
            pushed_at, push_ok, push_detail = now, int(pushed.ok), pushed.detail
        elif kept is not None:
            pushed_at, push_detail = kept.pushed_at, kept.push_detail
            push_ok = None if kept.push_ok is None else int(kept.push_ok)
        else:
            pushed_at, push_ok, push_detail = None, None, None
        ds_ttl = max((t for t in (ttl, kept.ds_ttl if kept else None) if t is not None),
                     default=None)  # fmt: skip
        with self.store.transaction():
            self.store.db.execute(
                "INSERT OR REPLACE INTO parent_watch(zone, purpose, next_at, checks, checked_at, "
                "why, view, ds_ttl, pushed_at, push_ok, push_detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    zone, need.purpose, int(now + wait), checks, now, why,
                    json.dumps(view_json(view), sort_keys=True), ds_ttl, pushed_at, push_ok,
                    push_detail,
                ),
            )  # fmt: skip
            if pushed is not None:
                self.engine.state.log(
                    zone,
                    "ds-pushed" if pushed.ok else "ds-push-failed",
                    {"ds": list(need.push), "detail": pushed.detail},
                    cause="engine",
                    now=now,
                )
            if need.rollover_id is not None and ttl is not None:
                current = self.engine.state.current(zone)
                if current is not None and (current.parent_ds_ttl or 0) < ttl:
                    self.engine.state.update_rollover(current.id, parent_ds_ttl=ttl)
            cause = f"parent: {why}"
            if seen_new and need.new:
                self.engine.ds_reported(zone, seen=True, now=now, cause=cause)
            if old_gone and need.old:
                self.engine.ds_reported(zone, seen=False, now=now, cause=cause)
        if pushed is not None and not pushed.ok:
            log.warning("zone %s: the DS push failed: %s", zone, pushed.detail,
                        extra=context(zone=zone))  # fmt: skip
        elif (seen_new and need.new) or (old_gone and need.old):
            log.info("zone %s: %s", zone, cause, extra=context(zone=zone))


__all__ = [
    "ParentDesk",
    "ParentSettings",
    "ParentSettingsError",
    "ParentTask",
    "need_of",
    "parent_settings",
    "set_parent",
    "watch_of",
]
