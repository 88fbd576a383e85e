"""The ping's ``rekey`` member naming a backend to move to (ours; docs/payload.md)."""

from __future__ import annotations

import json

import pytest

from krs_plugin.errors import PayloadError
from krs_plugin.payload import Ping, encode_payload, parse_payload, ping_entry


def roundtrip(entry: Ping) -> Ping:
    parsed = parse_payload(encode_payload([entry]), now=0, clock_skew=10**10).entries[0]
    assert isinstance(parsed, Ping)
    return parsed


def test_rekey_true_or_a_backend_name_round_trips() -> None:
    plain = roundtrip(ping_entry("n1", rekey=True))
    assert plain.rekey and plain.rekey_backend is None
    moving = roundtrip(ping_entry("n2", rekey_backend="hpke-pq"))
    assert moving.rekey and moving.rekey_backend == "hpke-pq"
    assert json.loads(encode_payload([moving]))[0]["metadata"]["rekey"] == "hpke-pq"
    assert not roundtrip(ping_entry("n3")).rekey


def test_a_backend_nobody_knows_is_refused_when_made_and_when_read() -> None:
    with pytest.raises(PayloadError, match="hpke-pq2"):
        ping_entry("n4", rekey_backend="hpke-pq2")
    text = encode_payload([ping_entry("n5", rekey_backend="jose")]).replace(
        b'"jose"', b'"hpke-pq2"'
    )
    with pytest.raises(PayloadError, match="names backend 'hpke-pq2'"):
        parse_payload(text, now=0, clock_skew=10**10)
