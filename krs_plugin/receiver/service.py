"""``krs run``: the service that ties the receiver's jobs together, and its task wiring.

NOTIFY carries no trust: it only names a distribution id to fetch from the configured servers.
The listener (``receiver/notify.py``) answers at once; the ids it accepts are queued once each,
and one worker fetches and applies them in order, in a thread, so neither the network nor a slow
nameserver ever blocks the listener. The pipeline has its own database connection for that thread.
A poller finds what a lost NOTIFY did not announce, and polls early when a NOTIFY had to be
refused for its budget, so a flood delays a real distribution by a second or two, not until the
next poll (docs/operations.md, "Resource limits"). Confirmations (``receiver/confirm.py``) are
retried until the KDC answers. A reload (``receiver/reload.py``) swaps in a new configuration
between two distributions. Adapters that act on key times themselves get ``maintain()`` calls on
their own schedule. ``/metrics`` and ``/healthz`` report on all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sqlite3
import time
from collections import OrderedDict

from krs_plugin.adapters.base import ActsOnKeyTimes, ReportsServerProblem, WatchesFiles
from krs_plugin.config import Address, Config
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import quiet_accept_errors
from krs_plugin.errors import ConfigError, KrsError, outcome_of, stage_of
from krs_plugin.logs import context
from krs_plugin.metrics import Metrics, serve_http
from krs_plugin.receiver import notify
from krs_plugin.receiver.confirm import confirm, retry_delay
from krs_plugin.receiver.fetcher import Fetcher, NotPublished
from krs_plugin.receiver.pipeline import Pipeline
from krs_plugin.receiver.reconcile import (
    adapter_identity,
    compare,
    kdc_command,
    request_resend,
)
from krs_plugin.receiver.reconcile import retry_delay as resend_delay
from krs_plugin.receiver.rekey import rekey as rotate_keys
from krs_plugin.receiver.reload import (
    Change,
    HttpServer,
    build_components,
    files_fingerprint,
    load_change,
    watched_files,
)
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.watch import FileWatcher
from krs_plugin.sqlitedb import StateWriteError

log = logging.getLogger(__name__)

MAX_QUEUE = 1000  # ids a NOTIFY named waiting to be fetched; ids the control zone lists come first
PUBLISHED, NOTIFIED = 0, 1  # queue priorities
BUSY_QUEUE = 10  # more ids waiting than this: the poller looks at once for the real ones
RECENT_IDS = 4096  # ids known to be done (applied or rejected), answered without a budget
EARLY_POLL_GAP = 1.0  # seconds between polls brought forward by refused NOTIFYs
QUEUE_FULL_WARN_INTERVAL = 60.0
MAINTAIN_MAX_WAIT = 300.0  # look again at least this often, even when nothing is due
MAINTAIN_RETRY = 60.0  # after a failed maintain(): the old zone stays served meanwhile
STATE_RETRY = 5.0  # a distribution not recorded (a full disk): again after 5 s, doubling...
STATE_RETRY_MAX = 300.0  # ...up to 5 min (docs/operations.md, "A full disk")
# Seconds between asking the adapter whether its server answers (KRS_SERVER_CHECK_INTERVAL).
SERVER_CHECK_INTERVAL = float(os.environ.get("KRS_SERVER_CHECK_INTERVAL", "30"))
POLL_FAILURES_UNHEALTHY = 3  # polls in a row without an answer: /healthz says the KDC is lost
# A NOTIFY may arrive before the control servers have the distribution (secondaries still
# transferring the new serial, docs/scale.md): the poller looks at the _pending index again
# after 0.5 s, 1, 2, 4, 8 and 16 s (31.5 s in all), one sequence for all such ids at once.
NOT_YET_POLLS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class Service:
    def __init__(
        self,
        config: Config,
        store: ReceiverStore,
        pipeline: Pipeline,
        fetcher: Fetcher,
        signer: JoseKey | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.fetcher = fetcher
        self.signer = signer
        self.metrics = metrics or Metrics()
        self.fingerprint = files_fingerprint(watched_files(config))
        # (priority, arrival, id): ids the control zone lists (PUBLISHED) before ids that only a
        # NOTIFY named (NOTIFIED); ``pending`` holds each queued or running id's priority.
        self.queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self.pending: dict[str, int] = {}
        self._arrivals = itertools.count()
        self.recent: OrderedDict[str, None] = OrderedDict()  # done ids, the newest last
        self.budget = notify.NotifyBudget(config.notify.rate_limit, config.notify.rate_limit_total)
        self.poll_wake = asyncio.Event()
        self._dropped = 0  # NOTIFYs dropped on a full queue since the last warning
        self._dropped_warned = -QUEUE_FULL_WARN_INTERVAL
        self.listeners: list[notify.Listener] = []
        self.http: asyncio.AbstractServer | None = None
        self.http_bound: Address | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.busy = asyncio.Lock()  # held while a distribution is processed or a reload swaps
        self.reloading = asyncio.Lock()
        self.last_reload: dict[str, object] = {}
        self._reload_tasks: set[asyncio.Task[str]] = set()
        self.watcher: FileWatcher | None = None
        self.adapter_watcher: FileWatcher | None = None
        self.maintain_wake = asyncio.Event()
        # A distribution's outcome was recorded: its report goes out now, not at the next tick.
        self.confirm_wake = asyncio.Event()
        self.counters = {"notify_accepted": 0, "notify_refused": 0, "notify_limited": 0}
        self.unrecorded: dict[str, int] = {}  # distribution id -> tries not recorded
        self._not_yet_step = 0  # the next of NOT_YET_POLLS
        self._not_yet_timer: asyncio.TimerHandle | None = None
        # What /healthz reports besides its own loops (docs/operations.md, "Monitoring"):
        self.server_problem: str | None = None  # the adapter's server, every 30 s
        self.apply_failure: str | None = None  # the last failed apply, until one succeeds
        self.poll_failures = 0  # polls in a row that no control server answered
        self.poll_error: str | None = None
        # Zones whose server lacks keys their newest distribution installed -> why (reconcile.py);
        # /healthz is unhealthy while any is listed (``sync_problems``).
        self.out_of_sync: dict[str, str] = {}
        self.resync_task: asyncio.Task[None] | None = None
        self.rekey_task: asyncio.Task[None] | None = None  # the KDC asked (receiver/rekey.py)
        self._reconcile_tasks: set[asyncio.Task[None]] = set()
        self.metrics.watch_store(self._store_gauges)

    @classmethod
    def from_config(cls, config: Config, store: ReceiverStore | None = None) -> Service:
        components = build_components(config)
        return cls(
            config,
            store or ReceiverStore(config.state),
            components.pipeline,
            components.fetcher,
            components.signer,
        )

    @property
    def bound(self) -> list[Address]:
        return [listener.bound for listener in self.listeners]

    # --- NOTIFY ---------------------------------------------------------------------------

    def handle_notify(self, wire: bytes, source: str, udp: bool = True) -> bytes | None:
        answer = notify.answer_notify(
            wire,
            source,
            self.config.notify,
            self.config.control_zone,
            self.budget,
            tcp=not udp,
            known=self.known,
        )
        if answer.refused is not None:
            self._count_notify(answer.refused)
            if answer.refused == "rate_limited":
                self.poll_wake.set()  # whatever it named, the poller finds what is published
        elif answer.distribution_id is not None:
            queued = self.enqueue(answer.distribution_id)
            self._count_notify("accepted" if queued else "duplicate")
        return answer.response

    def _count_notify(self, result: str) -> None:
        self.metrics.notifies.labels(result).inc()
        key = {"refused": "notify_refused", "rate_limited": "notify_limited"}.get(
            result, "notify_accepted"
        )
        self.counters[key] += 1

    def known(self, dist_id: str) -> bool:
        """Whether ``dist_id`` is queued, running or known to be done: a NOTIFY naming it costs
        no budget (docs/operations.md, "Resource limits")."""
        return dist_id in self.pending or dist_id in self.recent

    def enqueue(self, dist_id: str, *, published: bool = False) -> bool:
        """Queue ``dist_id`` unless it is queued, running or already finished. ``published``:
        the control zone lists it (the poller, crash recovery), so it goes before every id that
        only a NOTIFY named and is never dropped for a full queue; a flood of made-up ids that
        got within budget cannot keep a real distribution waiting behind them
        (docs/operations.md, "Resource limits")."""
        priority = PUBLISHED if published else NOTIFIED
        if dist_id in self.pending:
            if priority < self.pending[dist_id]:
                self.pending[dist_id] = priority  # the entry already queued is skipped
                self.queue.put_nowait((priority, next(self._arrivals), dist_id))
            return False
        if dist_id in self.recent:
            return False
        seen = self.store.seen(dist_id)
        if seen is not None and seen.outcome in ("applied", "rejected"):
            self.recent[dist_id] = None
            if len(self.recent) > RECENT_IDS:
                self.recent.popitem(last=False)
            return False
        if not published and len(self.pending) >= MAX_QUEUE:
            self._queue_full(dist_id)
            return False
        self.pending[dist_id] = priority
        self.queue.put_nowait((priority, next(self._arrivals), dist_id))
        if len(self.pending) > BUSY_QUEUE:
            self.poll_wake.set()
        return True

    def _queue_full(self, dist_id: str) -> None:
        """One warning a minute at most: a flood must not fill the log."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_warned >= QUEUE_FULL_WARN_INTERVAL:
            log.warning(
                "queue full (%d ids), %d NOTIFY(s) dropped, the last for %s (the poller will "
                "find what is published)",
                MAX_QUEUE,
                self._dropped,
                dist_id,
                extra=context(distribution_id=dist_id),
            )
            self._dropped, self._dropped_warned = 0, now

    # --- worker ---------------------------------------------------------------------------

    async def worker(self) -> None:
        while True:
            priority, _, dist_id = await self.queue.get()
            if self.pending.get(dist_id) != priority:
                continue  # queued again ahead of this entry, and done already
            try:
                async with self.busy:
                    outcome = await self.process(dist_id)
                self.confirm_wake.set()  # its report, if any, is in the store: send it now
                self.unrecorded.pop(dist_id, None)
                if outcome is None and priority == NOTIFIED and self.config.kdc.addresses:
                    self._look_again(dist_id)  # behind secondaries: they may lag the KDC
                elif outcome == "applied":
                    self._stop_looking()
                if outcome == "applied" and self.out_of_sync:
                    await self.reconcile(f"after distribution {dist_id}")
            except StateWriteError as exc:
                self._not_recorded(dist_id, exc)
            except Exception:  # keep the daemon alive whatever one distribution does
                log.exception(
                    "distribution %s: unexpected error",
                    dist_id,
                    extra=context(distribution_id=dist_id),
                )
            finally:
                self.pending.pop(dist_id, None)

    def _look_again(self, dist_id: str) -> None:
        """A NOTIFY named ``dist_id`` and no control server has it (yet): the KDC's NOTIFY can
        outrun its secondaries' transfer of the new serial (only with ``kdc.address``: where
        the KDC serves the zone itself, not published is final). The poller looks at the index again
        soon (``NOT_YET_POLLS``), one sequence for every such id, so that a flood of made-up
        ids costs a few polls, not a fetch each (docs/scale.md)."""
        if self._not_yet_timer is not None:
            return
        log.info(
            "distribution %s: not at the control servers yet; polling again in %.1f s",
            dist_id,
            NOT_YET_POLLS[0],
            extra=context(distribution_id=dist_id, stage="fetch", outcome="not_published"),
        )
        self._not_yet_step = 0
        self._poll_soon()

    def _poll_soon(self) -> None:
        if self._not_yet_step >= len(NOT_YET_POLLS):
            self._not_yet_timer = None
            return
        delay = NOT_YET_POLLS[self._not_yet_step]
        self._not_yet_step += 1

        def fire() -> None:
            self.poll_wake.set()
            self._poll_soon()

        self._not_yet_timer = asyncio.get_running_loop().call_later(delay, fire)

    def _stop_looking(self) -> None:
        """A distribution was applied: the polls brought forward are not needed any more."""
        if self._not_yet_timer is not None:
            self._not_yet_timer.cancel()
            self._not_yet_timer = None

    def _not_recorded(self, dist_id: str, error: StateWriteError) -> None:
        """The outcome of ``dist_id`` could not be written (a full disk): one error line, and
        the distribution processed again later, so that it is recorded, and only then
        confirmed, once the state database takes changes (docs/operations.md, "A full disk")."""
        tries = self.unrecorded[dist_id] = self.unrecorded.get(dist_id, 0) + 1
        delay = min(STATE_RETRY_MAX, STATE_RETRY * 2 ** (tries - 1))
        log.error(
            "distribution %s: its outcome is not recorded, so it is not confirmed (tried again "
            "in %.0f s): %s",
            dist_id,
            delay,
            error,
            extra=context(distribution_id=dist_id),
        )
        asyncio.get_running_loop().call_later(delay, self.enqueue, dist_id)

    async def process(self, dist_id: str) -> str | None:
        """Fetch and process ``dist_id``; its outcome (applied, rejected, failed), or None when
        nothing was published under it."""
        started = time.monotonic()
        try:
            fetched = await asyncio.to_thread(self.fetcher.fetch, dist_id)
        except NotPublished as exc:
            # Nothing under that id for this node: not recorded, so NOTIFYs naming made-up ids
            # cannot grow the state database or push real distributions out of `krs status`.
            self.metrics.fetches.labels("not_published").inc()
            log.info(
                "distribution %s: %s",
                dist_id,
                exc,
                extra=context(distribution_id=dist_id, stage="fetch", outcome="not_published"),
            )
            return None
        except KrsError as exc:
            # The servers down: failed/fetch, tried again. A bad answer (fetcher.BadAnswer):
            # rejected at the stage that found it (docs/operations.md, "Errors and what to do").
            stage = stage_of(exc)
            result = outcome_of(stage)
            self.metrics.fetches.labels(result).inc()
            self.metrics.distributions.labels(result, stage).inc()
            log.warning(
                "distribution %s: fetch %s: %s",
                dist_id,
                result,
                exc,
                extra=context(distribution_id=dist_id, stage=stage, outcome=result),
            )
            self.store.record_outcome(
                dist_id, self.pipeline.kdc, int(dist_id, 16), result, stage=stage, error=str(exc),
                report=self.pipeline.failure_report(result, stage, str(exc)),  # None for fetch
            )  # fmt: skip
            return result
        fetched_at = time.monotonic()
        self.metrics.fetches.labels("ok").inc()
        self.metrics.fetch_seconds.observe(fetched_at - started)
        manifest, chunks, server = fetched.manifest, fetched.chunks, fetched.server
        del fetched  # the pipeline empties ``chunks`` once joined: nothing else may hold them
        outcome = await asyncio.to_thread(self.pipeline.process, dist_id, manifest, chunks)
        done = time.monotonic()
        self.metrics.distributions.labels(outcome.outcome, outcome.stage).inc()
        self._note_apply(dist_id, outcome.outcome, outcome.stage, outcome.error)
        if outcome.outcome == "applied":
            self.metrics.apply_seconds.observe(done - fetched_at)
            self.metrics.last_success.set_to_current_time()
            self.maintain_wake.set()  # new keys, new signatures: the adapter's schedule moved
            if outcome.rekey_requested:
                self._spawn_rekey(outcome.rekey_backend)
        log.info(
            "distribution %s %s in %.3f s",
            dist_id,
            outcome.outcome,
            done - started,
            extra=context(
                distribution_id=dist_id,
                stage=outcome.stage,
                outcome=outcome.outcome,
                server=str(server),
                duration=round(done - started, 6),
            ),
        )
        return outcome.outcome

    # --- poller -------------------------------------------------------------------------

    async def poll_loop(self) -> None:
        """Ask the control zone for this node's distributions every ``poll_interval`` seconds,
        so a lost NOTIFY delays a key but never loses it; sooner (``EARLY_POLL_GAP`` apart at
        most) when a NOTIFY was refused for its budget, so a flood cannot hold a real one back."""
        while True:
            self.poll_wake.clear()
            started = time.monotonic()
            try:
                ids = await asyncio.to_thread(self.fetcher.pending_ids)
            except KrsError as exc:
                log.warning("poll failed: %s", exc, extra=context(stage="poll"))
                ids = []
                self._note_poll(exc)
            else:
                self._note_poll(None)
            last = self.store.last_serial(self.pipeline.kdc) or 0
            for dist_id in ids:
                if int(dist_id, 16) > last and self.enqueue(dist_id, published=True):
                    log.info(
                        "poll found distribution %s",
                        dist_id,
                        extra=context(distribution_id=dist_id, stage="poll"),
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poll_wake.wait(), self.config.poll_interval)
            await asyncio.sleep(max(0.0, started + EARLY_POLL_GAP - time.monotonic()))

    # --- confirmations --------------------------------------------------------------------

    async def confirm_loop(self, tick: float = 0.5) -> None:
        """Send every report that is due: at once when the worker recorded an outcome
        (``confirm_wake``), so the KDC hears of it without waiting for a tick; every ``tick``
        for retries whose backoff ended and reports queued elsewhere (crash recovery)."""
        while True:
            self.confirm_wake.clear()
            for dist_id, report, attempts in self.store.due_confirmations(time.time()):
                acked = await confirm(dist_id, report, self.config, self.signer)
                self.metrics.confirmations.labels("acknowledged" if acked else "failed").inc()
                delay = 0 if acked else retry_delay(attempts)
                try:
                    self.store.confirmation_attempted(
                        dist_id, acknowledged=acked, next_at=time.time() + delay
                    )
                except StateWriteError as exc:  # sent again later: the KDC takes it twice
                    log.error("confirmation %s: the attempt is not recorded: %s", dist_id, exc)
                    await asyncio.sleep(STATE_RETRY)
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.confirm_wake.wait(), tick)

    # --- listeners ------------------------------------------------------------------------

    async def _serve_http(self, address: Address | None) -> HttpServer | None:
        if address is None:
            return None
        server, port = await serve_http(address.host, address.port, self.metrics, self.health)
        return server, Address(address.host, port)

    async def start(self) -> list[asyncio.AbstractServer]:
        try:
            self.listeners = await notify.listen(self.config.notify, self.handle_notify)
        except OSError as exc:  # a port taken: one line and exit 2, not a traceback
            where = ", ".join(str(a) for a in self.config.notify.listen)
            raise ConfigError(
                f"notify.listen {where}: cannot listen there: {exc.strerror or exc}"
            ) from exc
        http = await self._serve_http(self.config.metrics)
        if http is not None:
            self.http, self.http_bound = http
        return [listener.server for listener in self.listeners]

    def close(self) -> None:
        notify.close(self.listeners)
        self.listeners = []
        if self.http is not None:
            self.http.close()
            self.http = None
        for watcher in (self.watcher, self.adapter_watcher):
            if watcher is not None:
                watcher.close()
        self.watcher = self.adapter_watcher = None
        for task in self.tasks:
            task.cancel()
        if self.resync_task is not None:
            self.resync_task.cancel()

    # --- health and metrics -------------------------------------------------------------------

    def _store_gauges(self) -> dict[str, object]:
        return {
            "keys_per_zone": self.store.keys_per_zone(),
            "confirmations_pending": self.store.pending_confirmations(),
            "queued": len(self.pending),
        }

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy: listening, every loop alive, the state database answering and taking
        changes."""
        problems = []
        if self.config.notify.listen and not self.listeners:
            problems.append("not listening for NOTIFY")
        problems += [f"{t.get_name()} stopped" for t in self.tasks if t.done()]
        try:
            pending = self.store.pending_confirmations()
            last = self.store.last_applied_at()
        except sqlite3.Error as exc:
            problems.append(f"state database {self.config.state}: {exc}")
            pending, last = -1, None
        for error in dict.fromkeys((self.store.write_error, self.pipeline.store.write_error)):
            if error is not None:  # the last change could not be written (a full disk)
                problems.append(error)
        problems += self.sync_problems()
        problems += self.reach_problems()
        detail: dict[str, object] = {
            "node_id": self.config.node_id.to_text(),
            "listening": [str(a) for a in self.bound],
            "queued": len(self.pending),
            "confirmations_pending": pending,
            "last_success": last,
            "last_reload": self.last_reload,
            "out_of_sync": dict(self.out_of_sync),
            "server": self.server_problem or "ok",
            "last_apply_error": self.apply_failure,
            "polls_failed_in_a_row": self.poll_failures,
            "problems": problems,
        }
        return not problems, detail

    # --- reload ---------------------------------------------------------------------------

    async def reload(self) -> str:
        """Re-read krs.yaml and the key files; apply a valid change between two distributions,
        refuse an invalid one and keep running as before. Returns applied/unchanged/refused."""
        async with self.reloading:
            path = self.config.path
            try:
                change = load_change(self.config, self.fingerprint)
            except KrsError as exc:
                return self._reload_refused(exc)
            if change is None:
                self.last_reload = {"result": "unchanged", "at": int(time.time())}
                return "unchanged"
            async with self.busy:
                try:
                    await change.bind(self.config, self.handle_notify, self._serve_http)
                except KrsError as exc:
                    return self._reload_refused(exc)
                before = adapter_identity(self.config)
                self._swap(change)
            if adapter_identity(self.config) != before:
                now = self.pipeline.adapter_id
                self._spawn_reconcile(f"after the adapter changed ({before} -> {now})")
            self.metrics.reloads.labels("applied").inc()
            self.last_reload = {"result": "applied", "at": int(time.time())}
            log.info("configuration reloaded from %s", path, extra=context(stage="reload"))
            if self.watcher is not None:
                self.watcher.watch(watched_files(change.config))
            return "applied"

    def _reload_refused(self, error: object) -> str:
        self.metrics.reloads.labels("refused").inc()
        self.last_reload = {"result": "refused", "error": str(error), "at": int(time.time())}
        log.error(
            "configuration change refused, the running configuration is kept: %s",
            error,
            extra=context(stage="reload", outcome="refused"),
        )
        return "refused"

    def _swap(self, change: Change) -> None:
        config, components = change.config, change.components
        old_pipeline_store = self.pipeline.store
        if config.state != self.config.state:
            old_store, self.store = self.store, ReceiverStore(config.state)
            old_store.close()
        if change.listeners is not None:
            notify.close(self.listeners)
            self.listeners = change.listeners
        else:
            notify.limit_connections(self.listeners, config.notify)
        if config.metrics != self.config.metrics:
            if self.http is not None:
                self.http.close()
            self.http, self.http_bound = change.http if change.http is not None else (None, None)
        new, old = config.notify, self.config.notify
        if (new.rate_limit, new.rate_limit_total) != (old.rate_limit, old.rate_limit_total):
            self.budget = notify.NotifyBudget(new.rate_limit, new.rate_limit_total)
        self.config = config
        self.pipeline = components.pipeline
        self.fetcher = components.fetcher
        self.signer = components.signer
        self.fingerprint = components.fingerprint
        old_pipeline_store.close()
        self._watch_adapter_files()
        self.maintain_wake.set()  # a new adapter (or settings) decides its own schedule

    def request_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    # --- reconcile: what the server holds against what was installed ----------------------------

    async def reconcile(self, why: str) -> None:
        """Compare each zone's keys on the server with those its newest distribution installed
        (``reconcile.compare``); warn once per zone that lacks some, list it in ``out_of_sync``
        (``/healthz`` unhealthy) and ask the KDC to send the keys again (docs/operations.md,
        "When the server lost keys")."""
        async with self.busy:  # never while a distribution is being applied
            try:
                results = await asyncio.to_thread(
                    compare, self.config, self.pipeline.store, self.pipeline.adapter
                )
            except Exception:  # never stop the daemon for a check
                log.exception("comparing the server's keys failed (%s)", why)
                return
        now: dict[str, str] = {}
        for result in results:
            if result.error is not None:
                log.warning(
                    "zone %s: its keys could not be listed (%s): %s",
                    result.zone,
                    why,
                    result.error,
                    extra=context(zone=result.zone, stage="reconcile"),
                )
            if result.in_sync:
                if result.zone in self.out_of_sync:
                    log.info(
                        "zone %s: the server holds its keys again",
                        result.zone,
                        extra=context(zone=result.zone, stage="reconcile", outcome="in_sync"),
                    )
                continue
            now[result.zone] = result.reason
            if self.out_of_sync.get(result.zone) != result.reason:
                log.warning(
                    "zone %s out of sync (%s): %s; %s",
                    result.zone,
                    why,
                    result.reason,
                    "asking the KDC to send the keys again"
                    if self.signer is not None
                    else "this node has no keys.signing, so it cannot ask the KDC; there: "
                    + kdc_command(self.config),
                    extra=context(
                        zone=result.zone,
                        distribution_id=result.distribution_id,
                        stage="reconcile",
                        outcome="out_of_sync",
                    ),
                )
        self.out_of_sync = now
        if now and self.signer is not None:
            self._request_resend(sorted(now), why)

    def sync_problems(self) -> list[str]:
        """``/healthz`` problems: one per zone whose server lacks keys it was given."""
        return [f"zone {zone} out of sync: {why}" for zone, why in sorted(self.out_of_sync.items())]

    def _spawn_reconcile(self, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self.reconcile(why), name="reconcile")
        self._reconcile_tasks.add(task)
        task.add_done_callback(self._reconcile_tasks.discard)

    def _request_resend(self, zones: list[str], why: str) -> None:
        if self.resync_task is not None and not self.resync_task.done():
            return  # a request is being sent: the distribution it brings covers every zone
        reason = f"{len(zones)} zone(s) out of sync {why}: {self.out_of_sync[zones[0]]}"
        self.resync_task = asyncio.get_running_loop().create_task(
            self._resend_loop(zones, reason), name="resync"
        )

    def _spawn_rekey(self, backend: str | None = None) -> None:
        if self.rekey_task is not None and not self.rekey_task.done():
            return
        self.rekey_task = asyncio.get_running_loop().create_task(
            self._rekey_loop(backend), name="rekey"
        )

    async def _rekey_loop(self, backend: str | None = None) -> None:
        """The KDC asked this node to rotate its keys (to ``backend``'s key when it named one:
        ``krs rekey --backend``): ``krs rekey``'s own code, tried again with backoff while it
        fails (the node keeps its keys meanwhile), then a reload."""
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await asyncio.to_thread(rotate_keys, self.config, backend=backend)
            except KrsError as exc:
                log.warning(
                    "the KDC asked for a key rotation; it failed (try %d): %s",
                    attempts,
                    exc,
                    extra=context(stage="rekey", outcome="failed"),
                )
                await asyncio.sleep(resend_delay(attempts))
                continue
            log.info(
                "the KDC asked for a key rotation: %s", result.detail,
                extra=context(stage="rekey", outcome=result.outcome),
            )  # fmt: skip
            self.request_reload()  # the watcher would too; this does not wait for it
            return

    async def _resend_loop(self, zones: list[str], reason: str) -> None:
        """The resync request, sent again with backoff until a control server acknowledges it."""
        attempts = 0
        while self.signer is not None and self.out_of_sync:
            attempts += 1
            if await request_resend(self.config, self.signer, zones, reason):
                return
            await asyncio.sleep(resend_delay(attempts))

    # --- the server, the last apply, the KDC: what /healthz reports beside the loops ----------

    def reach_problems(self) -> list[str]:
        """``/healthz`` problems: the adapter's server not answering, the last apply failed
        (until one succeeds), the KDC unreachable for ``POLL_FAILURES_UNHEALTHY`` polls."""
        problems = []
        if self.server_problem is not None:
            problems.append(f"nameserver: {self.server_problem}")
        if self.apply_failure is not None:
            problems.append(f"the last apply failed: {self.apply_failure}")
        if self.poll_failures >= POLL_FAILURES_UNHEALTHY:
            problems.append(
                f"KDC unreachable: {self.poll_failures} polls in a row failed: {self.poll_error}"
            )
        return problems

    def _note_apply(self, dist_id: str, outcome: str, stage: str, error: str | None) -> None:
        if outcome == "applied":
            self.apply_failure = None
        elif outcome == "failed" and stage == "apply":
            self.apply_failure = f"distribution {dist_id}: {error}"
        self.metrics.apply_failing.set(1 if self.apply_failure is not None else 0)

    def _note_poll(self, error: KrsError | None) -> None:
        self.metrics.polls.labels("ok" if error is None else "failed").inc()
        if error is None:
            if self.poll_failures >= POLL_FAILURES_UNHEALTHY:
                log.info("the KDC answers again", extra=context(stage="poll", outcome="ok"))
            self.poll_failures, self.poll_error = 0, None
        else:
            self.poll_failures += 1
            self.poll_error = str(error)
        self.metrics.poll_failures.set(self.poll_failures)

    async def server_check_loop(self) -> None:
        """Ask the adapter every ``SERVER_CHECK_INTERVAL`` seconds whether its nameserver
        answers (ReportsServerProblem), so /healthz answers at once and reflects the server."""
        while True:
            await self.check_server()
            await asyncio.sleep(SERVER_CHECK_INTERVAL)

    async def check_server(self) -> None:
        adapter = self.pipeline.adapter
        if not isinstance(adapter, ReportsServerProblem):
            self.server_problem = None
            self.metrics.server_up.clear()  # no server to be up or down: no sample, no alert
            return
        try:
            problem = await asyncio.to_thread(adapter.server_problem)
        except Exception as exc:  # a check must never stop the daemon
            problem = f"checking the server failed: {exc}"
        if problem != self.server_problem:
            if problem is None:
                log.info("the nameserver answers again", extra=context(stage="server"))
            else:
                log.warning("nameserver: %s", problem, extra=context(stage="server"))
        self.server_problem = problem
        self.metrics.server_up.clear()  # one sample, for the adapter running now
        self.metrics.server_up.labels(adapter.name).set(0 if problem else 1)

    # --- adapter maintenance ------------------------------------------------------------------

    async def maintain_loop(self) -> None:
        """Call the adapter's ``maintain()`` when it says it is due and whenever one of its
        watched files changes. Only adapters that must act on their own have one (ActsOnKeyTimes):
        NSD's signs the zone again before signatures expire and when the unsigned zone is edited."""
        while True:
            adapter = self.pipeline.adapter
            wait = MAINTAIN_MAX_WAIT
            if isinstance(adapter, ActsOnKeyTimes):
                async with self.busy:  # never while a distribution is being applied
                    try:
                        wait = float(await asyncio.to_thread(adapter.maintain))
                    except Exception:  # the next round tries again; the old zone stays served
                        log.exception("adapter maintenance failed", extra=context(stage="maintain"))
                        wait = MAINTAIN_RETRY
            self.maintain_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.maintain_wake.wait(), min(wait, MAINTAIN_MAX_WAIT))

    def _watch_adapter_files(self) -> None:
        if self.adapter_watcher is None:
            return
        adapter = self.pipeline.adapter
        self.adapter_watcher.watch(
            adapter.watched_files() if isinstance(adapter, WatchesFiles) else []
        )

    # --- main -----------------------------------------------------------------------------

    async def run(self) -> None:
        for dist_id in self.pipeline.recover():
            self.enqueue(dist_id, published=True)  # fetch again to complete it, if still there
        await self.start()
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        self.watcher = FileWatcher(self.request_reload)
        self.watcher.watch(watched_files(self.config))
        self.watcher.start(loop)
        self.adapter_watcher = FileWatcher(self.maintain_wake.set, what="the adapter's files")
        self._watch_adapter_files()
        self.adapter_watcher.start(loop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._spawn_reconcile("at start")
        where = ", ".join(str(a) for a in self.bound)
        http = f"; metrics and health on http://{self.http_bound}" if self.http_bound else ""
        print(f"krs listening for NOTIFY on {where}{http}", flush=True)
        self.tasks = [
            asyncio.create_task(self.worker(), name="worker"),
            asyncio.create_task(self.confirm_loop(), name="confirm_loop"),
            asyncio.create_task(self.poll_loop(), name="poll_loop"),
            asyncio.create_task(self.maintain_loop(), name="maintain_loop"),
            asyncio.create_task(self.server_check_loop(), name="server_check_loop"),
        ]
        try:
            await asyncio.gather(*self.tasks)
        finally:
            self.close()
