"""docs/quickstart.md stays runnable: every ``krs`` and ``kdc`` (``krs-kdc``) command line in it
is one the parsers take, and every file it copies from the checkout exists. It was followed by
hand on a fresh Debian 12 (issue 21); this keeps later parser changes from breaking it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from krs_plugin.cli import build_parser as krs_parser
from krs_plugin.kdc.cli import build_parser as kdc_parser

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"


def _shell_lines() -> list[str]:
    text = QUICKSTART.read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _commands(program: str) -> list[list[str]]:
    out = []
    for line in _shell_lines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part.replace("$OLD", "55764").split(">", 1)[0])
            if words and words[0] == program:
                out.append(words[1:])
    return out


@pytest.mark.parametrize(
    ("program", "parser"), [("kdc", kdc_parser), ("krs", krs_parser)], ids=["krs-kdc", "krs"]
)
def test_every_command_line_in_the_quickstart_parses(program: str, parser: object) -> None:
    commands = _commands(program)
    assert len(commands) >= (15 if program == "kdc" else 4), commands
    build = parser  # type: ignore[assignment]
    for argv in commands:
        try:
            build().parse_args(argv)  # type: ignore[operator]
        except SystemExit as exc:
            pytest.fail(f"docs/quickstart.md: `{program} {' '.join(argv)}` is refused ({exc})")


def test_the_files_it_copies_are_in_the_checkout() -> None:
    named = {
        word
        for line in _shell_lines()
        for word in shlex.split(line.split(">", 1)[0])
        if word.startswith("integrations/")
    }
    assert named, "the quickstart copies nothing from integrations/?"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing
