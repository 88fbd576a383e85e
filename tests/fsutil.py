"""File-system helpers shared by test tiers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """A directory this process cannot create files in, even as root (immutable flag)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(directory)], check=False).returncode != 0:
        pytest.skip("running as root and chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


PAGE = 4096


class FullDisk:
    """A small tmpfs of ``size`` bytes mounted at ``mountpoint``, which ``fill`` fills up to
    ``free_pages`` free pages (the filler file goes in ``mountpoint`` itself) and ``free``
    empties again."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / ".filler"

    def free_pages(self) -> int:
        return os.statvfs(self.mountpoint).f_bavail

    def fill(self, free_pages: int = 0) -> None:
        with self.filler.open("ab") as handle:
            while self.free_pages() > free_pages:
                handle.write(b"\0" * PAGE)
                handle.flush()
                os.fsync(handle.fileno())
        assert self.free_pages() == free_pages, self.free_pages()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextmanager
def full_disk(mountpoint: Path, size: int = 256 * 1024) -> Iterator[FullDisk]:
    """A tmpfs of ``size`` bytes at ``mountpoint`` (created if needed), unmounted at the end
    whatever happens; skips the test where mounting needs privileges this process lacks."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield FullDisk(mountpoint)
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)  # still busy: detach
