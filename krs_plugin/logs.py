"""Structured logs: one JSON object per line for machines, plain lines on a terminal.

Log calls pass context with ``extra=``; the fields below become top-level JSON keys, so a log
pipeline can select on ``distribution_id`` or ``zone`` without parsing messages. Never put a
private key, token or decrypted payload into a message or an extra.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

CONTEXT_FIELDS = (
    "distribution_id",
    "zone",
    "key_tag",
    "stage",
    "outcome",
    "server",
    "source",
    "duration",
)


def context(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call, dropping fields that are None."""
    return {k: v for k, v in fields.items() if v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human lines with the context appended as ``key=value``; times in UTC, as the JSON's."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed: Callable[[], ...] overload
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        return line + (" [" + " ".join(extras) + "]" if extras else "")


def setup_logging(log_format: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Configure the root logger: ``json``, ``text`` or ``auto`` (JSON unless on a terminal)."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
