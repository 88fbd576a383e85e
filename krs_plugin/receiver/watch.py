"""Watch krs.yaml and the key files with inotify, and call back (debounced) when one changes.

The watches are on the files' directories, not the files: editors, config management and
Kubernetes ConfigMaps replace a file by renaming a new one over it, which ends a watch on the old
inode. Events for other names in those directories are ignored, except Kubernetes' ``..data``
symlink swap. The callback decides whether anything really changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

WATCH_MASK = (
    flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE | flags.ATTRIB | flags.MODIFY
)


class FileWatcher:
    def __init__(self, on_change: Callable[[], None], debounce: float = 0.3) -> None:
        self.on_change = on_change
        self.debounce = debounce
        self.inotify = INotify()
        self.names: dict[int, set[str]] = {}  # watch descriptor -> file names of interest
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, paths: Iterable[Path]) -> None:
        """Replace the watched set with ``paths``."""
        wanted: dict[Path, set[str]] = {}
        for path in paths:
            wanted.setdefault(path.absolute().parent, set()).add(path.name)
        for wd in list(self.names):
            with contextlib.suppress(OSError):
                self.inotify.rm_watch(wd)
            del self.names[wd]
        for directory, names in wanted.items():
            try:
                wd = self.inotify.add_watch(directory, WATCH_MASK)
            except OSError as exc:
                log.warning("cannot watch %s for changes: %s", directory, exc)
                continue
            self.names.setdefault(wd, set()).update(names)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.inotify.fileno(), self._readable)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.loop is not None:
            self.loop.remove_reader(self.inotify.fileno())
        self.inotify.close()

    def _readable(self) -> None:
        relevant = False
        for event in self.inotify.read(timeout=0):
            names = self.names.get(event.wd)
            if names is not None and (event.name in names or event.name.startswith("..")):
                relevant = True
        if relevant and self.loop is not None:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(self.debounce, self.on_change)
