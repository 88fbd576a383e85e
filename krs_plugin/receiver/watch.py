"""Watch krs.yaml and the key files with inotify, and call back (debounced) when one changes.

The watches are on the files' directories, not the files: editors, config management and
Kubernetes ConfigMaps replace a file by renaming a new one over it, which ends a watch on the old
inode. Events for other names in those directories are ignored, except Kubernetes' ``..data``
symlink swap. The callback decides whether anything really changed.

Where inotify cannot be had (the per-user limit of instances, ``fs.inotify.max_user_instances``,
reached by many processes of one user; another OS), the watcher looks at the files every
``POLL_INTERVAL`` seconds instead (size, times, inode) and says so once per process
(docs/operations.md, "Changing the configuration while running").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from inotify_simple import flags

from krs_plugin.inotify import POLL_INTERVAL, open_inotify

log = logging.getLogger(__name__)

WATCH_MASK = (
    flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE | flags.ATTRIB | flags.MODIFY
)


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class FileWatcher:
    def __init__(
        self,
        on_change: Callable[[], None],
        debounce: float = 0.3,
        *,
        what: str = "krs.yaml and the key files",
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.on_change = on_change
        self.debounce = debounce
        self.poll_interval = poll_interval
        self.inotify = open_inotify(
            f"{what} are looked at every {poll_interval:g} s instead (changes are seen later)"
        )
        self.names: dict[int, set[str]] = {}  # watch descriptor -> file names of interest
        self.paths: list[Path] = []  # what is watched (polled without inotify)
        self.stamps: dict[Path, tuple[int, ...] | None] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.poller: asyncio.TimerHandle | None = None

    @property
    def polling(self) -> bool:
        return self.inotify is None

    def watch(self, paths: Iterable[Path]) -> None:
        """Replace the watched set with ``paths``."""
        self.paths = [path.absolute() for path in paths]
        self.stamps = {path: _stamp(path) for path in self.paths}
        if self.inotify is None:
            return
        wanted: dict[Path, set[str]] = {}
        for path in self.paths:
            wanted.setdefault(path.parent, set()).add(path.name)
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
        if self.inotify is None:
            self.poller = loop.call_later(self.poll_interval, self._poll)
        else:
            loop.add_reader(self.inotify.fileno(), self._readable)

    def close(self) -> None:
        for handle in (self.timer, self.poller):
            if handle is not None:
                handle.cancel()
        if self.inotify is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.inotify.fileno())
            self.inotify.close()

    def _poll(self) -> None:
        assert self.loop is not None
        stamps = {path: _stamp(path) for path in self.paths}
        if stamps != self.stamps:
            self.stamps = stamps
            self._changed()
        self.poller = self.loop.call_later(self.poll_interval, self._poll)

    def _readable(self) -> None:
        assert self.inotify is not None
        relevant = False
        for event in self.inotify.read(timeout=0):
            names = self.names.get(event.wd)
            if names is not None and (event.name in names or event.name.startswith("..")):
                relevant = True
        if relevant:
            self._changed()

    def _changed(self) -> None:
        if self.loop is not None:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(self.debounce, self.on_change)
