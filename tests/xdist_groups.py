"""Tests that run on one pytest-xdist worker, one after another (docs/development.md, "Parallel
tests"), while the rest of the suite is spread over all workers.

pytest-xdist's own way, ``--dist loadgroup`` with ``xdist_group`` marks, tags each grouped test by
renaming its node id, which pytest 9 no longer lets a plugin do: the marks are silently ignored
and the group's tests are spread like any others. The controller that hands tests to the workers
sees only node ids, so the groups are named here by path, and ``scheduler`` makes xdist's
scope scheduler treat each group as one unit of work.
"""

from __future__ import annotations

from typing import Any

GROUPS: dict[str, str] = {
    # The container tier: its images, KDC and pairs are package-scoped fixtures of one process,
    # built once per Debian base under that process's prefix, and its last check (no container,
    # volume or image of the run left) counts every anonymous volume made since it started.
    "tests/containers/": "containers",
}


def group_of(nodeid: str) -> str | None:
    """The group a test belongs to, or None when it may run beside any other."""
    for prefix, name in GROUPS.items():
        if nodeid.startswith(prefix):
            return name
    return None


def scheduler(config: Any, log: Any) -> Any:
    """xdist's scheduler for the default distribution (load, or loadgroup asked by name) with the
    groups above; None leaves any other --dist mode to xdist."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return GroupScheduling(config, log)
