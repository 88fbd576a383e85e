"""The names of the key files in one folder, grouped by zone and kept current with inotify.

One folder may hold the keys of 10,000 zones (40,000 files). A zone's files are found through a
``FolderIndex`` (one scan, then inotify) rather than a glob per lookup: a glob scans the whole
folder (25 ms at 40,000 files), and with several lookups per zone the time to apply a
distribution grew with the square of its zones (docs/benchmarks.md, "Bulk"). Every adapter that
keeps key files in a folder reads it through one (``keyfiles.KeyFolder``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import dns.name
from inotify_simple import INotify, flags

from krs_plugin.inotify import open_inotify

_ADDED = flags.CREATE | flags.MOVED_TO
_GONE = flags.DELETE | flags.MOVED_FROM
_LOST = flags.Q_OVERFLOW | flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF
Names = tuple[str, ...]
"""A zone's file names, sorted: a tuple, not a set (8 names of a BIND 9.20 zone, each key with
its ``.state`` and timing record: 120 bytes against 730; 10,000 zones in one folder;
docs/benchmarks.md, "BIND 9.20 at 10,000 zones")."""
SETTLED = 1.0
"""Without inotify, a scan is reused while the folder's inode and mtime are unchanged, once its
mtime is this many seconds old: the kernel's file times advance in ticks of a few milliseconds,
so a change right after a scan could leave a recent mtime as it was."""


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
        self._zones: dict[str, Names] | None = None
        self._scanned: tuple[tuple[int, int], dict[str, Names]] | None = None  # no inotify

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
            found = zones.get(head, ())
            if not temporary:
                return list(found)  # kept sorted
            return sorted((*found, *zones.get("." + head, ())))

    def close(self) -> None:
        with self._lock:
            self._drop()

    @staticmethod
    def _group(name: str) -> str | None:
        head, plus, _ = name.partition("+")
        return head if plus and head.startswith(("K", ".K")) else None

    def _scan(self) -> dict[str, Names]:
        zones: dict[str, list[str]] = {}
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    group = self._group(entry.name)
                    if group is not None:
                        zones.setdefault(group, []).append(entry.name)
        except FileNotFoundError:
            pass
        return {group: tuple(sorted(names)) for group, names in zones.items()}

    def _settled_scan(self) -> dict[str, Names]:
        """A scan, or the last one while the folder has not changed since (``SETTLED``): a
        batch of 10,000 zones looks a folder of 40,000 files up about 70,000 times."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (info.st_ino, info.st_mtime_ns)
        if self._scanned is not None and self._scanned[0] == stamp:
            return self._scanned[1]
        zones = self._scan()
        settled = time.time() - info.st_mtime_ns / 1e9 > SETTLED
        self._scanned = (stamp, zones) if settled else None
        return zones

    def _drop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
        self._inotify, self._zones = None, None

    def _current(self) -> dict[str, Names]:
        if self._inotify is None:
            inotify = open_inotify(f"the key folder {self.path} is read at each lookup instead")
            if inotify is None:
                return self._settled_scan()
            try:
                inotify.add_watch(self.path, self.MASK)
            except OSError:
                inotify.close()
                return self._settled_scan()
            self._inotify = inotify
            self._zones = None  # scanned below, after the watch exists: nothing is missed
        for event in self._inotify.read(timeout=0):
            if event.mask & _LOST:  # events were lost, or the folder was moved or removed
                self._drop()
                return self._current()  # a new watch (on whatever is at the path now), a scan
            group = self._group(event.name)
            if self._zones is None or group is None:
                continue
            names = self._zones.get(group, ())
            if event.mask & _ADDED and event.name not in names:
                self._zones[group] = tuple(sorted((*names, event.name)))
            elif event.mask & _GONE and event.name in names:
                rest = tuple(name for name in names if name != event.name)
                if rest:
                    self._zones[group] = rest
                else:
                    del self._zones[group]
        if self._zones is None:
            self._zones = self._scan()
        return self._zones
