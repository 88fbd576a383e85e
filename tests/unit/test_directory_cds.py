"""The directory adapter records the distribution's ``cds`` beside the keys and reports it as the
``cds`` and ``cdnskey`` its folder "serves", in the form dnscheck.read_served reports a server's
(``[tag, algorithm, digest type]``, ``[tag, algorithm, flags]``), so a directory node passes a
gate that compares CDS sets."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import dns.name

from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.cdsset import DELETE_CDNSKEY, marking_file
from krs_plugin.adapters.directory import DirectoryAdapter
from krs_plugin.dnssec import KeyTiming, generate_key

ZONE = dns.name.from_text("example.com.")
NOW = int(time.time()) - 1
TIMING = KeyTiming(NOW, NOW, NOW)


def adapter(path: Path) -> DirectoryAdapter:
    return DirectoryAdapter({"path": str(path)}, zones=[ZONE])


def test_marked_ksk_is_reported_as_its_cds_and_cdnskey(tmp_path: Path) -> None:
    ksk, zsk, new = (generate_key(ZONE, 13, f) for f in (257, 256, 257))
    marked = KeyPlan(
        ZONE, (PlannedKey(ksk, "KSK", TIMING, "publish"), PlannedKey(zsk, "ZSK", TIMING))
    )
    result = adapter(tmp_path).apply(ZONE, marked)
    assert result.served is not None
    assert result.served["cds"] == [[ksk.key_tag, 13, 2]]
    assert result.served["cdnskey"] == [[ksk.key_tag, 13, 257]]
    assert marking_file(tmp_path, ZONE).exists()

    # the double-KSK DS step: both KSKs sign, only the new one's CDS
    step = KeyPlan(
        ZONE,
        (
            PlannedKey(ksk, "KSK", TIMING),
            PlannedKey(zsk, "ZSK", TIMING),
            PlannedKey(new, "KSK", TIMING, "publish"),
        ),
    )
    result = adapter(tmp_path).apply(ZONE, step)
    assert result.served is not None
    assert result.served["dnskey_signers"] == sorted([ksk.key_tag, new.key_tag])
    assert result.served["cds"] == [[new.key_tag, 13, 2]]
    assert result.served["cdnskey"] == [[new.key_tag, 13, 257]]

    # no key marked: a change of the key whose cds changed, nothing reported, no marking file
    unmarked = KeyPlan(ZONE, tuple(dataclasses.replace(p, cds=None) for p in step.install))
    result = adapter(tmp_path).apply(ZONE, unmarked)
    assert result.changed and result.installed == (new.key_tag,)
    assert result.served is not None
    assert "cds" not in result.served and "cdnskey" not in result.served
    assert not marking_file(tmp_path, ZONE).exists()
    assert not adapter(tmp_path).apply(ZONE, unmarked).changed


def test_delete_is_reported_as_the_rfc8078_records(tmp_path: Path) -> None:
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    plan = KeyPlan(ZONE, (PlannedKey(ksk, "KSK", TIMING, "delete"), PlannedKey(zsk, "ZSK", TIMING)))
    served = adapter(tmp_path).apply(ZONE, plan).served
    assert served is not None
    # CDS 0 0 0 00 and CDNSKEY 0 3 0 AA==, as read_served reports them from a server
    assert served["cds"] == [[0, 0, 0]]
    assert served["cdnskey"] == [list(DELETE_CDNSKEY)] == [[768, 0, 0]]


def test_a_retired_ksk_keeps_no_cds_and_restore_brings_the_marking_back(tmp_path: Path) -> None:
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    folder = adapter(tmp_path)
    before = folder.snapshot(ZONE)
    marked = KeyPlan(
        ZONE, (PlannedKey(ksk, "KSK", TIMING, "publish"), PlannedKey(zsk, "ZSK", TIMING))
    )
    folder.apply(ZONE, marked)
    after = folder.snapshot(ZONE)
    retired = dataclasses.replace(TIMING, inactive=NOW)
    served = folder.apply(ZONE, KeyPlan(ZONE, (PlannedKey(ksk, "KSK", retired, "publish"),))).served
    assert served is not None and "cds" not in served
    folder.restore(ZONE, before)
    assert not marking_file(tmp_path, ZONE).exists()
    folder.restore(ZONE, after)
    served = folder.read_served(ZONE)
    assert served is not None and served["cds"] == [[ksk.key_tag, 13, 2]]
