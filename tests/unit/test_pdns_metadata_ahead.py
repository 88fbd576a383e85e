"""``pdnsfresh.MetadataAhead``: a PowerDNS batch's fresh zones' metadata read in a thread beside
the writing, in the batch's order, at most ``ahead`` zones before it (docs/servers/powerdns.md,
"Many zones in one distribution")."""

from __future__ import annotations

import threading
import time

import dns.name
import pytest

from krs_plugin.adapters.pdnsfresh import Metadata, MetadataAhead
from krs_plugin.errors import AdapterError

ZONES = [dns.name.from_text(f"z{n:02d}.example.") for n in range(30)]


class Reads:
    """The read function: records each zone read; ``bad`` fails."""

    def __init__(self, bad: dns.name.Name | None = None) -> None:
        self.done: list[dns.name.Name] = []
        self.bad = bad
        self.lock = threading.Lock()

    def __call__(self, zone: dns.name.Name) -> Metadata:
        if zone == self.bad:
            raise AdapterError(f"powerdns API: metadata of {zone}: HTTP 500")
        with self.lock:
            self.done.append(zone)
        return {"X-KRS-KEY-TIMING": [zone.to_text()]}

    def settle(self, count: int) -> list[dns.name.Name]:
        """The zones read once ``count`` are (and a moment more, to see any read too many)."""
        deadline = time.monotonic() + 10
        while len(self.done) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        with self.lock:
            return list(self.done)


def test_read_in_order_and_never_more_than_ahead_of_the_batch() -> None:
    reads = Reads()
    ahead = MetadataAhead(reads, ZONES, ahead=5)
    try:
        assert reads.settle(5) == ZONES[:5]
        for n in (0, 1):
            taken = ahead.take(ZONES[n])
            assert taken is not None
            assert taken.result() == {"X-KRS-KEY-TIMING": [ZONES[n].to_text()]}
        assert reads.settle(7) == ZONES[:7]
        # zones 2 to 9 passed by (no read needed): dropped; 10 was beyond the window (the
        # caller reads it), and the reads go on from 11
        assert ahead.take(ZONES[10]) is None
        assert reads.settle(12)[-5:] == ZONES[11:16]
        later = ahead.take(ZONES[11])
        assert later is not None and later.result() is not None
        assert ahead.take(ZONES[3]) is None  # behind the batch: the caller reads it
    finally:
        ahead.close()


def test_an_error_is_raised_where_the_zone_is_taken() -> None:
    ahead = MetadataAhead(Reads(bad=ZONES[1]), ZONES, ahead=3)
    try:
        first = ahead.take(ZONES[0])
        assert first is not None and first.result() is not None
        failed = ahead.take(ZONES[1])
        assert failed is not None
        with pytest.raises(AdapterError, match="HTTP 500"):
            failed.result()
    finally:
        ahead.close()


def test_a_zone_not_in_the_batch_is_not_read_ahead() -> None:
    ahead = MetadataAhead(Reads(), ZONES[:3], ahead=3)
    try:
        assert ahead.take(dns.name.from_text("other.example.")) is None
    finally:
        ahead.close()
