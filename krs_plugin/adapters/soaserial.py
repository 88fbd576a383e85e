"""The SOA serial of a zone file, found and replaced in its text, and the next serial to serve.

NSD's secondaries only transfer a zone whose serial went up, so every signing the NSD adapter
serves must carry a serial above the one served before. The signers' own choices do not ensure
that: ``-N unixtime`` goes backwards under a date serial (2026112301 is above the Unix time
until 2034), and two signings in one second get the same one. So the adapter picks the serial
itself, writes it into the signer's copy of the unsigned file and has the signer keep it.

The text is scanned only as far as the SOA record (the first record of a zone by convention),
so a 100,000-record file costs no more than a small one; comments, quoted strings and
parentheses are understood, so a multi-line SOA with a ``; serial`` comment is found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from krs_plugin.errors import AdapterError

SERIAL_BITS = 2**32
HALF = 2**31
_TOKEN = re.compile(
    r'(?P<comment>;[^\n]*)|(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<paren>[()])|(?P<newline>\n)'
    r'|(?P<word>(?:\\.|[^\s;()"\\])+)|[ \t\r]+'
)
_CLASSES = {"IN", "CH", "HS", "CS"}


@dataclass(frozen=True)
class SoaSerial:
    value: int
    start: int  # offsets of the serial's digits in the text
    end: int


def find_serial(text: str) -> SoaSerial | None:
    """The serial of the first SOA record in ``text``, with where it is; None if no SOA."""
    for words in _records(text):
        at = _soa_position(words)
        if at is None or len(words) != at + 8:  # type, mname, rname, serial and 4 timers
            continue  # not an SOA (a name "soa" perhaps), or a broken one the signer reports
        word, start = words[at + 3]
        if word.isdigit() and int(word) < SERIAL_BITS:
            return SoaSerial(int(word), start, start + len(word))
    return None


def serial_of_file(path: Path, head: int = 65536) -> int | None:
    """The SOA serial of a zone file, or None (no file, no SOA). Only the start is read when the
    SOA is there, as it is in every signer's output: a served file may be tens of megabytes."""
    try:
        with open(path, encoding="latin-1") as file:
            text = file.read(head)
            found = find_serial(text)
            if found is None and len(text) == head:
                found = find_serial(text + file.read())
    except FileNotFoundError:
        return None
    return found.value if found is not None else None


def with_serial(text: str, serial: int) -> str:
    """``text`` with the SOA serial replaced by ``serial``; raises if it has no SOA serial."""
    found = find_serial(text)
    if found is None:
        raise AdapterError(
            "no SOA record with a numeric serial in the zone file (an SOA inside an $INCLUDE "
            "file is not supported: put the SOA in the zone file itself)"
        )
    return text[: found.start] + str(serial) + text[found.end :]


def is_after(a: int, b: int) -> bool:
    """RFC 1982: serial ``a`` is greater than ``b``."""
    return a != b and (a - b) % SERIAL_BITS < HALF


def next_serial(previous: int | None, unsigned: int, now: int) -> int:
    """The serial to serve next: after ``previous`` (the last one served, if any), and not below
    the unsigned file's own serial or the Unix time, so operators' date serials, Unix-time
    serials and counters all keep going up."""
    floor = (previous + 1) % SERIAL_BITS if previous is not None else unsigned
    best = floor
    for candidate in (unsigned, now % SERIAL_BITS):
        if is_after(candidate, best):
            best = candidate
    return best


def _records(text: str) -> Iterator[list[tuple[str, int]]]:
    """The words of each record (a line, or several joined by parentheses), with offsets;
    $ directives and comments left out."""
    words: list[tuple[str, int]] = []
    depth = 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "word" or kind == "quoted":
            words.append((match.group(), match.start()))
        elif kind == "paren":
            depth = depth + 1 if match.group() == "(" else max(0, depth - 1)
        elif kind == "newline" and depth == 0:
            if words and not words[0][0].startswith("$"):
                yield words
            words = []
    if words and not words[0][0].startswith("$"):
        yield words


def _soa_position(words: list[tuple[str, int]]) -> int | None:
    """Where the type SOA is among a record's words: after at most an owner, a TTL and a class."""
    for at, (word, _) in enumerate(words[:4]):
        if word.upper() != "SOA":
            continue
        before = [w.upper() for w, _ in words[:at]]
        fields = [w for w in before if w in _CLASSES or _is_ttl(w)]
        if len(before) - len(fields) <= 1:
            return at
    return None


def _is_ttl(word: str) -> bool:
    return bool(re.fullmatch(r"(\d+[smhdwSMHDW]?)+", word))
