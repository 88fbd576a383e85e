"""The NSD adapter's serial choice: found in the zone text as operators write it, and always
after the one served before, whatever serial scheme the unsigned file uses."""

from __future__ import annotations

import dns.zone
import pytest

from krs_plugin.adapters.soaserial import find_serial, is_after, next_serial, with_serial
from krs_plugin.errors import AdapterError

ONE_LINE = "$ORIGIN example.com.\n$TTL 300\n@ IN SOA ns1 hostmaster 7 3600 900 1209600 300\n"
MULTI_LINE = """$TTL 1h ; default
$ORIGIN example.com.
; a comment that says SOA 1 2 3
soa   IN A 192.0.2.1
example.com. 3600 IN SOA ns1.example.com. host\\.master.example.com. (
        2026112301 ; serial (date)
        3600       ; refresh
        900 1209600
        300 )
www IN A 192.0.2.80
"""


@pytest.mark.parametrize(
    ("text", "serial"),
    [
        (ONE_LINE, 7),
        (MULTI_LINE, 2026112301),
        ("@ SOA a b 5 1 1 1 1\n", 5),  # no class, no TTL
        ("   IN 300 SOA a b 6 1 1 1 1\n", 6),  # owner inherited, class before TTL
        ("$TTL 300\n", None),
    ],
)
def test_the_serial_is_found_where_operators_write_it(text: str, serial: int | None) -> None:
    found = find_serial(text)
    assert (found.value if found else None) == serial


def test_replacing_the_serial_changes_only_the_serial() -> None:
    text = with_serial(MULTI_LINE, 42)
    assert text == MULTI_LINE.replace("2026112301", "42", 1)
    zone = dns.zone.from_text(text, check_origin=False)
    assert zone.get_soa().serial == 42


def test_a_file_without_an_soa_is_refused_by_name() -> None:
    with pytest.raises(AdapterError, match="no SOA record"):
        with_serial("$ORIGIN example.com.\nwww IN A 192.0.2.1\n", 1)


def test_serial_arithmetic_wraps() -> None:
    assert is_after(2, 1) and not is_after(1, 2) and not is_after(5, 5)
    assert is_after(3, 2**32 - 5)  # RFC 1982: 3 comes after a serial near the top


NOW = 1_795_000_000  # a Unix time in November 2026


@pytest.mark.parametrize(
    ("previous", "unsigned", "expected", "why"),
    [
        (None, 1, NOW, "a small counter: the Unix time"),
        (None, 2026112301, 2026112301, "a date serial above the Unix time is kept"),
        (2026112301, 2026112301, 2026112302, "signing again under a date serial: one up"),
        (2026112302, 2026112301, 2026112303, "and again"),
        (2026112303, 2026112401, 2026112401, "the operator's next date serial is taken"),
        (NOW, 1, NOW + 1, "two signings in one second get different serials"),
        (NOW - 100, 1, NOW, "a later signing: the Unix time"),
        (2**32 - 2, 1, NOW, "wrapped: the Unix time comes after"),
    ],
)
def test_the_next_serial_always_goes_up(
    previous: int | None, unsigned: int, expected: int, why: str
) -> None:
    serial = next_serial(previous, unsigned, NOW)
    assert serial == expected, why
    if previous is not None:
        assert is_after(serial, previous)
