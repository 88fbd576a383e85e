"""Each pytest-xdist worker draws lab ports from its own share of the range, so two workers never
hand out one port (docs/development.md, "Parallel tests")."""

from __future__ import annotations

import pytest

from krs_lab import ports


def shares(monkeypatch: pytest.MonkeyPatch, count: int) -> list[set[int]]:
    """The ports each of ``count`` workers is handed, 200 each, from a fresh process state."""
    drawn: list[set[int]] = []
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
        monkeypatch.setattr(ports, "_handed_out", set())  # as another process would start
        drawn.append({ports.free_port() for _ in range(200)})
    return drawn


def test_workers_draw_ports_no_other_worker_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = shares(monkeypatch, 4)
    assert all(len(mine) == 200 for mine in drawn)
    for index, mine in enumerate(drawn):
        others = set().union(*(theirs for at, theirs in enumerate(drawn) if at != index))
        assert not mine & others, sorted(mine & others)[:5]


def test_a_worker_keeps_to_its_share_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    highest = ports._ephemeral_low() - 1
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    low, high = ports._worker_share(ports._LOWEST, highest)
    assert (low, high) == (ports._LOWEST, highest)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    first, last = ports._worker_share(ports._LOWEST, highest)
    assert low <= first < last <= high < ports._ephemeral_low()
    monkeypatch.setattr(ports, "_handed_out", set())
    assert all(first <= ports.free_port() <= last for _ in range(100))


def test_outside_xdist_the_whole_range_is_drawn_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert ports._worker_share(20000, 32767) == (20000, 32767)
