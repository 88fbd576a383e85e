"""How the BIND adapter turns the payload's ``cds`` into BIND's sync times, what it takes named's
key state to say about CDS, and the TSIG key file it reads (docs/servers/bind9.md, 1c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from krs_plugin.adapters.base import PlannedKey
from krs_plugin.adapters.bind9 import bind_timing, update_tsig_key
from krs_plugin.adapters.bindstate import Phase, named_phase, serves_cds, wanted_phase
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.dnssec.bindtext import format_bind_private, parse_bind_private
from krs_plugin.errors import AdapterError

NOW = 1_800_000_000
TIMING = KeyTiming(created=NOW - 100, publish=NOW - 50, activate=NOW - 10)


@pytest.fixture(scope="module")
def ksk():  # type: ignore[no-untyped-def]
    return generate_key("example.com.", 13, 257)


def test_publish_is_a_sync_window_from_activate_to_inactive(ksk) -> None:  # type: ignore[no-untyped-def]
    timing = bind_timing(PlannedKey(ksk, "KSK", TIMING, "publish"))
    assert timing.sync_publish == NOW - 10 and timing.sync_delete is None
    assert serves_cds(timing, 257, NOW)
    retiring = KeyTiming(NOW - 100, NOW - 50, NOW - 10, inactive=NOW + 10)
    timing = bind_timing(PlannedKey(ksk, "KSK", retiring, "publish"))
    assert (timing.sync_publish, timing.sync_delete) == (NOW - 10, NOW + 10)
    assert serves_cds(timing, 257, NOW) and not serves_cds(timing, 257, NOW + 10)


def test_a_marked_key_not_active_yet_has_no_cds_until_it_is(ksk) -> None:  # type: ignore[no-untyped-def]
    later = KeyTiming(NOW - 100, NOW - 50, NOW + 60)
    timing = bind_timing(PlannedKey(ksk, "KSK", later, "publish"))
    assert timing.sync_publish == NOW + 60
    assert not serves_cds(timing, 257, NOW) and serves_cds(timing, 257, NOW + 60)


@pytest.mark.parametrize("cds", [None, "delete"])
def test_no_cds_is_an_explicit_sync_delete(ksk, cds) -> None:  # type: ignore[no-untyped-def]
    timing = bind_timing(PlannedKey(ksk, "CSK", TIMING, cds))
    assert timing.sync_publish is None and timing.sync_delete == NOW - 100
    assert not serves_cds(timing, 257, NOW)


def test_the_same_cds_gives_the_same_timing_and_a_changed_one_another(ksk) -> None:  # type: ignore[no-untyped-def]
    publish = bind_timing(PlannedKey(ksk, "KSK", TIMING, "publish"))
    assert publish == bind_timing(PlannedKey(ksk, "KSK", TIMING, "publish"))
    assert publish != bind_timing(PlannedKey(ksk, "KSK", TIMING, None))


def test_a_zsk_has_no_sync_times() -> None:
    zsk = generate_key("example.com.", 13, 256)
    assert bind_timing(PlannedKey(zsk, "ZSK", TIMING)) == TIMING
    assert not serves_cds(KeyTiming(activate=1, sync_publish=1), 256, NOW)


def test_sync_times_go_through_the_private_file(ksk) -> None:  # type: ignore[no-untyped-def]
    timing = bind_timing(PlannedKey(ksk, "KSK", TIMING, "publish"))
    text = format_bind_private(13, ksk.private_key, timing)
    assert "SyncPublish: " in text and "SyncDelete" not in text
    assert parse_bind_private(text)[2] == timing


def test_named_state_says_cds_by_the_ds_state() -> None:
    state = {"DNSKEYState": "omnipresent", "KRRSIGState": "omnipresent", "KSK": "yes"}
    assert named_phase({**state, "DSState": "rumoured"}, 257) == Phase(True, True, True)
    assert named_phase({**state, "DSState": "hidden"}, 257) == Phase(True, True, False)
    assert named_phase(state, 257) == Phase(True, True, False)
    published = KeyTiming(publish=1, activate=1, sync_publish=1)
    assert wanted_phase(published, NOW, 257) == Phase(True, True, True)
    assert wanted_phase(published, NOW, 256) == Phase(True, True, False)


def test_reads_named_session_key(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    path.write_text('key "local-ddns" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0";\n};\n')
    path.chmod(0o600)
    key = update_tsig_key(path)
    assert (key.name.to_text(), key.algorithm.to_text(), key.secret) == (
        "local-ddns.",
        "hmac-sha256.",
        b"secret",
    )
    path.write_text("nothing\n")
    with pytest.raises(AdapterError, match=r"update_key: .*no key"):
        update_tsig_key(path)
    with pytest.raises(AdapterError, match=r"update_key: .*missing\.key"):
        update_tsig_key(tmp_path / "missing.key")
