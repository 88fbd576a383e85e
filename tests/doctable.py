"""docs/operations.md's error table ("Errors and what to do"), read as the operator reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
SECTION = "## Errors and what to do"


@dataclass(frozen=True)
class Row:
    stage: str
    examples: tuple[str, ...]
    """The example messages of the row, each in backticks (alternatives are split by " / ")."""

    @property
    def key(self) -> str:
        return f"{self.stage}: {self.examples[0]}"


def error_table(path: Path = OPERATIONS) -> list[Row]:
    """Every row of the table, in order."""
    text = path.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| stage |"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        rows.append(Row(cells[0], tuple(re.findall(r"`([^`]+)`", cells[1]))))
    return rows


def example_pattern(example: str) -> re.Pattern[str]:
    """What a message must contain to be that example: ``...`` stands for any text, a number for
    any number, a lone ``X`` for any name."""
    pieces = re.split(r"(\s*\.\.\.\s*|\d+|\bX\b)", example)
    pattern = "".join(
        ".*"
        if piece.strip() == "..."
        else r"\d+"
        if piece.isdigit()
        else r"\S+"
        if piece == "X"
        else re.escape(piece)
        for piece in pieces
    )
    return re.compile(pattern)
