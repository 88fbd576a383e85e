"""Fixtures of the adapter harness: ``lab`` is a running server of each kind in LABS."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.servers import LABS, ServerLab


@pytest.fixture(params=sorted(LABS))
def lab(request: pytest.FixtureRequest) -> Iterator[ServerLab]:
    # Not tmp_path: servers that drop privileges (named -u bind) must be able to reach their
    # directory, and pytest's base directory is 0700 root.
    root = Path(tempfile.mkdtemp(prefix=f"krs-{request.param}-"))
    os.chmod(root, 0o755)
    server = LABS[request.param](root / "server")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
