"""Which backend key files a node holds while it moves to another backend (``krs rekey
--backend``; docs/enrollment.md section 7, "Moving a node to another backend").

krs.yaml is never written (the shipped unit makes it read-only, as for every rotation): the new
backend's key is made under a fixed name beside the current one, the path krs.yaml gives for that
backend when it names one, else ``node.<backend>.privatekey`` (the name ``krs enroll`` gives it).
The files alone say where a move stands, so ``load_config`` resolves them here:

- ``<file>``: a backend key in use (the current one, whose distributions are opened with it);
- ``<file>.previous``, and ``<file>`` when it is the same inode and has no ``.next``: the old
  backend's key, kept until a distribution sealed to the new backend opened (``retire``). It is
  never in the loaded config (a reload must not name a file that ``retire`` unlinks): a
  distribution still sealed to it is opened with it read from disk then
  (``receiver/rekey.alternate_keys``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

BACKENDS = ("hpke", "jose", "hpke-pq")  # the order krs rekey picks a current backend in
NEXT = ".next"
PREVIOUS = ".previous"


def suffixed(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def unsuffixed(path: Path) -> Path:
    """``<file>`` of ``<file>.previous`` (any other path unchanged)."""
    name = path.name
    return path.with_name(name[: -len(PREVIOUS)]) if name.endswith(PREVIOUS) else path


def default_name(backend: str) -> str:
    return f"node.{backend}.privatekey"


def backend_paths(named: Mapping[str, Path | None]) -> dict[str, Path]:
    """Every backend's key path: krs.yaml's, else the default name beside krs.yaml's keys."""
    given = [unsuffixed(p) for p in named.values() if p is not None]
    if not given:
        return {}
    directory = given[0].parent
    return {
        b: unsuffixed(named[b]) if named.get(b) is not None else directory / default_name(b)  # type: ignore[arg-type]
        for b in BACKENDS
    }


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_old(path: Path) -> bool:
    """``path`` (un-suffixed) holds the old key of a move: kept as ``.previous`` only, or the
    same file as its ``.previous`` with no ``.next`` (a switch stopped half way)."""
    previous = suffixed(path, PREVIOUS)
    if not path.exists():
        return previous.exists()
    return _same(path, previous) and not suffixed(path, NEXT).exists()


def resolve(named: Mapping[str, Path | None]) -> dict[str, Path | None]:
    """krs.yaml's backend key paths (``hpke``, ``jose``, ``hpke-pq``) with a move applied: the
    new backend's file added, the old backend's entry None (its key is read from disk when a
    distribution needs it).
    Without any move (every key krs.yaml names in use, nothing old) the paths are krs.yaml's: a
    stray ``node.<backend>.privatekey`` beside them is not taken, and a missing file is reported
    by ``load_config`` as before."""
    paths = backend_paths(named)
    if not paths:
        return dict(named)
    current = {b: p for b, p in paths.items() if p.exists() and not is_old(p)}
    old = {b: suffixed(p, PREVIOUS) for b, p in paths.items() if is_old(p)}
    if not current or ({b for b in named if named[b] is not None} <= set(current) and not old):
        return {b: named.get(b) for b in BACKENDS}
    return {b: current.get(b) for b in BACKENDS}


def current_backend(resolved: Mapping[str, Path | None]) -> tuple[str, Path] | None:
    """The backend distributions are sealed to now: the first resolved key not kept as old (or,
    in a switch stopped before the new key was in place, the old one, still the only one)."""
    held = [(b, p) for b in BACKENDS if (p := resolved.get(b)) is not None]
    for backend, path in held:
        if not path.name.endswith(PREVIOUS) and not is_old(path):
            return backend, path
    return held[0] if held else None


def old_files(resolved: Mapping[str, Path | None]) -> list[Path]:
    """The old backend key files of a move (``<file>`` when it is the old key, and its
    ``.previous``): what ``retire`` unlinks once the new backend's key opened a distribution."""
    found = []
    for path in backend_paths(resolved).values():
        if is_old(path):
            found += [p for p in (path, suffixed(path, PREVIOUS)) if p.exists()]
    return found


def retire(resolved: Mapping[str, Path | None]) -> None:
    for path in old_files(resolved):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = [
    "BACKENDS",
    "backend_paths",
    "current_backend",
    "default_name",
    "is_old",
    "old_files",
    "resolve",
    "retire",
    "suffixed",
    "unsuffixed",
]
