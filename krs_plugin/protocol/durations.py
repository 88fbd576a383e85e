"""Go ``time.Duration`` text (``5m0s``, ``168h0m0s``), as tdns writes TTLs into manifests."""

from __future__ import annotations

import re

from krs_plugin.errors import WireError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_MAX_SECONDS = 2**63 / 1e9  # Go durations are int64 nanoseconds


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string; ``WireError`` naming the text when it is not one."""
    body = text[1:] if text[:1] in "+-" else text
    if text.startswith("-"):
        raise WireError(f"duration {text!r} is negative")
    if body == "0":
        return 0.0
    if not body:
        raise WireError("duration is empty")
    position = 0
    total = 0.0
    for match in _PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(body) or position == 0:
        raise WireError(f"duration {text!r} is not a Go duration such as '5m0s'")
    if total > _MAX_SECONDS:
        raise WireError(f"duration {text!r} is larger than a Go duration can be")
    return total


def format_go_duration(seconds: int) -> str:
    """Whole seconds as Go prints them: ``0s``, ``45s``, ``5m0s``, ``168h0m0s``."""
    if seconds < 0:
        raise ValueError("durations in manifests are never negative")
    if seconds == 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
