"""Durations and times as operators type and read them (krs_plugin/humantime.py)."""

from __future__ import annotations

import argparse

import pytest

from krs_plugin.humantime import (
    duration_argument,
    format_duration,
    format_time,
    parse_duration,
    relative,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300),
        ("0.5", 0.5),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1d12h", 129600),
        ("1w1d1h1m1s", 694861),
        (" 2H ", 7200),
        (45, 45),
        (1.5, 1.5),
    ],
)
def test_parses_seconds_units_and_combinations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-5", "1m1h", "1h1h", "1h 30m", "abc", "1.5.m"])
def test_rejects_what_is_not_a_duration_and_says_what_is(text: str) -> None:
    with pytest.raises(ValueError, match=r"--ttl: .*(15m|negative|0 or more)"):
        parse_duration(text, what="--ttl")


def test_rejects_booleans_and_negative_numbers_from_yaml() -> None:
    for value in (True, -1):
        with pytest.raises(ValueError):
            parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86700, "1d"),
     (694861, "1w1d"), (0.5, "0.5s")],
)  # fmt: skip
def test_formats_the_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_formats_times_in_utc_with_the_distance_from_now() -> None:
    stamp = 1_796_484_000  # 2026-12-05 15:20:00 UTC
    assert format_time(stamp, now=stamp - 3600) == "2026-12-05 15:20:00Z (in 1h)"
    assert format_time(stamp, now=stamp + 7200) == "2026-12-05 15:20:00Z (2h ago)"
    assert relative(stamp, now=stamp) == "now"
    assert relative(stamp, now=stamp - 3599) == "in 1h"
    assert relative(stamp, now=stamp - 30 * 86400 + 1) == "in 4w2d"
    assert format_time(None) == "-"


def test_argparse_type_names_the_forms_and_bounds() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ttl", type=duration_argument(minimum=1, whole=True))
    assert parser.parse_args(["--ttl", "1h"]).ttl == 3600
    assert parser.parse_args(["--ttl", "300"]).ttl == 300
    for bad in ("0", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--ttl", bad])
