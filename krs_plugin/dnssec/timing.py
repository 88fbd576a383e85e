"""Key timing metadata (created, publish, activate, inactive, delete; and for BIND, when a KSK's
CDS/CDNSKEY are published and withdrawn) and BIND's text forms of it.

BIND decides from these times when to publish a DNSKEY and sign with it, so a wrong time is a
key published too early or never. They are kept as Unix seconds (UTC) and written exactly as
``dnssec-keygen`` writes them: ``YYYYMMDDHHMMSS`` in ``.private`` files, and the same followed by
a ``ctime``-style date in the ``.key`` file's comments.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from krs_plugin.errors import KeyFileError

# Our attribute -> BIND's field name, in the order dnssec-keygen writes them.
BIND_FIELDS = {
    "created": "Created",
    "publish": "Publish",
    "activate": "Activate",
    "inactive": "Inactive",
    "delete": "Delete",
    "sync_publish": "SyncPublish",
    "sync_delete": "SyncDelete",
}
# Other BIND v1.3 time fields: read and checked, not kept.
OTHER_BIND_TIME_FIELDS = (
    "Revoke",
    "DSPublish",
    "DSDelete",
    "PublishCDS",
    "DeleteCDS",
    "DNSKEYChange",
    "ZRRSIGChange",
    "KRRSIGChange",
    "DSChange",
    "DSRemoved",
)
# 9999-12-31 23:59:59 UTC, the last time YYYYMMDDHHMMSS can hold.
MAX_TIME = 253_402_300_799
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class KeyTiming:
    """When a key was created and is published, activated, retired and deleted (Unix seconds).

    ``sync_publish`` and ``sync_delete`` are BIND's SyncPublish and SyncDelete: from when until
    when named serves a KSK's CDS and CDNSKEY. Only the BIND adapter sets them (from the
    payload's ``cds``, docs/servers/bind9.md); every other user leaves them None, so a key's
    timing from a KDC compares equal to what a server without them reads back."""

    created: int | None = None
    publish: int | None = None
    activate: int | None = None
    inactive: int | None = None
    delete: int | None = None
    sync_publish: int | None = None
    sync_delete: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIME:
                raise KeyFileError(
                    f"key timing: {f.name} {value!r} is not Unix seconds in 0..{MAX_TIME}"
                )

    def items(self) -> list[tuple[str, int]]:
        """(BIND field name, value) for every time that is set, in BIND's order."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out.append((BIND_FIELDS[f.name], value))
        return out


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def format_bind_time(seconds: int) -> str:
    """``YYYYMMDDHHMMSS`` in UTC, as BIND writes key times."""
    return _utc(seconds).strftime("%Y%m%d%H%M%S")


def human_time(seconds: int) -> str:
    """The parenthesised date in ``.key`` comments, C ``ctime`` style: ``Tue Jan  1 00:00:00 2030``.

    Built by hand rather than with ``%a``/``%b``/``%e`` so neither the locale nor the platform's
    ``strftime`` can change it.
    """
    t = _utc(seconds)
    return (
        f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.year}"
    )


def parse_bind_time(text: str, where: str) -> int:
    """Parse ``YYYYMMDDHHMMSS`` (UTC); ``KeyFileError`` naming ``where`` when malformed."""
    value = text.strip()
    if len(value) != 14 or not (value.isascii() and value.isdigit()):
        raise KeyFileError(f"{where}: time {text[:40]!r} is not YYYYMMDDHHMMSS")
    try:
        parsed = dt.datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise KeyFileError(f"{where}: time {value!r} is not a valid date and time") from None
    seconds = int(parsed.timestamp())
    if seconds < 0:
        raise KeyFileError(f"{where}: time {value!r} is before 1970")
    return seconds
