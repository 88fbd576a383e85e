"""The adapter interface, and the one apply algorithm every adapter shares (docs/adapters.md).

``Adapter`` is what the KRS needs of a nameserver: check its configuration, list a zone's keys,
apply a plan, snapshot and restore a zone's keys. ``BaseAdapter`` implements ``apply`` once: checks
before anything is written, then write, retire and remove key by key, have the server load the
keys, verify over DNS what it serves, finish; a server supplies those steps as hooks. A failed
apply is never rolled back by the adapter: the caller, ``transaction.apply_atomically``, owns
rollback (it restores every zone it touched, once, from snapshots taken first). Optional
abilities are Protocols the daemon checks with ``isinstance``.

Plans are computed first and applied second (octoDNS's plan/apply split); apply verifies before
it reports success (certbot's installers). No server-specific code lives outside its module.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, runtime_checkable

import dns.name

from krs_plugin.adapters.settings import reject_unknown, settings_path
from krs_plugin.dnssec import DnssecKey, KeyTiming
from krs_plugin.errors import AdapterError, KrsError

Role = Literal["KSK", "ZSK", "CSK"]


@dataclass(frozen=True)
class Problem:
    """One thing ``check()`` found wrong, phrased for an operator, with how to fix it."""

    what: str
    fix: str = ""


@dataclass(frozen=True)
class InstalledKey:
    """A key the server has now, as the adapter sees it (never its private part)."""

    zone: dns.name.Name
    key_tag: int
    algorithm: int
    flags: int
    timing: KeyTiming


CdsState = Literal["publish", "delete"]


@dataclass(frozen=True)
class PlannedKey:
    key: DnssecKey
    role: Role
    timing: KeyTiming
    cds: CdsState | None = None
    """``publish``: the server serves this KSK's CDS and CDNSKEY now; ``delete``: the zone serves
    the RFC 8078 delete CDS/CDNSKEY; None: neither (docs/payload.md, ``cds``)."""


@dataclass(frozen=True)
class KeyPlan:
    """What one distribution asks of one zone: keys to install (with timing), retire, remove."""

    zone: dns.name.Name
    install: tuple[PlannedKey, ...] = ()
    retire: tuple[int, ...] = ()
    remove: tuple[int, ...] = ()
    retire_delete_at: int | None = None
    """When retired keys are to be unpublished (tdns: now + the manifest's retire_time); the
    adapter writes it as their Delete time, so the server removes them on schedule."""

    @property
    def empty(self) -> bool:
        return not (self.install or self.retire or self.remove)


@dataclass(frozen=True)
class Verification:
    ok: bool
    details: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class ApplyResult:
    zone: dns.name.Name
    changed: bool
    installed: tuple[int, ...] = ()
    retired: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    verification: Verification = field(default_factory=lambda: Verification(True))
    served: Mapping[str, object] | None = None
    """What the server serves for the zone, read over DNS once ``verify`` succeeded
    (``dnscheck.read_served``), for the confirmation; None when the adapter has no server."""


class Adapter(ABC):
    """How the KRS talks to one nameserver. Registered in the entry-point group
    ``krs_plugin.adapters`` under the name operators write as ``adapter.type``; constructed as
    ``Adapter(settings, config_path=..., zones=...)`` (``adapter.settings`` of krs.yaml, the
    file's path for relative paths, the zones the node serves), which checks the settings' keys
    and hands them to ``configure``."""

    name: ClassVar[str]
    settings_keys: ClassVar[frozenset[str]] = frozenset()
    """The keys ``adapter.settings`` may have; any other is refused, naming it (a misspelt
    setting would otherwise fall back to its default in silence)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        config_path: Path | None = None,
        zones: Iterable[dns.name.Name] = (),
    ) -> None:
        reject_unknown(settings, self.settings_keys, self.name)
        self.settings_dir = config_path.parent if config_path is not None else None
        self.zones = tuple(zones)
        self.configure(settings)

    @abstractmethod
    def configure(self, settings: Mapping[str, Any]) -> None:
        """Read ``settings`` (ConfigError naming the key when one is wrong); talk to no server
        yet. ``self.zones`` and ``path_setting`` are ready."""

    def path_setting(self, value: object) -> Path:
        """A path from ``adapter.settings``; a relative one is relative to krs.yaml's folder."""
        return settings_path(value, self.settings_dir)

    @abstractmethod
    def check(self) -> list[Problem]:
        """Every reason the server cannot take keys from the KRS now, each with its fix
        (``krs doctor``); an empty list when it can. Never changes anything."""

    @abstractmethod
    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        """The zone's keys as the server has them (the plan is computed against these)."""

    @abstractmethod
    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        """Carry out ``plan`` and see the server serve it; ApplyFailed when it cannot (without
        rolling back: see ``transaction.apply_atomically``)."""

    @abstractmethod
    def snapshot(self, zone: dns.name.Name) -> str:
        """Everything needed to put ``zone``'s keys back as they are now (kept in the journal,
        so it must survive a restart: text, private keys included)."""

    @abstractmethod
    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        """Put ``zone``'s keys back as ``snapshot`` recorded them and have the server serve
        them; says what happened, for the operator. Must work after a crash, with the server
        down (then it says so); AdapterError only when the keys themselves could not be put
        back."""


class ApplyFailed(AdapterError):
    """An apply stopped at ``step``. ``wrote`` is False when it stopped before anything was
    written (the checks refused the plan): then there is nothing to roll back."""

    def __init__(
        self,
        adapter: str,
        zone: dns.name.Name,
        step: str,
        cause: Exception,
        *,
        wrote: bool,
        touched: Sequence[dns.name.Name] | None = None,
    ) -> None:
        where = f"{adapter}, zone {zone}"
        if wrote:
            text = f"{where}: step '{step}' failed: {cause}"
        else:
            text = f"{where}: {cause}; nothing was changed"
        super().__init__(text)
        self.adapter, self.zone, self.step, self.wrote = adapter, zone, step, wrote
        self.touched = tuple(touched) if touched is not None else None
        """The zones a batched apply wrote to before it stopped (``apply_batch``): all of them
        are to be rolled back, not only ``zone``. None for a one-zone ``apply``."""


class StepFailed(Exception):
    """Raised by a batch hook (``load_batch``, ``verify_batch``) to say which zone's step
    failed, so that the error names it; ``apply_batch`` turns it into ApplyFailed. Not a
    KrsError: it never leaves ``apply_batch``."""

    def __init__(self, change: ZoneChange, cause: Exception) -> None:
        super().__init__(str(cause))
        self.change, self.cause = change, cause


@dataclass(kw_only=True)
class ZoneChange:
    """One apply in progress: the plan, the moment it started, what was done so far and the
    step being taken (named in the error if it fails). A server keeps what else it needs
    between its hooks in a subclass (named's mode, Knot's KASP keys, ...)."""

    zone: dns.name.Name
    plan: KeyPlan
    now: int
    step: str = "start"
    installed: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.retired or self.removed)


Change = TypeVar("Change", bound=ZoneChange)

VERIFY_SLICE = 1000
"""Zones verified at once in a batch (``verify_batch``): each slice's expectations and answers
are dropped once it is checked, so that what a verification holds does not grow with the
distribution (10,000 zones held at once were tens of megabytes of ``krs run``'s peak). A zone
that fails in any slice still rolls back every zone written."""
VERIFIED = Verification(True)


class BaseAdapter(Adapter, Generic[Change]):
    """The apply algorithm, once, for every server; a server supplies the hooks:

    ``begin``   everything read and checked before anything is written (refuse here);
    ``write_key``, ``retire_key``, ``remove_key``   one key each, True when something changed;
    ``load``    have the server take the keys (rndc, knotc, sign and reload, rectify);
    ``verify``  what the server serves now, over DNS, against what was planned;
    ``finish``  what may only happen once the server serves the change (delete key files).

    ``failures`` are the exceptions that mean "this step failed" (reported, then rolled back by
    the caller); anything else is a bug and propagates as it is.
    """

    failures: ClassVar[tuple[type[Exception], ...]] = (KrsError, OSError)
    verify_while_writing: ClassVar[bool] = False
    """True for a server whose batch may be loaded slice by slice (``load_batch`` once per
    ``VERIFY_SLICE`` zones) and each slice verified in a second thread while the next slices
    are written (docs/adapters.md, "Many zones at once"): its ``verify_batch`` then reads only
    the state of its own slice's zones. PowerDNS: its API writes wait on its database while the
    threads that answer (and sign) DNS questions are idle. Off by default: one load for all
    zones (Knot, NSD) cannot be verified before the last zone is written."""

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        try:
            change = self.begin(zone, plan, int(time.time()))
        except self.failures as exc:
            raise ApplyFailed(self.name, zone, "check", exc, wrote=False) from exc
        try:
            self._write_plan(change)
            change.step = "load"
            self.load(change)
            change.step = "verify"
            verification = self.verify(change)
            if not verification.ok:
                raise AdapterError("; ".join(verification.details))
            change.step = "finish"
            self.finish(change)
        except self.failures as exc:
            raise ApplyFailed(self.name, zone, change.step, exc, wrote=True) from exc
        return ApplyResult(
            zone,
            change.changed,
            tuple(change.installed),
            tuple(change.retired),
            tuple(change.removed),
            verification,
            self.read_served(zone),
        )

    def _write_plan(self, change: Change) -> None:
        """Step 2 of the algorithm: write, retire and remove key by key, each step named."""
        plan = change.plan
        for planned in plan.install:
            change.step = f"write key {planned.key.key_tag}"
            if self.write_key(change, planned):
                change.installed.append(planned.key.key_tag)
        for tag in plan.retire:
            change.step = f"retire key {tag}"
            if self.retire_key(change, tag):
                change.retired.append(tag)
        for tag in plan.remove:
            change.step = f"remove key {tag}"
            if self.remove_key(change, tag):
                change.removed.append(tag)

    # --- many zones at once (a distribution for a whole node) ------------------------------

    def apply_batch(self, plans: Sequence[KeyPlan]) -> list[ApplyResult]:
        """The same algorithm as ``apply``, for many zones at once, so that a server is told
        once instead of once per zone (docs/adapters.md, "Many zones at once"): every zone's
        ``begin`` first (a refusal then changes nothing anywhere), every zone's keys written,
        then ``load_batch`` (one reload, where the server allows), ``verify_batch`` (the DNS
        questions of many zones over one connection; ``VERIFY_SLICE`` zones at a time) and
        ``finish``, once every slice is verified. ApplyFailed names the zone
        and step that failed and carries ``touched``, every zone written so far: the caller
        rolls them all back (``transaction.apply_atomically``); the adapter never does."""
        now = int(time.time())
        self._kept: Any = None  # dnscheck.Kept of wait_served_batch, for read_served_batch
        with self.batch_context([plan.zone for plan in plans]):
            changes = self._begin_batch(plans, now)
            written: list[dns.name.Name] = []
            current = changes[0] if changes else None  # blamed for a failure of the batch
            try:
                if self.verify_while_writing:
                    verifications = self._write_verifying_behind(changes, written)
                    current = changes[0] if changes else None
                else:
                    for change in changes:
                        current = change
                        written.append(change.zone)
                        self._write_plan(change)
                    current = changes[0] if changes else None
                    for change in changes:
                        change.step = "load"
                    self.load_batch(changes)
                    verifications = []
                    for start in range(0, len(changes), VERIFY_SLICE):
                        part = changes[start : start + VERIFY_SLICE]
                        current = part[0]
                        for change in part:
                            change.step = "verify"
                        verifications += self._accepted(part, self.verify_batch(part))
                for change in changes:
                    change.step = "finish"
                    self.finish(change)
            except StepFailed as failed:
                raise self._batch_failure(failed.change, failed.cause, written) from failed.cause
            except self.failures as exc:
                assert current is not None  # nothing fails without a zone
                raise self._batch_failure(current, exc, written) from exc
            served = self.read_served_batch([change.zone for change in changes])
        return [
            ApplyResult(
                change.zone,
                change.changed,
                tuple(change.installed),
                tuple(change.retired),
                tuple(change.removed),
                verification,
                state,
            )
            for change, verification, state in zip(changes, verifications, served, strict=True)
        ]

    def _write_verifying_behind(
        self, changes: Sequence[Change], written: list[dns.name.Name]
    ) -> list[Verification]:
        """Steps 3 to 5 slice by slice (``verify_while_writing``): a slice written and loaded
        is verified in one second thread while the next slices are written, the slices in
        order. A slice found not served stops the writing at the next slice; any failure waits
        for the verification under way to end (none runs on while the batch is rolled back)
        and raises StepFailed; ``written`` gets each zone before its first write."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="krs-verify")
        looks: list[tuple[Sequence[Change], Future[list[Verification]]]] = []
        verifications: list[Verification] = []
        try:
            for start in range(0, len(changes), VERIFY_SLICE):
                part = changes[start : start + VERIFY_SLICE]
                for change in part:
                    written.append(change.zone)
                    try:
                        self._write_plan(change)
                    except self.failures as exc:
                        raise StepFailed(change, exc) from exc
                for change in part:
                    change.step = "load"
                try:
                    self.load_batch(part)
                except StepFailed:
                    raise
                except self.failures as exc:
                    raise StepFailed(part[0], exc) from exc
                for change in part:
                    change.step = "verify"
                looks.append((part, pool.submit(self.verify_batch, part)))
                while looks and looks[0][1].done():  # a failed slice stops the writing
                    verifications += self._verified(*looks.pop(0))
            while looks:
                verifications += self._verified(*looks.pop(0))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return verifications

    def _verified(
        self, part: Sequence[Change], look: Future[list[Verification]]
    ) -> list[Verification]:
        """A slice's verification from its thread, StepFailed when it failed."""
        try:
            looked = look.result()
        except StepFailed:
            raise
        except self.failures as exc:
            raise StepFailed(part[0], exc) from exc
        return self._accepted(part, looked)

    def _accepted(self, part: Sequence[Change], looked: list[Verification]) -> list[Verification]:
        """A slice's verifications once every zone is served as planned (StepFailed else),
        each success as the one shared VERIFIED."""
        self._check_verified(part, looked)
        return [VERIFIED if v == VERIFIED else v for v in looked]

    def _begin_batch(self, plans: Sequence[KeyPlan], now: int) -> list[Change]:
        """Every zone's ``begin``, before anything is written anywhere."""
        changes = []
        for plan in plans:
            try:
                changes.append(self.begin(plan.zone, plan, now))
            except self.failures as exc:
                raise ApplyFailed(
                    self.name, plan.zone, "check", exc, wrote=False, touched=()
                ) from exc
        return changes

    def _batch_failure(
        self, change: ZoneChange, cause: Exception, written: Sequence[dns.name.Name]
    ) -> ApplyFailed:
        others = len(written) - 1
        if others > 0 and change.step in ("load", "verify", "finish"):
            cause = AdapterError(f"{cause} (batched with {others} other zone(s))")
        return ApplyFailed(self.name, change.zone, change.step, cause, wrote=True, touched=written)

    @staticmethod
    def _check_verified(changes: Sequence[Change], verifications: Sequence[Verification]) -> None:
        """StepFailed for the first zone whose verification failed (and how many more did)."""
        failed = [(c, v) for c, v in zip(changes, verifications, strict=True) if not v.ok]
        if not failed:
            return
        change, verification = failed[0]
        more = f" (and {len(failed) - 1} more zone(s) not served as planned)" if failed[1:] else ""
        raise StepFailed(change, AdapterError("; ".join(verification.details) + more))

    @contextlib.contextmanager
    def batch_context(self, zones: Sequence[dns.name.Name]) -> Iterator[None]:
        """Around a batched apply: a server reads here, in one call, what ``begin`` would ask
        for zone by zone (its configuration, its zone list), and forgets it after. Nothing by
        default."""
        yield

    def load_batch(self, changes: Sequence[Change]) -> None:
        """Have the server take the keys of every zone of a batch. By default ``load`` zone by
        zone; a server that can be told once for many zones does so here."""
        for change in changes:
            try:
                self.load(change)
            except self.failures as exc:
                raise StepFailed(change, exc) from exc

    def verify_batch(self, changes: Sequence[Change]) -> list[Verification]:
        """``verify`` for every zone of a batch, in order. By default zone by zone; a server
        asks all zones' questions at once here (dnscheck.wait_served_many)."""
        out = []
        for change in changes:
            try:
                out.append(self.verify(change))
            except self.failures as exc:
                raise StepFailed(change, exc) from exc
        return out

    def read_served_batch(
        self, zones: Sequence[dns.name.Name]
    ) -> list[Mapping[str, object] | None]:
        """``read_served`` for many zones, their questions over one TCP connection; an adapter
        without a server address reports zone by zone (the directory adapter: its key folder,
        which the KDC's gate compares like a server's answers)."""
        host, port = getattr(self, "host", None), getattr(self, "port", None)
        if not isinstance(host, str) or not isinstance(port, int):
            return [self.read_served(zone) for zone in zones]
        from krs_plugin.adapters.dnscheck import read_served_many  # dnscheck imports this module

        kept, self._kept = getattr(self, "_kept", None), None
        known = kept.states if kept is not None else {}
        hidden = {zone: self._hidden(zone) for zone in zones if zone not in known}
        return list(read_served_many(zones, host, port, hidden=hidden, kept=kept))

    def _hidden(self, zone: dns.name.Name) -> list[Any]:
        """``unpublished_dnskeys``, none when they cannot be read (the signers of the
        published keys are still reported)."""
        try:
            return self.unpublished_dnskeys(zone)
        except self.failures:
            return []

    def wait_served_batch(self, expects: Sequence[Any], timeout: float) -> list[Verification]:
        """``dnscheck.wait_served_many`` against the adapter's server (``host``, ``port``), its
        last answers kept for ``read_served_batch``: a server's ``verify_batch`` calls this."""
        from krs_plugin.adapters.dnscheck import Kept, wait_served_many  # it imports this module

        host, port = getattr(self, "host", None), getattr(self, "port", None)
        assert isinstance(host, str) and isinstance(port, int), "an adapter with a server"
        if getattr(self, "_kept", None) is None:  # one per batch: a server looks again at some
            self._kept = Kept(self._hidden)
        return wait_served_many(expects, host, port, timeout=timeout, keep=self._kept)

    def read_served(self, zone: dns.name.Name) -> Mapping[str, object] | None:
        """What the server serves for ``zone`` (``dnscheck.read_served``) over the adapter's
        ``server`` address (``host``, ``port``), or None for an adapter without a server (the
        directory adapter). Read after the apply was verified; never fails the apply: a server
        that does not answer now is reported as ``error`` in the data."""
        host, port = getattr(self, "host", None), getattr(self, "port", None)
        if not isinstance(host, str) or not isinstance(port, int):
            return None
        from krs_plugin.adapters.dnscheck import read_served  # dnscheck imports this module

        try:
            hidden = self.unpublished_dnskeys(zone)
        except self.failures:
            hidden = []  # the signers of the published keys are still reported
        return read_served(zone, host, port, hidden=hidden)

    def unpublished_dnskeys(self, zone: dns.name.Name) -> list[Any]:
        """The DNSKEYs (dnspython rdata) of the zone's keys that sign while not published (an
        algorithm rollover, dnscheck.signs_unpublished), so that ``read_served`` can validate
        their RRSIGs; none unless a server says."""
        return []

    @abstractmethod
    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> Change:
        """Read what the apply needs and refuse, before anything is written, a plan the server
        cannot take (AdapterError saying why)."""

    @abstractmethod
    def write_key(self, change: Change, planned: PlannedKey) -> bool:
        """Install ``planned`` with its timing; False when the server has it exactly so."""

    @abstractmethod
    def retire_key(self, change: Change, tag: int) -> bool:
        """Make key ``tag`` inactive as of ``change.now`` (and deleted at the plan's
        ``retire_delete_at``, when set); False when it already is, or is not there."""

    @abstractmethod
    def remove_key(self, change: Change, tag: int) -> bool:
        """Withdraw key ``tag`` from the zone; False when it is not there."""

    @abstractmethod
    def load(self, change: Change) -> None:
        """Have the server take the zone's keys as they are now written (``change.changed``
        says whether anything was); may refine ``change.step`` for the error message."""

    @abstractmethod
    def verify(self, change: Change) -> Verification:
        """Whether the server serves the zone's keys as their timing says, signatures valid,
        and none of ``change.removed``; waits up to the adapter's timeout."""

    def finish(self, change: Change) -> None:
        """After the server was seen to serve the change: nothing, unless a server must."""


@runtime_checkable
class ActsOnKeyTimes(Protocol):
    """An adapter whose server does not act on key times by itself (NSD, PowerDNS, BIND 9.20
    in manual-mode): the daemon calls ``maintain()`` when it says and whenever a watched file
    changes, never while a distribution is being applied."""

    def maintain(self) -> float:
        """Act on every key time (and re-sign) that is due; the seconds until the next one."""
        ...


@runtime_checkable
class WatchesFiles(Protocol):
    """An adapter that must act when files outside the KRS change (NSD's unsigned zones)."""

    def watched_files(self) -> list[Path]: ...


@runtime_checkable
class ReportsSignatureExpiry(Protocol):
    """An adapter that signs the zone itself (NSD): ``krs status`` shows when its signatures
    expire."""

    def signature_expiry(self, zone: dns.name.Name) -> int | None:
        """The earliest RRSIG expiration (Unix time) the server serves for ``zone``, or None."""
        ...


@runtime_checkable
class ReportsServerProblem(Protocol):
    """An adapter that can say cheaply, changing nothing, whether its server runs and takes
    commands (``knotc status``, ``rndc status``, ``nsd-control status``, PowerDNS's API or
    ``pdns_control rping``). ``krs run`` asks it every ``server_check_interval`` seconds, never
    per ``/healthz`` request, and shows the answer in ``/healthz`` and ``krs_server_up``."""

    def server_problem(self) -> str | None:
        """Why the server cannot take keys now (one line for an operator), or None."""
        ...
