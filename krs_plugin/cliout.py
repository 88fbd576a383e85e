"""What the two commands, ``krs`` and ``krs-kdc``, print and how they exit.

A command prints human lines on standard output, or with ``--json`` one JSON document instead
(indented, keys sorted: a stable text for scripts and diffs). An error is one line on standard
error, ``<prog>: <message>``, and the exit code says what went wrong: 0 nothing, 1 the operation
failed (a refused distribution, a server that does not answer), 2 the command line or the
configuration is wrong (docs/operations.md for ``krs``, docs/kdc.md for ``krs-kdc``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from krs_plugin.errors import KrsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_json_option(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """``--json``, taken both before and after the subcommand (``krs-kdc --json key list`` and
    ``krs-kdc key list --json``; the same for ``krs``). The top-level parser gives it the default
    False; a subcommand's has none (SUPPRESS), so that it does not reset one given before it."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="machine-readable output (JSON; times in Unix seconds)",
    )


def emit(data: Any, lines: Iterable[str], *, as_json: bool) -> None:
    """Print ``data`` as JSON, or ``lines`` one by one (none: nothing is printed)."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        for line in lines:
            print(line)


def error_exit(
    prog: str, exc: KrsError, usage: tuple[type[KrsError], ...], *, usage_label: str = ""
) -> int:
    """Print ``exc`` on standard error and return its exit code: EXIT_USAGE for the ``usage``
    errors (their message after ``usage_label``), EXIT_FAILED for every other."""
    if isinstance(exc, usage):
        print(f"{prog}: {usage_label}{exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{prog}: {exc}", file=sys.stderr)
    return EXIT_FAILED
