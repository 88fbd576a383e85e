"""inotify where the kernel gives it, and one warning per process where it does not.

Each inotify instance counts against the user's ``fs.inotify.max_user_instances`` (128 on
Debian), so a host running many ``krs run`` processes as one user reaches it. Every user of
inotify in the KRS opens it here and falls back (the config watcher polls, the key folder index
scans) instead of failing (docs/operations.md, "Many krs processes on one host").
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from inotify_simple import INotify

log = logging.getLogger(__name__)

POLL_INTERVAL = 2.0  # seconds between looks at the files when inotify cannot be had
_warned = False  # the fallback is said once per process, however many watchers fall back


def open_inotify(fallback: str) -> INotify | None:
    """An inotify instance, or None when the kernel refuses one: the caller then polls or
    scans, which ``fallback`` says (for the one warning per process)."""
    try:
        return INotify()
    except OSError as exc:
        warn_no_inotify(fallback, exc)
        return None


def warn_no_inotify(fallback: str, exc: OSError) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    if exc.errno == errno.EMFILE:
        why = (
            "this user has as many inotify instances as the kernel allows "
            f"(fs.inotify.max_user_instances = {_sysctl('max_user_instances')}); raise it, e.g. "
            "sysctl -w fs.inotify.max_user_instances=1024 (and in /etc/sysctl.d/ to keep it)"
        )
    elif exc.errno == errno.ENOSPC:
        why = (
            "the kernel's limit of inotify watches is reached "
            f"(fs.inotify.max_user_watches = {_sysctl('max_user_watches')}); raise it with sysctl"
        )
    else:
        why = str(exc)
    log.warning("inotify is not available (%s): %s", why, fallback)


def _sysctl(name: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "?"
