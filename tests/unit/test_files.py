"""krs_plugin/files.py: atomic writes that survive a power loss."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from krs_plugin import files
from krs_plugin.files import atomic_write


def test_the_directory_is_synced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an fsync of the directory, a power loss after the rename may bring back the old
    file (or none): the rename is only durable once the directory is synced."""
    target = tmp_path / "Kexample.com.+013+12345.private"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append(("directory" if is_dir else "file", target.exists()))
        if is_dir:
            assert os.path.samestat(os.fstat(fd), os.stat(tmp_path))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    atomic_write(target, b"secret")
    assert target.read_bytes() == b"secret"
    # the data first (before the rename), then the directory (after it)
    assert synced == [("file", False), ("directory", True)]


def test_a_directory_that_cannot_be_synced_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(files.KeyFileError, match="directory cannot be synced"):
        atomic_write(tmp_path / "k.key", b"public")
