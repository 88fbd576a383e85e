"""Key timing metadata (publish, activate, inactive, delete) and BIND's text form of it."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, fields

from krs_plugin.errors import KeyFileError

# BIND's field names in .private files, in the order dnssec-keygen writes them.
BIND_FIELDS = {
    "created": "Created",
    "publish": "Publish",
    "activate": "Activate",
    "inactive": "Inactive",
    "delete": "Delete",
}


@dataclass(frozen=True)
class KeyTiming:
    """When a key is created, published, activated, retired (inactive) and deleted (Unix secs)."""

    created: int | None = None
    publish: int | None = None
    activate: int | None = None
    inactive: int | None = None
    delete: int | None = None

    def items(self) -> list[tuple[str, int]]:
        """(BIND field name, value) for every time that is set, in BIND's order."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out.append((BIND_FIELDS[f.name], value))
        return out


def format_bind_time(seconds: int) -> str:
    """``YYYYMMDDHHMMSS`` in UTC, as BIND writes key times."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds))


def parse_bind_time(text: str, where: str) -> int:
    """Parse ``YYYYMMDDHHMMSS`` (UTC); ``KeyFileError`` naming ``where`` when malformed."""
    value = text.strip()
    if len(value) != 14 or not value.isdigit():
        raise KeyFileError(f"{where}: time {text!r} is not YYYYMMDDHHMMSS")
    try:
        parsed = time.strptime(value, "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise KeyFileError(f"{where}: time {text!r} is not a valid date: {exc}") from exc
    return calendar.timegm(parsed)


def human_time(seconds: int) -> str:
    """The parenthesised form in .key comments: ``Sun Nov 22 23:27:26 2026``."""
    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(seconds))
