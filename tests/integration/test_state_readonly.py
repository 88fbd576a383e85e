"""A state directory that krs cannot write (issue 21, item 4): /etc/krs under the shipped unit's
ProtectSystem=strict is a read-only file system for krs, which a read-only bind mount makes for
real here. Every command says so in one line naming krs.db, what it was doing and the fix (not
a chown), and never a traceback or "damaged"."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import BIN, Deployment

pytestmark = pytest.mark.integration


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only bind mount of itself (root only)."""
    directory = tmp_path / "etc-krs"
    directory.mkdir()
    if subprocess.run(["mount", "--bind", str(directory), str(directory)]).returncode != 0:
        pytest.skip("mount --bind needs root")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory)], check=True, capture_output=True
        )
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def krs(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "krs"), *args, "-c", str(deployment.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("database", ["none yet", "enrolled there"])
def test_every_command_says_the_state_directory_is_read_only_and_how_to_fix_it(
    tmp_path: Path, read_only: Path, database: str
) -> None:
    deployment = Deployment(tmp_path / "d")
    try:
        state = read_only / "krs.db"
        if database == "enrolled there":  # made while writable, as krs enroll --dir /etc/krs did
            subprocess.run(["umount", str(read_only)], check=True)
            deployment.write_config(state=str(state))
            assert krs(deployment, "status").returncode == 0 and state.exists()
            subprocess.run(["mount", "--bind", str(read_only), str(read_only)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        else:
            deployment.write_config(state=str(state))
        for command in (["run"], ["status"], ["keys"], ["fetch", "00000001"]):
            result = krs(deployment, *command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr and "damaged" not in result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(
                f"krs: configuration error: state database {state} cannot be opened for writing"
            ), lines[0]
            assert f"its directory {read_only} is on a read-only file system (EROFS)" in lines[0]
            assert "ReadWritePaths=" in lines[0] and "chown does not help" in lines[0]
        doctor = krs(deployment, "doctor", "--json")
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        (check,) = [c for c in json.loads(doctor.stdout) if c["name"] == "state"]
        assert check["status"] == "error"
        assert "read-only file system (EROFS)" in check["message"]
        assert "ReadWritePaths=" in check["fix"] and "chown does not help" in check["fix"]
    finally:
        deployment.close()
