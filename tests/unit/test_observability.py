"""Structured logs, the compacting of big confirmation reports, and the metrics exposition."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import dns.message
import pytest

from krs_plugin.confirmation import (
    canonical_report,
    compact_report,
    confirmation_message,
    verify_report,
)
from krs_plugin.crypto import JoseKey
from krs_plugin.logs import context, setup_logging
from krs_plugin.metrics import Metrics
from krs_plugin.protocol.edns import CHUNK_OPTION


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_carry_the_context_fields_as_keys() -> None:
    stream = io.StringIO()
    setup_logging("json", stream)
    logging.getLogger("krs_plugin.test").warning(
        "distribution %s rejected",
        "6b037da1",
        extra=context(distribution_id="6b037da1", stage="signature", zone=None),
    )
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "distribution 6b037da1 rejected"
    assert entry["level"] == "warning" and entry["stage"] == "signature"
    assert entry["distribution_id"] == "6b037da1" and "zone" not in entry
    assert entry["time"].endswith("Z")


def test_auto_log_format_is_json_when_not_on_a_terminal() -> None:
    stream = io.StringIO()  # isatty() is False
    setup_logging("auto", stream)
    logging.getLogger("krs_plugin.test").info("hello", extra=context(zone="example.com."))
    assert json.loads(stream.getvalue())["zone"] == "example.com."


def test_text_logs_append_the_context() -> None:
    stream = io.StringIO()
    setup_logging("text", stream)
    logging.getLogger("krs_plugin.test").info("applied", extra=context(outcome="applied"))
    assert stream.getvalue().rstrip().endswith("applied [outcome=applied]")


def test_small_reports_are_sent_unchanged() -> None:
    report = {"node_id": "ns1.", "successful_keys": [{"zone_name": "a.", "key_id": "1"}]}
    assert compact_report(report) == report


def test_a_report_for_ten_thousand_zones_fits_one_message_and_keeps_its_meaning() -> None:
    keys = [{"zone_name": f"zone{i}.example.", "key_id": str(i)} for i in range(20_000)]
    report = {"node_id": "ns1.", "successful_keys": keys, "failed_keys": []}
    compact = compact_report(report, limit=48 * 1024)
    assert len(canonical_report(compact)) <= 48 * 1024
    assert compact["successful_count"] == 20_000 and compact["failed_count"] == 0
    assert compact["failed_keys"] == []
    listed = compact["successful_keys"]
    assert isinstance(listed, list) and 0 < len(listed) < 20_000 and listed[0] == keys[0]


def test_a_signed_report_for_twenty_thousand_keys_fits_one_notify_and_verifies() -> None:
    # The signature repeats the report base64url-encoded; compaction must leave room for it.
    keys = [{"zone_name": f"zone{i}.example.", "key_id": str(i)} for i in range(20_000)]
    report = {"node_id": "ns1.", "successful_keys": keys, "failed_keys": []}
    signer = JoseKey.generate()
    message = confirmation_message("c0ffee", "kdc.example.", report, signer)
    wire = message.to_wire(max_size=0xFFFF)
    parsed = dns.message.from_wire(wire)
    (option,) = [o for o in parsed.options if o.otype == CHUNK_OPTION]
    received = json.loads(option.body)
    verify_report(received, signer)
    assert received["successful_count"] == 20_000 and received["failed_keys"] == []


def test_metrics_start_known_labels_at_zero() -> None:
    metrics = Metrics()
    metrics.watch_store(lambda: {"keys_per_zone": {"example.com.": 2}, "queued": 1})
    text = metrics.exposition().decode()
    assert 'krs_notify_total{result="rate_limited"} 0.0' in text
    assert 'krs_keys_installed{zone="example.com."} 2.0' in text
    assert "krs_queue_length 1.0" in text
