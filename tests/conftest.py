"""Fixtures shared by more than one tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krs_lab.bind9 import Bind9Lab
from tests import xdist_groups
from tests.adapters.servers import bind9_root


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Spread the tests over the workers, each group of tests/xdist_groups.py on one."""
    return xdist_groups.scheduler(config, log)


@pytest.fixture(params=["bind9.18", "bind9.20"])
def bind9_named(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bind9Lab]:
    """named of each generation serving example.com. (9.18 with auto-dnssec, 9.20 with a
    manual-mode policy), from the host's packages or the other Debian release's root."""
    policy = request.param == "bind9.20"
    lab = Bind9Lab(tmp_path / "named", ["example.com."], sysroot=bind9_root(policy=policy))
    lab.start()
    assert lab.uses_policy == policy
    yield lab
    lab.stop()
