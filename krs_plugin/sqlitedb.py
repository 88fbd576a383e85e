"""SQLite as both the KDC and the KRS use it: a private file, WAL, explicit transactions, checked
when it opens and failing in words.

A state database that is not there is created whole (schema and all, in a temporary file linked
into place), so that an empty file, or one without the schema, is never one of ours half made:
it is damage. One that is there is checked before anything writes to it: not empty, an SQLite
database, a write-ahead log that still holds every change its index says was committed (SQLite
would silently drop what follows a damaged frame), ``PRAGMA quick_check``, and the program's own
tables. A database that fails is refused with ``StateDatabaseError``, naming the file and the way
back (docs/operations.md and docs/kdc.md, "A damaged state database"); nothing is written to it.

A change that cannot be written (a full disk, an I/O error) is ``StateWriteError``: nothing of it
was recorded, and the caller tries again later rather than act as if it were (docs/operations.md,
"A full disk").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import struct
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.files import sync_directory

SQLITE_HEADER = b"SQLite format 3\x00"
# Primary result codes that say the file or the disk failed, not the SQL (sqlite3.h).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT = 3, 5, 6, 8, 10, 11
_FULL, _CANTOPEN, _PROTOCOL, _NOLFS, _NOTADB = 13, 14, 15, 22, 26
_STORAGE = {_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _PROTOCOL}
_STORAGE |= {_NOLFS, _NOTADB}


class StateDatabaseError(ConfigError):
    """A state database that cannot be used as it is: empty, not a database, damaged, or not
    this program's. The message names the file, what is wrong (``problem``) and how to recover
    (``advice``); nothing was written to it. A ``ConfigError``: the command stops with exit
    code 2 (docs/operations.md, docs/kdc.md)."""

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        super().__init__(f"state database {path} {problem}: {advice}")
        self.path, self.problem, self.advice = path, problem, advice


class StateWriteError(KrsError):
    """A change to a state database could not be written (a full disk, an I/O error): nothing
    of it was recorded. The message names the file and says why."""


class StateConnection(sqlite3.Connection):
    """A connection that knows the file it is to (for the errors), and counts itself among this
    process's open connections to that file while it is open."""

    path: Path
    _release: weakref.finalize[[str, int], StateConnection] | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._release is not None:
                self._release()


_OPEN_LOCK = threading.RLock()  # reentrant: a leaked connection's finalizer (a weakref, run by
# the garbage collector at any allocation) releases its count, also while this thread holds the
# lock in open_private_db: with a plain Lock that deadlocked the process
_OPEN: dict[str, int] = {}
"""Connections this process has open, per database file. SQLite locks with POSIX locks, which a
process loses on a file the moment it closes *any* descriptor of it: the file checks of
``check_database`` (reading the header, the ``-shm`` and ``-wal`` files) would drop the locks
of a connection this process already has (krs run opens the state twice), and another process
could then delete the write-ahead log under it, losing what it writes. So a file is checked
only when this process has no connection to it."""


def _count_open(key: str, change: int) -> None:
    with _OPEN_LOCK:
        count = _OPEN.get(key, 0) + change
        if count > 0:
            _OPEN[key] = count
        else:
            _OPEN.pop(key, None)


def open_private_db(
    path: Path,
    schema: str,
    *,
    tables: Iterable[str],
    advice: str,
    any_thread: bool = False,
) -> StateConnection:
    """Open the state database at ``path`` in WAL mode, creating it with ``schema`` (0600: it
    may hold private keys) when there is no file; a file that is there is checked first
    (``check_database``: it must have ``tables``), and refused with ``advice`` when it fails.

    Autocommit mode: every change goes through ``transaction`` so it is all or nothing.
    ``any_thread`` allows one owner to use the connection from successive worker threads (never
    from two at once); concurrent users open their own connections, which WAL serialises."""
    key = str(path.resolve())
    problem = directory_problem(path.parent)
    if problem is not None:  # SQLite would say "unable to open database file", or "damaged"
        raise StateDatabaseError(
            path,
            f"cannot be opened for writing (its -wal and -shm files are made beside it): "
            f"{problem[0]}",
            problem[1],
        )
    with _OPEN_LOCK:  # checked and connected as one step: no other open of ours in between
        if not path.exists():
            _create(path, schema)
        elif key not in _OPEN:  # checked when first opened here; see _OPEN
            check_database(path, tables, advice)
        db = sqlite3.connect(
            path,
            timeout=10,
            isolation_level=None,
            check_same_thread=not any_thread,
            factory=StateConnection,
        )
        _OPEN[key] = _OPEN.get(key, 0) + 1
    assert isinstance(db, StateConnection)
    db.path = path
    db._release = weakref.finalize(db, _count_open, key, -1)
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        # A first read maps the WAL index (-shm) now: on a full disk, later reads then work.
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        db.close()
        raise write_error(path, exc) from exc
    return db


def directory_problem(directory: Path) -> tuple[str, str] | None:
    """Why this process cannot make files in ``directory`` (the state database's folder), and
    the fix; None when it can. A read-only file system (EROFS: a read-only mount, or systemd's
    ProtectSystem=strict outside ReadWritePaths= and StateDirectory=) is told apart from
    permissions, for which a chown is the fix and for EROFS is not."""
    if not directory.is_dir():
        return None  # the configuration's checks say so, naming the setting
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    try:  # what the kernel says to a real attempt (access() gives no reason)
        fd, name = tempfile.mkstemp(prefix=".krs-probe.", dir=directory)
    except OSError as exc:
        reason = exc.errno
    else:
        os.close(fd)
        os.unlink(name)
        return None
    if reason == errno.EROFS:
        return (
            f"its directory {directory} is on a read-only file system (EROFS), for this process "
            "at least: a read-only mount, or a systemd unit with ProtectSystem=strict, which "
            "leaves only ReadWritePaths= and StateDirectory= writable",
            "keep the state where the unit makes it writable (krs: state: /var/lib/krs/krs.db "
            "in krs.yaml, made by StateDirectory=krs; krs-kdc: --state /var/lib/krs-kdc), or "
            f"add {directory} to ReadWritePaths= in the unit; chown does not help",
        )
    if reason == errno.EPERM:
        return (
            f"its directory {directory} does not take new files (EPERM: the immutable "
            "attribute, or a security module)",
            f"lsattr -d {directory} (chattr -i {directory} when it shows i), or check the "
            "AppArmor/SELinux policy",
        )
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    info = directory.stat()
    mode = stat.S_IMODE(info.st_mode)
    return (
        f"its directory {directory} (owner uid {info.st_uid}, mode {mode:04o}) is not writable "
        f"by {user}",
        f"chown {user} {directory} (and the files in it), or run krs as the directory's owner",
    )


def _create(path: Path, schema: str) -> None:
    """A new database with ``schema``, made beside ``path`` and linked into place whole (a
    database that appeared there meanwhile, made by another process, is kept)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
    os.close(fd)
    tmp = Path(name)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(schema)  # rollback journal: all in the file once it returns
        finally:
            db.close()
        try:
            os.link(tmp, path)  # never over a database another process made meanwhile
        except FileExistsError:
            return
        except OSError:  # a file system without hard links
            if path.exists():
                return
            os.rename(tmp, path)
        sync_directory(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise write_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}-journal").unlink(missing_ok=True)


def check_database(path: Path, tables: Iterable[str], advice: str) -> int:
    """Refuse (``StateDatabaseError``, ending with ``advice``) a database at ``path`` that is
    empty, not SQLite, has lost committed changes from its write-ahead log, fails ``PRAGMA
    quick_check`` or lacks one of ``tables``; its tables' count when it passes. Reads only."""

    def refuse(problem: str) -> StateDatabaseError:
        return StateDatabaseError(path, problem, advice)

    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from exc
    if not header:
        raise refuse("is empty (0 bytes), not a database (a new one is never left empty)")
    if header != SQLITE_HEADER:
        raise refuse(f"is not an SQLite database (it begins with {header[:8]!r})")
    lost = lost_wal_frames(path)
    if lost:
        raise refuse(
            f"has a damaged write-ahead log ({path.name}-wal): {lost} committed page "
            "change(s) after the damage would be lost without a word"
        )
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise refuse(f"does not open ({exc})") from exc
    try:
        found = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        names = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise refuse(f"is damaged ({exc})") from exc
    finally:
        db.close()
    if found != ["ok"]:
        lines = [x for row in found for x in row.splitlines() if x and not x.startswith("***")]
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        raise refuse(f"is damaged (quick_check: {shown})")
    missing = sorted(set(tables) - names)
    if missing:
        raise refuse(f"is not a state database of this program (no table {', '.join(missing)})")
    return len(names)


def write_error(path: Path, exc: BaseException) -> StateWriteError:
    """``exc`` (an sqlite3 or OS error writing ``path``) as one sentence an operator can act on."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _FULL or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        why = "disk full"
    elif code == _IOERR:
        why = "disk I/O error (a full disk, a spent quota or a failing disk)"
    elif code in (_CORRUPT, _NOTADB):
        why = "the database is damaged (docs/operations.md, 'A damaged state database')"
    elif code in (_BUSY, _LOCKED):
        why = "locked by another process for too long"
    elif code in (_READONLY, _PERM, _CANTOPEN):
        why = "not writable"
    else:
        why = "cannot write"
    return StateWriteError(f"state database {path}: {why} ({exc}); nothing was recorded")


def is_storage_error(exc: BaseException) -> bool:
    """An sqlite3 error that the file or the disk caused (not the SQL)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return isinstance(exc, sqlite3.Error) and code in _STORAGE


@contextmanager
def transaction(db: sqlite3.Connection, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """One atomic change: everything inside commits together or not at all. A change the file
    or the disk refuses is ``StateWriteError`` (rolled back: nothing of it is recorded).

    ``durable=False``, for bookkeeping whose loss costs only a message sent again (a NOTIFY's
    time, a report's attempt): committed without waiting for the disk (``PRAGMA synchronous=
    NORMAL`` for this commit: in WAL mode, atomic and kept if the process dies; a power cut may
    take it back, never a change committed before it, and the next durable commit syncs it too).
    Each fsync is about 1.6 ms during which the KDC's one event loop answers nobody
    (docs/benchmarks.md, "Fleet")."""
    path = getattr(db, "path", Path("state database"))
    if db.in_transaction:  # inside another change: a savepoint, committed with the outer one
        yield from _nested(db, path)
        return
    if not durable:
        yield from _unsynced(db, path)
        return
    yield from _outer(db, path)


def _outer(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if is_storage_error(exc):
            raise write_error(path, exc) from exc
        raise
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if is_storage_error(exc):
            raise write_error(path, exc) from exc
        raise


def _unsynced(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """``transaction(durable=False)``: the connection's ``synchronous`` set back after."""
    was = int(db.execute("PRAGMA synchronous").fetchone()[0])
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        yield from _outer(db, path)
    finally:
        db.execute(f"PRAGMA synchronous={was}")


def _nested(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    db.execute("SAVEPOINT nested")
    try:
        yield db
        db.execute("RELEASE nested")
    except BaseException as exc:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK TO nested")
                db.execute("RELEASE nested")
        if is_storage_error(exc):
            raise write_error(path, exc) from exc
        raise


# --- the write-ahead log (https://www.sqlite.org/fileformat2.html#walformat) ---------------------

_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER, _FRAME_HEADER = 32, 24
_SHM_HEADER = 48  # one copy of the wal-index header; the second follows it
_SHM_DMS_BYTE = 128  # the lock byte every connection holds shared while it has the database


def lost_wal_frames(path: Path) -> int:
    """How many frames the wal-index (``-shm``) says were committed that the write-ahead log
    (``-wal``) no longer holds intact: 0 when nothing would be lost, or when it cannot tell.

    Only meaningful when no other process has the database open: the first connection then
    rebuilds the index from the log, and stops at the first frame whose checksum fails,
    dropping every later commit (after a kill, the index still says how far the log went).
    Read in that order (index, then log), a log being appended to meanwhile only grows."""
    shm, wal = Path(f"{path}-shm"), Path(f"{path}-wal")
    try:
        with shm.open("rb") as handle:
            if _in_use(handle.fileno()):
                return 0
            index = handle.read(2 * _SHM_HEADER)
        with wal.open("rb") as handle:
            log = handle.read()
    except OSError:
        return 0
    committed = _index_frames(index, log[16:24] if len(log) >= _WAL_HEADER else b"")
    if not committed:
        return 0
    return max(0, committed - _valid_frames(log))


def _in_use(fd: int) -> bool:
    """Whether another process holds the database open (its shared lock on the DMS byte)."""
    probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, _SHM_DMS_BYTE, 1, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except OSError:
        return True  # cannot tell: do not second-guess SQLite
    return bool(struct.unpack("hhqqi", answer)[0] != fcntl.F_UNLCK)


def _index_frames(index: bytes, salts: bytes) -> int:
    """The last committed frame (mxFrame) of a valid wal-index header for a log with ``salts``;
    0 when the header is not valid, is for another log, or says nothing was written."""
    if len(index) < 2 * _SHM_HEADER or index[:_SHM_HEADER] != index[_SHM_HEADER:]:
        return 0
    order = "<" if sys.byteorder == "little" else ">"
    initialised = index[12]
    checksum = struct.unpack(f"{order}2I", index[40:48])
    if not initialised or _checksum(index[:40], order, 0, 0) != checksum:
        return 0
    if index[32:40] != salts:
        return 0
    return int(struct.unpack(f"{order}I", index[16:20])[0])


def _valid_frames(log: bytes) -> int:
    """The last committed frame SQLite's recovery would keep of the log ``log``."""
    if len(log) < _WAL_HEADER:
        return 0
    magic, _, page_size = struct.unpack(">3I", log[:12])
    if magic not in _WAL_MAGIC:
        return 0
    order = ">" if magic & 1 else "<"
    s0, s1 = _checksum(log[:24], order, 0, 0)
    if (s0, s1) != struct.unpack(">2I", log[24:32]):
        return 0
    salts, size = log[16:24], _FRAME_HEADER + page_size
    committed = frame = 0
    offset = _WAL_HEADER
    while offset + size <= len(log):
        head = log[offset : offset + _FRAME_HEADER]
        if head[8:16] != salts:
            break
        s0, s1 = _checksum(head[:8], order, s0, s1)
        s0, s1 = _checksum(log[offset + _FRAME_HEADER : offset + size], order, s0, s1)
        if (s0, s1) != struct.unpack(">2I", head[16:24]):
            break
        frame += 1
        if struct.unpack(">I", head[4:8])[0]:  # the database size: set on a commit frame
            committed = frame
        offset += size
    return committed


def _checksum(data: bytes, order: str, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from (s0, s1)."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


class FailureLog:
    """One error line per kind of failure, then at most one per ``interval`` seconds saying how
    many more there were, and one line when it works again: a full disk must not fill the log
    with the same error (or a traceback) for every query."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        # kind -> (its latest message, when), until it recovers
        self._failing: dict[str, tuple[str, float]] = {}

    def failing(self, within: float = 300.0) -> dict[str, str]:
        """Each kind that failed in the last ``within`` seconds and has not recovered since,
        with its latest message (a kind nothing tried again, such as a NOTIFY no longer due,
        stops counting after that)."""
        now = time.monotonic()
        return {k: m for k, (m, at) in list(self._failing.items()) if now - at <= within}

    def error(self, kind: str, message: str) -> None:
        now = time.monotonic()
        self._failing[kind] = (message, now)
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        more = f" ({held} more like it since the last report)" if held else ""
        self.logger.error("%s%s", message, more)

    def recovered(self, kind: str, message: str) -> None:
        self._failing.pop(kind, None)
        if self._last.pop(kind, None) is not None:
            self._held.pop(kind, None)
            self.logger.info("%s", message)
