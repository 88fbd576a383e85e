"""Atomic file writes with the final mode in place before the content lands.

Key files must never exist, even for a moment, with looser permissions or half-written: the data
goes to a temporary file in the same directory (created 0600 by ``mkstemp``), is synced, gets its
final mode, and is renamed over the target in one step. The directory is synced after the rename:
until then a power loss may undo the rename, and the old file (or none) comes back.

A full disk (ENOSPC) or quota (EDQUOT) is said as such in the error ("disk full"): the operator's
to fix, and a failure to try again, never a fault of the data being written (docs/operations.md,
"Errors and what to do").
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from krs_plugin.errors import KeyFileError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _reason(exc: OSError) -> str:
    if exc.errno in DISK_FULL:
        return f"disk full ({exc.strerror})"
    return str(exc)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = SECRET_MODE) -> None:
    """Replace ``path`` with ``data`` atomically; ``KeyFileError`` naming the path on failure."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot create file: {_reason(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode != SECRET_MODE:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise KeyFileError(f"{target}: cannot write file: {_reason(exc)}") from exc
    try:
        sync_directory(directory)
    except OSError as exc:
        raise KeyFileError(f"{target}: written, but its directory cannot be synced: {exc}") from exc


def sync_directory(directory: Path) -> None:
    """fsync ``directory``, so that the names created, renamed or removed in it last."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
