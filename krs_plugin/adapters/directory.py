"""The ``directory`` adapter: BIND-format key files in one folder, the embedded default.

It is what the KRS does when no nameserver is configured, and a building block for operator hooks
(a folder that a script or BIND's ``key-directory`` reads). Apply is atomic across all keys of a
plan: the files it touches are snapshotted first and restored if any step fails.

One folder may hold the keys of 10,000 zones (40,000 files). A zone's files are found through a
``FolderIndex`` (one scan, then inotify) rather than a glob per lookup: a glob scans the whole
folder (25 ms at 40,000 files), and with several lookups per zone the time to apply a
distribution grew with the square of its zones (docs/benchmarks.md, "Bulk").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.name
from inotify_simple import INotify, flags

from krs_plugin.adapters import keyfiles
from krs_plugin.adapters.base import (
    ApplyResult,
    InstalledKey,
    KeyPlan,
    Problem,
    Verification,
)
from krs_plugin.dnssec import DnssecKey, KeyTiming, read_bind_key_pair
from krs_plugin.dnssec.bindfiles import bind_private_text
from krs_plugin.errors import AdapterError, ConfigError, KrsError

_ADDED = flags.CREATE | flags.MOVED_TO
_GONE = flags.DELETE | flags.MOVED_FROM
_LOST = flags.Q_OVERFLOW | flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF


class FolderIndex:
    """The names in one folder grouped by zone (``K<zone>``, and ``.K<zone>`` for the temporary
    files of an interrupted write), kept current with inotify.

    One scan builds it; after that every create, delete and rename in the folder, by this
    process or any other, arrives as an event, and the kernel queues the event before the change
    returns, so a lookup after a change always sees it. An overflowing event queue, or the folder
    itself moved or removed, means a fresh scan at the next lookup. Where inotify cannot be had
    (another OS, the per-user limit of instances), every lookup scans. Only names are indexed:
    file contents are always read from disk."""

    MASK = _ADDED | _GONE | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._inotify: INotify | None = None
        self._zones: dict[str, set[str]] | None = None

    def names(self, zone: dns.name.Name, *, temporary: bool = False) -> list[str]:
        """Sorted names of the zone's files, ``K<zone>+*`` (what ``glob`` would find), plus the
        ``.K<zone>+*`` leftovers with ``temporary``."""
        head = f"K{zone.to_text()}"
        if "+" in head:  # grouping is by the text before the first "+": scan for such names
            with self._lock:
                every = set().union(*self._scan().values())
            return sorted(n for n in every if n.startswith((head + "+", "." + head + "+")))
        with self._lock:
            zones = self._current()
            found = set(zones.get(head, ()))
            if temporary:
                found |= zones.get("." + head, set())
        return sorted(found)

    def close(self) -> None:
        with self._lock:
            self._drop()

    @staticmethod
    def _group(name: str) -> str | None:
        head, plus, _ = name.partition("+")
        return head if plus and head.startswith(("K", ".K")) else None

    def _scan(self) -> dict[str, set[str]]:
        zones: dict[str, set[str]] = {}
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    group = self._group(entry.name)
                    if group is not None:
                        zones.setdefault(group, set()).add(entry.name)
        except FileNotFoundError:
            pass
        return zones

    def _drop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
        self._inotify, self._zones = None, None

    def _current(self) -> dict[str, set[str]]:
        if self._inotify is None:
            try:
                self._inotify = INotify()
                self._inotify.add_watch(self.path, self.MASK)
            except OSError:
                self._drop()
                return self._scan()
            self._zones = None  # scanned below, after the watch exists: nothing is missed
        for event in self._inotify.read(timeout=0):
            if event.mask & _LOST:  # events were lost, or the folder was moved or removed
                self._drop()
                return self._current()  # a new watch (on whatever is at the path now), a scan
            group = self._group(event.name)
            if self._zones is None or group is None:
                continue
            if event.mask & _ADDED:
                self._zones.setdefault(group, set()).add(event.name)
            elif event.mask & _GONE:
                self._zones.get(group, set()).discard(event.name)
        if self._zones is None:
            self._zones = self._scan()
        return self._zones


class DirectoryAdapter:
    name = "directory"

    def __init__(self, settings: Mapping[str, Any], *, config_path: Path | None = None) -> None:
        unknown = sorted(set(settings) - {"path"})
        if unknown:
            raise ConfigError(f"adapter.settings: unknown key(s) for directory: {unknown}")
        raw = settings.get("path")
        if not isinstance(raw, str):
            raise ConfigError("adapter.settings.path: required for the directory adapter")
        path = Path(raw)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        self.path = path
        self.index = FolderIndex(path)

    def check(self) -> list[Problem]:
        if not self.path.is_dir():
            return [
                Problem(f"key directory {self.path} does not exist", f"mkdir -m 0700 {self.path}")
            ]
        if not os.access(self.path, os.W_OK):
            return [Problem(f"key directory {self.path} is not writable", "fix its owner or mode")]
        return []

    def _files(self, zone: dns.name.Name, *, temporary: bool = False) -> list[Path]:
        return [self.path / n for n in self.index.names(zone, temporary=temporary)]

    def _read_keys(
        self, zone: dns.name.Name, tag: int | None = None
    ) -> list[tuple[Path, DnssecKey, KeyTiming]]:
        """The zone's keys from their files; with ``tag``, only the first file named with that
        tag (``read_bind_key_pair`` refuses a file whose name and key disagree)."""
        private = [p for p in self._files(zone) if p.suffix == ".private"]
        if tag is not None:
            private = [p for p in private if keyfiles.tags_in({p: b""}) == {tag}][:1]
        return [(path, *read_bind_key_pair(path)) for path in private]

    def _snapshot_files(self, zone: dns.name.Name) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self._files(zone)}

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return [
            InstalledKey(zone, key.key_tag, key.algorithm, key.flags, timing)
            for _, key, timing in self._read_keys(zone)
        ]

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        problems = self.check()
        if problems:
            raise AdapterError(f"directory adapter: {problems[0].what}")
        before = self._snapshot_files(zone)
        installed: list[int] = []
        retired: list[int] = []
        removed: list[int] = []
        step = "start"
        try:
            now = int(time.time())
            for planned in plan.install:
                step = f"write key {planned.key.key_tag}"
                if keyfiles.write_key(self.path, planned.key, planned.timing):
                    installed.append(planned.key.key_tag)
            for tag in plan.retire:
                step = f"retire key {tag}"
                for _, key, timing in self._read_keys(zone, tag):
                    if timing.inactive is None:
                        new = replace(timing, inactive=now)
                        if plan.retire_delete_at is not None:
                            new = replace(new, delete=plan.retire_delete_at)
                        keyfiles.write_key(self.path, key, new)
                        retired.append(tag)
            for tag in plan.remove:
                step = f"remove key {tag}"
                for private, _, _ in self._read_keys(zone, tag):
                    private.unlink()
                    private.with_suffix(".key").unlink(missing_ok=True)
                    removed.append(tag)
            step = "verify"
            verification = self.verify(zone, plan)
            if not verification.ok:
                raise AdapterError("; ".join(verification.details))
        except (KrsError, OSError) as exc:
            self._restore(zone, before)
            raise AdapterError(
                f"directory adapter, zone {zone}: step '{step}' failed: {exc}; "
                "key directory restored"
            ) from exc
        changed = bool(installed or retired or removed)
        return ApplyResult(
            zone, changed, tuple(installed), tuple(retired), tuple(removed), verification
        )

    def verify(self, zone: dns.name.Name, plan: KeyPlan) -> Verification:
        """The files on disk hold exactly the planned keys (there is no server to query): each
        installed key's ``.key`` file exists and its ``.private`` file holds exactly that key
        with the planned timing; no file is left named with a removed key's tag.

        Compares bytes instead of parsing the files back (a quarter of a millisecond a key:
        seconds for a distribution of 10,000 zones)."""
        files = self._files(zone)
        names = {p.name for p in files}
        details = []
        for planned in plan.install:
            stem = self.path / planned.key.basename
            expected = bind_private_text(planned.key, planned.timing).encode()
            try:
                same = Path(f"{stem}.private").read_bytes() == expected
            except FileNotFoundError:
                same = False
            if not same or f"{stem.name}.key" not in names:
                details.append(f"key {planned.key.key_tag} is not in {self.path}")
        present = keyfiles.tags_in(dict.fromkeys(files, b""))
        for tag in plan.remove:
            if tag in present:
                details.append(f"key {tag} is still in {self.path}")
        return Verification(not details, tuple(details))

    def snapshot(self, zone: dns.name.Name) -> str:
        return keyfiles.encode_snapshot(self._snapshot_files(zone))

    def restore(self, zone: dns.name.Name, snapshot: str) -> None:
        self._restore(zone, keyfiles.decode_snapshot(self.path, snapshot))

    def _restore(self, zone: dns.name.Name, before: dict[Path, bytes]) -> None:
        """The zone's files exactly as ``before``: the others (and the temporary ``.K…`` files of
        a write that was killed) removed, these rewritten (``keyfiles.restore_files``, without
        its scan of the whole folder)."""
        for path in self._files(zone, temporary=True):
            if path not in before:
                path.unlink(missing_ok=True)
        keyfiles.write_files(before)
