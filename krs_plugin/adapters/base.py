"""The adapter interface: how the KRS talks to one nameserver (DESIGN.md, STYLE.md).

Plans are computed first and applied second (octoDNS); apply is atomic with rollback and verifies
before it reports success (certbot installers). No server-specific code lives outside its module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import dns.name

from krs_plugin.dnssec import DnssecKey, KeyTiming


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


@dataclass(frozen=True)
class PlannedKey:
    key: DnssecKey
    role: str
    timing: KeyTiming


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


class Adapter(Protocol):
    name: str

    def check(self) -> list[Problem]: ...

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]: ...

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult: ...

    def verify(self, zone: dns.name.Name, plan: KeyPlan) -> Verification: ...

    def snapshot(self, zone: dns.name.Name) -> str:
        """Everything needed to put ``zone``'s keys back as they are now (kept in the journal)."""
        ...

    def restore(self, zone: dns.name.Name, snapshot: str) -> None:
        """Put ``zone``'s keys back as ``snapshot`` recorded them (crash recovery)."""
        ...


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
