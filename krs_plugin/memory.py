"""Give memory back to the system after a big distribution (glibc only).

glibc serves large allocations with mmap, which returns them to the system when freed, but after
the first such free it raises its threshold (up to 32 MiB) and serves later ones from the heap,
where freed megabytes stay part of the process. A KRS that once received keys for 10,000 zones
would then keep their transport, ciphertext and cleartext copies for months. Fixing the
threshold at glibc's default start value keeps the peak of ``krs run`` near what it really holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; False (and nothing changed) on other C libraries."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; large buffers may stay in the heap")
    return ok


_libc: ctypes.CDLL | bool | None = False  # False: not looked up yet


def give_back() -> None:
    """Return the free memory of glibc's heaps to the system now (``malloc_trim``): the freed
    chunks of a distribution lie in the middle of the heap, where glibc leaves them resident
    until asked. Nothing on other C libraries."""
    global _libc
    if _libc is False:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else None
            if _libc is not None and not hasattr(_libc, "malloc_trim"):
                _libc = None
        except OSError:
            _libc = None
    if isinstance(_libc, ctypes.CDLL):
        _libc.malloc_trim(0)
