"""Without an inotify instance (the per-user limit reached, issue 21 item 10) every inotify user
of the KRS keeps working, and the fallback is said once per process."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import dns.name
import pytest

from krs_plugin import inotify
from krs_plugin.adapters import folderindex


def refuse(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EMFILE, "Too many open files")


@pytest.fixture
def no_inotify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inotify, "INotify", refuse)
    monkeypatch.setattr(inotify, "_warned", False)


def test_the_key_folder_index_scans_and_the_limit_is_named_once(
    no_inotify: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zone = dns.name.from_text("example.com.")
    index = folderindex.FolderIndex(tmp_path)
    caplog.set_level(logging.WARNING)
    assert index.names(zone) == []
    (tmp_path / "Kexample.com.+013+12345.key").write_text("")
    assert index.names(zone) == ["Kexample.com.+013+12345.key"]  # seen without an event
    assert inotify.open_inotify("another user falls back") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "fs.inotify.max_user_instances" in warnings[0] and "sysctl -w" in warnings[0]
    assert f"the key folder {tmp_path} is read at each lookup instead" in warnings[0]
