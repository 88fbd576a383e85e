"""The console scripts exist, print help, and use the exit codes of docs/operations.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krs_plugin import cli
from krs_plugin.kdc import cli as kdc_cli

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["krs", "krs-kdc"])
def test_console_script_prints_help(script: str) -> None:
    result = subprocess.run(
        [str(BIN / script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout


def test_krs_without_command_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_krs_rejects_unknown_command_with_usage_exit_code() -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["no-such-command"])
    assert raised.value.code == 2


def test_krs_kdc_help_says_what_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert kdc_cli.main([]) == 0
    assert "Key Distribution Center" in capsys.readouterr().out
