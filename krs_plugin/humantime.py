"""Durations and times as people write and read them, for both commands and krs.yaml.

``parse_duration`` takes what an operator types: plain seconds (``300``, ``0.5``), one unit
(``90s``, ``15m``, ``2h``, ``1d``, ``1w``) or several, largest first (``1h30m``, ``1d12h``).
``format_duration`` writes seconds back that way, ``format_time`` a Unix time as UTC with how far
it is from now: ``2026-12-05 15:20:00Z (in 1h)``. JSON output keeps Unix seconds (stable for
scripts); only the human lines use these.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_SECONDS = dict(UNITS)
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
EXAMPLES = "300, 90s, 15m, 2h, 1d, 1w or 1h30m"


def parse_duration(value: str | int | float, *, what: str = "duration") -> float:
    """Seconds in ``value``: a number, or units largest first, each at most once (``1h30m``).

    Raises ValueError naming ``what`` and the accepted forms for anything else (empty, negative,
    unknown unit, a unit twice or out of order)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration such as {EXAMPLES}, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what}: must not be negative, got {value!r}")
        return float(value)
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0 or seconds != seconds or seconds == float("inf"):
            raise ValueError(f"{what}: must be 0 or more seconds, got {value!r}")
        return seconds
    total = 0.0
    position = 0
    previous = float("inf")
    for match in _PART.finditer(text):
        unit = _SECONDS[match.group(2)]
        if match.start() != position or unit >= previous:
            break
        total += float(match.group(1)) * unit
        previous = unit
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{what}: expected a duration such as {EXAMPLES}, got {value!r}")
    return total


def duration_argument(
    *, minimum: float = 0, maximum: float | None = None, whole: bool = False, why: str = ""
) -> Callable[[str], float]:
    """An argparse ``type=`` for a duration option; ``whole`` rounds to whole seconds; ``why``
    follows the message when ``maximum`` is passed."""

    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as {EXAMPLES}, got {text!r}"
            ) from exc
        if seconds < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be at least {format_duration(minimum)}"
            )
        if maximum is not None and seconds > maximum:
            limit = format_duration(maximum)
            if maximum % 604800 == 0:
                limit = f"{int(maximum // 86400)}d"  # 7d reads better than 1w
            raise argparse.ArgumentTypeError(f"{text!r}: at most {limit}{why}")
        return round(seconds) if whole else seconds

    parse.__name__ = "duration"  # argparse's "invalid duration value" names it
    return parse


def format_duration(seconds: float, *, parts: int = 2) -> str:
    """``5400`` -> ``1h30m``; the ``parts`` largest units (rounded down), ``0s`` for zero, and
    fractions below ten seconds as ``0.5s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds, parts=parts)
    if 0 < seconds < 10 and seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    out: list[str] = []
    for unit, size in UNITS:
        if rest >= size and len(out) < parts:
            out.append(f"{rest // size}{unit}")
            rest %= size
        elif out:
            parts = len(out)  # no gaps: 1d0h5m reads as 1d
    return "".join(out) or "0s"


def format_time(stamp: float | None, *, now: float | None = None) -> str:
    """``2026-12-05 15:20:00Z (in 1h)``; ``-`` for None."""
    if stamp is None:
        return "-"
    now = time.time() if now is None else now
    text = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(stamp))
    return f"{text} ({relative(stamp, now=now)})"


def relative(stamp: float, *, now: float | None = None) -> str:
    """``in 1h``, ``2h ago`` or ``now`` (within a second)."""
    now = time.time() if now is None else now
    delta = stamp - now
    if abs(delta) < 1:
        return "now"
    # To the unit below the largest shown: a command run a second after 'in 1h' reads 'in 1h',
    # not 'in 59m59s'.
    step = 3600 if abs(delta) >= 86400 - 1800 else 60 if abs(delta) >= 3600 - 30 else 1
    delta = round(delta / step) * step
    return f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"


def parse_past_time(value: str, *, now: float | None = None) -> float:
    """A moment as ``--since`` takes it: a duration back from now (``7d``, ``1h30m``, ``300``)
    or a UTC time in ISO 8601 (``2026-12-05``, ``2026-12-05T15:20:00Z``, ``2026-12-05
    15:20:00Z``, or with an offset; a time without one is UTC). Raises ValueError."""
    import datetime as dt

    now = time.time() if now is None else now
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    text = value.strip().upper().replace("Z", "+00:00")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected a duration back from now ({EXAMPLES}) or an ISO 8601 UTC time "
            f"(2026-12-05 or 2026-12-05T15:20:00Z), got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def past_time_argument() -> Callable[[str], float]:
    """An argparse ``type=`` for ``--since``: ``parse_past_time``, as Unix seconds."""

    def parse(text: str) -> float:
        try:
            return parse_past_time(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = "time"
    return parse
